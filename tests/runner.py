"""What the tests do with a Flux instance, written once for both paths.

A native instance (tests/instance.py) and the compose testbed
(tests/compose_cluster.py) differ only in how a command reaches the
instance: `flux ...` with FLUX_URI set, or `docker compose exec -T NODE
flux ...` from the host.  Each says that in `command()`; submitting,
attaching, putting and checking the datastore's output are here.
"""

from __future__ import annotations

import json
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from conduit import output
from conduit.attach import AttachStream

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, what: str, pause: float = 0.2) -> T:
    """Call `check` until it returns something true; that value.

    Raises:
        AssertionError: naming `what`, when `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s (last: {value!r})")
        time.sleep(pause)


# Sends each payload of stdin to conduit.put on a rank; one JSON line of results.
PUT_SCRIPT = """
import json, sys, flux
h = flux.Flux()
rank = json.loads(sys.argv[1]); results = []
for payload in json.loads(sys.stdin.read()):
    try:
        results.append({"ok": h.rpc("conduit.put", payload, nodeid=rank).get()})
    except OSError as exc:
        results.append({"errno": exc.errno, "error": exc.strerror})
print(json.dumps(results))
"""


class FluxRunner(ABC):
    """A Flux instance that the tests drive through the `flux` command."""

    size: int

    @abstractmethod
    def command(self, *argv: str, node: str | None = None, user: str | None = None) -> list[str]:
        """The command line that runs `argv` in the instance (on `node`, where that matters).

        `user`: as this user instead of the instance owner, where the runner can.
        """

    env: Mapping[str, str] | None = None  # the environment `command()` runs in

    def run(
        self,
        *argv: str,
        node: str | None = None,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full = self.command(*argv, node=node, user=user)
        done = subprocess.run(
            full,
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(full)} exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def flux(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("flux", *args, **kw)

    def python(self, code: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run `code` with the Python that Flux was built with (it imports flux)."""
        return self.flux("python", "-c", code, *args, **kw)

    def conduit(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """`flux python -m conduit ARGS...`, not as a job."""
        return self.flux("python", "-m", "conduit", *args, **kw)

    # Jobs.
    def submit_command(
        self, *command: str, rank: int | None = None, host: str | None = None
    ) -> str:
        """Submit `command` as a one-task job; its id as `flux submit` prints it."""
        where = [f"--requires=rank:{rank}"] if rank is not None else []
        where += [f"--requires=host:{host}"] if host else []
        return self.flux("submit", "-N1", "-n1", "-u", *where, *command).stdout.strip()

    def submit(self, *conduit_args: str, rank: int | None = None, host: str | None = None) -> str:
        """Submit `flux python -m conduit ARGS...` as a job; its id."""
        return self.submit_command(
            "flux", "python", "-m", "conduit", *conduit_args, rank=rank, host=host
        )

    def attach(self, jobid: str, node: str | None = None) -> AttachStream:
        """The job's output as it comes."""
        return AttachStream(
            self.command("flux", "job", "attach", jobid, node=node), env=self.env, cwd=REPO
        )

    def wait_output(self, jobid: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Wait for a job to end; its output (`flux job attach`) and exit status."""
        return self.flux("job", "attach", jobid, check=False, timeout=timeout)

    def datastore_output(self, jobid: str, timeout: float = 120) -> output.DatastoreOutput:
        done = self.wait_output(jobid, timeout)
        assert done.returncode == 0, f"datastore {jobid} exited {done.returncode}:\n{done.stderr}"
        return output.parse(done.stdout)

    def job(self, jobid: str) -> dict[str, Any]:
        return dict(json.loads(self.flux("jobs", "--json", jobid).stdout))

    def job_state(self, jobid: str) -> str:
        """The job's state (RUN, INACTIVE, ...), or "unknown" to this instance."""
        done = self.flux("jobs", "--json", jobid, check=False)
        return str(json.loads(done.stdout)["state"]) if done.returncode == 0 else "unknown"

    def wait_inactive(self, jobid: str, timeout: int = 120) -> dict[str, Any]:
        self.flux("job", "wait-event", f"--timeout={timeout}", jobid, "clean", timeout=timeout + 30)
        return self.job(jobid)

    def plain(self, jobid: str) -> str:
        """A job id in the ASCII form of the compute's store keys."""
        return self.flux("job", "id", "--to=f58plain", jobid).stdout.strip()

    # The conduit.
    def wait_datastore(self, jobid: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until datastore `jobid` has published its location; the location."""
        want = int(self.flux("job", "id", "--to=dec", jobid).stdout)

        def published() -> dict[str, Any] | None:
            got = self.flux("kvs", "get", "conduit.datastore", check=False)
            location = json.loads(got.stdout) if got.returncode == 0 else {}
            return location if location.get("jobid") == want else None

        return wait_until(published, timeout, f"datastore {jobid} publishing its location")

    def module_loaded(self, rank: int) -> bool:
        listing = self.flux("exec", "-r", str(rank), "flux", "module", "list").stdout
        return any(line.split()[:1] == ["conduit"] for line in listing.splitlines())

    def put_all(self, rank: int, payloads: list[Any]) -> list[dict[str, Any]]:
        """Send each payload to conduit.put on `rank` in turn; {"ok": response} or the error."""
        done = self.python(PUT_SCRIPT, str(rank), input=json.dumps(payloads))
        return list(json.loads(done.stdout))

    def durable_store(self) -> dict[str, Any]:
        """`conduit store`: {"packets", "segments", "store"}."""
        return dict(json.loads(self.conduit("store").stdout))

    def stats(self, rank: int) -> dict[str, Any]:
        code = (
            "import flux, json, sys; "
            "print(json.dumps(flux.Flux().rpc('conduit.stats', nodeid=int(sys.argv[1])).get()))"
        )
        return dict(json.loads(self.python(code, str(rank)).stdout))


def compute_keys(store: Mapping[str, Any], plain_ids: list[str]) -> list[str]:
    """The keys of the computes' packets in a store (one per compute)."""
    return [k for k in store if any(k.endswith(f"-{p}") for p in plain_ids)]


def check_attach_output(result: output.DatastoreOutput, plain_ids: list[str]) -> None:
    """A finished datastore's attach output, line by line, for these computes' packets."""
    lines = result.lines
    assert lines[:4] == [output.STARTING, output.LOADED, output.INITIALIZED, output.RUNNING]
    assert lines[-2:] == [output.BYE, output.FINISHED]
    body = lines[4:-2]
    # "Waiting for a packet", then the store with that packet, for each packet
    assert body[0::2] == [output.WAITING] * (len(plain_ids) + 1), body
    stores = [json.loads(line) for line in body[1::2]]
    assert stores[0] == {"test": 101}
    assert len(stores) == 1 + len(plain_ids)
    for before, after in zip(stores, stores[1:]):
        [added] = after.keys() - before.keys()
        assert after == {**before, added: "os.time"}
    final = stores[-1]
    for plain in plain_ids:
        assert len(compute_keys(final, [plain])) == 1, f"no packet of compute {plain} in {final}"


def overlay_states(node: Mapping[str, Any]) -> dict[int, str]:
    """rank -> overlay status, over the whole tree of an overlay.health answer."""
    states = {int(node["rank"]): str(node["status"])}
    for child in node.get("children", []):
        states.update(overlay_states(child))
    return states
