"""The conduit.put protocol on a real Flux instance: batch puts, the nesting
limit, refused batches, producer and seq checks, module arguments, versions.
"""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest

from conduit import output
from conduit.testbed.native import NativeInstance
from tests.checks import MODULE

pytestmark = pytest.mark.flux


def data(**fields: Any) -> str:
    return json.dumps(fields)


def nested(levels: int) -> str:
    """A JSON object nested `levels` deep (the object is level 1)."""
    return '{"deep":' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def test_a_batch_put_answers_each_packet_in_order(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--packets", "3", "--fresh", rank=1)
    flux_instance.wait_datastore(ds)
    batch = {"packets": [{"data": data(a=1)}, {"data": data(b=2)}, {"data": data(c=3)}]}
    [result] = flux_instance.put_all(1, [batch])
    assert result["ok"] == {
        "packets": [
            {"id": 1, "duplicate": False},
            {"id": 2, "duplicate": False},
            {"id": 3, "duplicate": False},
        ]
    }
    stored = flux_instance.datastore_output(ds)
    assert stored.final_store == {"test": 101, "a": 1, "b": 2, "c": 3}
    assert stored.finished


def test_a_batch_reports_duplicates_per_packet(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--packets", "3", "--fresh", rank=1)
    flux_instance.wait_datastore(ds)
    first = {"data": data(p1="first"), "producer": "p", "seq": 1}
    batch = {
        "packets": [
            {"data": data(p1="again"), "producer": "p", "seq": 1},  # stored before
            {"data": data(p2="first"), "producer": "p", "seq": 2},
            {"data": data(p2="again"), "producer": "p", "seq": 2},  # earlier in this batch
            {"data": data(plain=1)},
        ]
    }
    results = flux_instance.put_all(1, [first, batch])
    assert results[0]["ok"] == {"id": 1, "duplicate": False}
    assert results[1]["ok"] == {
        "packets": [
            {"id": 2, "duplicate": True},
            {"id": 3, "duplicate": False},
            {"id": 4, "duplicate": True},
            {"id": 5, "duplicate": False},
        ]
    }
    stored = flux_instance.datastore_output(ds)
    assert stored.final_store == {"test": 101, "p1": "first", "p2": "first", "plain": 1}


def test_a_malformed_packet_refuses_the_whole_batch(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--packets", "1", "--fresh", rank=1)
    flux_instance.wait_datastore(ds)
    valid = [{"data": data(**{f"v{i}": i})} for i in range(5)]
    bad_batches: list[tuple[object, int, str]] = [
        (
            {"packets": valid[:3] + [{"data": "{not json"}] + valid[3:]},
            errno.EPROTO,
            'conduit.put: packet 3: "data" is not valid JSON',
        ),
        (
            {"packets": valid[:1] + [{"data": data(big="x" * 70000)}]},
            errno.EMSGSIZE,
            'packet 1: "data" is 70011 bytes, over the limit of 65536 bytes',
        ),
        ({"packets": valid[:2] + [{"data": "{}", "seq": 0}]}, errno.EPROTO, "packet 2: "),
        ({"packets": valid[:1] + ["{}"]}, errno.EPROTO, "packet 1: must be a JSON object"),
        ({"packets": valid[:1] + [{}]}, errno.EPROTO, 'packet 1: the packet lacks "data"'),
        ({"packets": []}, errno.EPROTO, "a put carries 1 to 4096"),
        ({"packets": valid[:1] * 4097}, errno.EPROTO, '"packets" holds 4097 packets'),
        ({"packets": {"data": "{}"}}, errno.EPROTO, '"packets" must be an array'),
        ({"packets": valid[:1], "data": "{}"}, errno.EPROTO, 'give "data" or "packets"'),
    ]
    results = flux_instance.put_all(1, [b for b, _, _ in bad_batches] + [{"data": data(after=1)}])
    for (_, errnum, message), result in zip(bad_batches, results):
        assert result.get("errno") == errnum, result
        assert message in str(result["error"]), result
    # nothing was queued: the next put gets the first id, and is the only packet stored
    assert results[-1]["ok"] == {"id": 1, "duplicate": False}
    stored = flux_instance.datastore_output(ds)
    assert stored.final_store == {"test": 101, "after": 1}


STALLED_DATASTORE = """
import json, sys, flux, flux.constants
h = flux.Flux()
h.rpc("module.load", {"path": sys.argv[1], "args": sys.argv[2:], "exec": False}).get()
attach = h.rpc("conduit.attach", {"jobid": 0}, flags=flux.constants.FLUX_RPC_STREAMING)
attach.get()  # the test packet; this "datastore" never acknowledges anything
def batch(*sizes):
    return {"packets": [{"data": json.dumps({"x": "y" * n})} for n in sizes]}
def outcome(future):
    try:
        return future.wait_for(5).get()
    except OSError as exc:
        return [exc.errno, exc.strerror]
def put(payload):
    return outcome(h.rpc("conduit.put", payload))
held = h.rpc("conduit.put", batch(1, 1, 1))
out = {
    "packets": put(batch(1, 1, 1)),
    "bytes": put(batch(980)),
    "never": put(batch(*[1] * 6)),
    "held": h.rpc("conduit.stats-get").get()["held"],
}
h.rpc("conduit.ack", {"upto": 99}, flags=flux.constants.FLUX_RPC_NORESPONSE)
h.rpc("module.remove", {"name": "conduit", "cancel": False}).get()
out["after_unload"] = outcome(held)
print(json.dumps(out))
"""


def test_a_batch_over_the_backlog_says_which_limit(flux_instance: NativeInstance) -> None:
    done = flux_instance.python(STALLED_DATASTORE, str(MODULE), "backlog=5", "backlog-bytes=1000")
    result = json.loads(done.stdout)
    # three packets of 10 bytes each are held
    assert result["packets"][0] == errno.EAGAIN
    assert "3 packets are waiting" in result["packets"][1]
    assert "limit of 5 packets" in result["packets"][1]
    assert result["bytes"][0] == errno.EAGAIN
    assert "30 bytes are waiting" in result["bytes"][1]
    assert "limit of 1000 bytes" in result["bytes"][1]
    assert result["never"][0] == errno.EMSGSIZE
    assert "6 packets can never fit the backlog of 5" in result["never"][1]
    assert result["held"] == 3
    assert result["after_unload"][0] == errno.ECONNRESET
    # the refused acknowledgement, sent without asking for a response, is logged
    dmesg = flux_instance.flux("dmesg").stdout
    assert '"upto" 99 acknowledges packets never sent' in dmesg


def test_nesting_at_the_limit_is_stored_one_past_is_refused(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--packets", "2", "--fresh", rank=1)
    flux_instance.wait_datastore(ds)
    results = flux_instance.put_all(
        1,
        [
            {"data": nested(65)},
            {"packets": [{"data": data(ok=1)}, {"data": nested(65)}]},
            {"data": nested(64)},
            {"data": data(after=1)},
        ],
    )
    assert results[0]["errno"] == errno.EPROTO
    assert results[0]["error"] == (
        'conduit.put: "data" is nested 65 levels deep, over the limit of 64'
    )
    assert results[1]["errno"] == errno.EPROTO
    assert results[1]["error"] == (
        'conduit.put: packet 1: "data" is nested 65 levels deep, over the limit of 64'
    )
    assert results[2]["ok"] == {"id": 1, "duplicate": False}
    assert results[3]["ok"] == {"id": 2, "duplicate": False}
    stored = flux_instance.datastore_output(ds)
    assert stored.final_store["after"] == 1
    assert stored.final_store["deep"] == json.loads(nested(64))["deep"]
    assert stored.finished


def test_the_datastore_refuses_a_packet_it_cannot_decode_and_goes_on(
    flux_instance: NativeInstance,
) -> None:
    ds = flux_instance.submit(
        "datastore", "--packets", "1", "--fresh", "--module-arg", "max-depth=1500", rank=1
    )
    flux_instance.wait_datastore(ds)
    results = flux_instance.put_all(1, [{"data": nested(1200)}, {"data": data(after=1)}])
    assert results[0]["errno"] == errno.EPROTO
    assert "conduit: the datastore could not store this packet: " in results[0]["error"]
    assert results[1]["ok"] == {"id": 2, "duplicate": False}
    done = flux_instance.wait_output(ds)
    assert done.returncode == 0, done.stderr
    [refused] = [ln for ln in done.stderr.splitlines() if "refused" in ln]
    assert refused.startswith("conduit datastore: refused packets 1..1: maximum recursion depth")
    assert output.parse(done.stdout).final_store == {"test": 101, "after": 1}


def test_seq_and_producer_are_checked(flux_instance: NativeInstance) -> None:
    ds = flux_instance.submit("datastore", "--packets", "1", "--fresh", rank=1)
    flux_instance.wait_datastore(ds)
    producer = ("é中😀" * 86)[:256]  # 256 characters, 2 to 4 bytes each
    results = flux_instance.put_all(
        1,
        [
            {"data": data(zero=1), "seq": 0},
            {"data": data(zero=1), "seq": 0, "producer": "p"},
            {"data": data(text=1), "seq": "1", "producer": "p"},
            {"data": data(long=1), "seq": 1, "producer": producer + "é"},
            {"data": data(empty=1), "seq": 1, "producer": ""},
            {"data": data(multibyte=1), "seq": 1, "producer": producer},
        ],
    )
    messages = [
        '"seq" must be an integer from 1, not 0',
        '"seq" must be an integer from 1, not 0',
        '"seq" must be an integer from 1, not a string',
        '"producer" is 257 characters long; it must be 1 to 256',
        '"producer" is 0 characters long; it must be 1 to 256',
    ]
    for message, result in zip(messages, results):
        assert result.get("errno") == errno.EPROTO, result
        assert message in str(result["error"]), result
    assert results[-1]["ok"] == {"id": 1, "duplicate": False}
    stored = flux_instance.datastore_output(ds)
    assert stored.final_store == {"test": 101, "multibyte": 1}


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("bogus=1", "bogus=1: unknown argument; the conduit takes max-data=BYTES, max-depth="),
        ("window=4", "window=4: unknown argument; "),
        ("unacked-batches=9", "unacked-batches=9: expected an integer from 1 to 8"),
        ("max-depth=2001", "max-depth=2001: expected an integer from 1 to 2000"),
        ("backlog=0", "backlog=0: expected an integer from 1"),
        ("max-data=64k", "max-data=64k: expected an integer from 1"),
    ],
)
def test_a_bad_module_argument_fails_the_load_and_is_named(
    flux_instance: NativeInstance, arg: str, message: str
) -> None:
    load = flux_instance.flux("module", "load", str(MODULE), arg, check=False)
    assert load.returncode != 0
    assert not flux_instance.module_loaded(0)
    lines = [ln for ln in flux_instance.flux("dmesg").stdout.splitlines() if message in ln]
    assert lines, f"flux dmesg has no line with {message!r}"


def test_stats_report_the_flux_core_version_built_against(flux_instance: NativeInstance) -> None:
    version = flux_instance.flux("version").stdout.splitlines()
    [libflux] = [ln.split(":", 1)[1].strip() for ln in version if ln.startswith("libflux-core:")]
    module_args = ["unacked-batches=2", "max-depth=10"]
    flux_instance.flux("exec", "-r", "1", "flux", "module", "load", str(MODULE), *module_args)
    try:
        got = flux_instance.stats(1)
    finally:
        flux_instance.flux("exec", "-r", "1", "flux", "module", "remove", "conduit")
    assert got["flux_version"] == libflux
    assert got["max_depth"] == 10
    assert f"conduit-flux-core-version={libflux}".encode() in MODULE.read_bytes()
