"""When the testbed is ready (conduit.testbed.readiness), without Docker."""

from __future__ import annotations

from conduit.testbed import readiness


def test_idsets_and_hostlists() -> None:
    assert readiness.parse_idset("") == []
    assert readiness.parse_idset("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert readiness.hostlist([]) == ""
    assert readiness.hostlist([4]) == "node4"
    assert readiness.hostlist([3, 4, 5, 7]) == "node[3-5,7]"
    assert readiness.hostlist(range(3, 8)) == "node[3-7]"


def test_ready_needs_every_started_broker_online_and_its_resources_up() -> None:
    # ranks 3..7 not started (offline, down): ready for 3 nodes
    probe = readiness.Probe(size=8, online=[0, 1, 2], down=[3, 4, 5, 6, 7])
    assert probe.counts(3) == (3, 3)
    assert probe.ready(3)
    ready = readiness.Ready(nodes=3, size=8, seconds=3.42, probe=probe)
    assert ready.line() == (
        "cluster ready: 3 of 3 brokers online, 3 nodes' resources up in 3.4s; "
        "node[3-7] not started (room for 8)"
    )
    # every broker online, but the scheduler still has node2 down: not ready
    late = readiness.Probe(size=3, online=[0, 1, 2], down=[2])
    assert late.counts(3) == (3, 2)
    assert not late.ready(3)
    assert late.describe(3) == "3 of 3 brokers online, 2 nodes' resources up (node2 not yet)"
    # a broker offline has no resources up either
    lost = readiness.Probe(size=3, online=[0, 2], down=[])
    assert lost.counts(3) == (2, 2)
    full = readiness.Ready(nodes=3, size=3, seconds=1.0, probe=readiness.Probe(3, [0, 1, 2], []))
    assert full.line() == "cluster ready: 3 of 3 brokers online, 3 nodes' resources up in 1.0s"
