"""The testbed API's fault calls do what they say, on Docker and on Podman where installed.

Each engine gets a fresh testbed of two nodes (these tests break it):
node1 is stopped and started, cut off the network and put back, killed
(the watchdog starts it again), and each time the instance is checked from
rank 0: the node is gone, then back with its resources up.
"""

from __future__ import annotations

import pytest

from conduit.testbed.cluster import ComposeTestbed
from conduit.testbed.errors import TestbedError
from conduit.testbed.instance import CommandError
from conduit.testbed.plugin import NewTestbed

pytestmark = [pytest.mark.compose, pytest.mark.slow]


def online(tb: ComposeTestbed) -> list[int]:
    probe = tb.testbed.probe()
    return probe.online if probe else []


def back(tb: ComposeTestbed) -> None:
    """node1 online again, its resources up, and a job runs there."""
    tb.wait_ready(timeout=120)
    assert tb.overlay_states() == {0: "full", 1: "full"}
    done = tb.flux("run", "-N1", "-n1", "--requires=host:node1", "hostname", timeout=120)
    assert done.stdout.strip() == "node1"


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_stop_start_cut_off_and_kill_a_node(flux_testbed_factory: NewTestbed, engine: str) -> None:
    with flux_testbed_factory(nodes=2, engine=engine) as tb:
        tb.stop("node1")
        assert tb.container("node1").status == "exited"
        tb.wait_until(lambda: 1 not in online(tb), 60, "rank 0 sees node1 gone")
        tb.start("node1")
        back(tb)

        with tb.cut_off("node1"):
            # the container runs; its broker is lost once the overlay's timeout passes
            assert tb.container("node1").status == "running"
            tb.wait_until(lambda: 1 not in online(tb), 90, "rank 0 sees node1 lost")
        back(tb)

        _, when = tb.started("node1")
        tb.kill("node1")
        tb.wait_until(lambda: tb.started("node1")[1] != when, 60, "node1 started again")
        back(tb)


def test_a_failed_command_says_what_ran_its_exit_code_and_stderr(
    flux_testbed: ComposeTestbed,
) -> None:
    with pytest.raises(CommandError) as failed:
        flux_testbed.flux("job", "attach", "f123bogus", node="node1")
    error = failed.value
    assert error.returncode != 0
    assert error.argv[-4:] == ["flux", "job", "attach", "f123bogus"]
    assert "exec" in error.argv and "node1" in error.argv
    assert str(error).startswith(f"`{' '.join(error.argv)}` exited {error.returncode}")
    assert error.stderr.strip() and error.stderr in str(error)
    with pytest.raises(TestbedError, match=r"did not finish within 1s"):
        flux_testbed.run("sleep", "30", timeout=1)
