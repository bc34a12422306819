"""Parsing the datastore's attach output, without Flux."""

from conduit import output

SAMPLE = """Starting....
Module was loaded successfully...
finished initialize...
starting run()
Waiting for a packet
{"test": 101}
Waiting for a packet
{"test": 101, "1700000000-fA": "os.time"}
Bye bye!
run finished...
"""


def test_parse_finished_run() -> None:
    result = output.parse(SAMPLE)
    assert result.finished
    assert result.waits == 2
    assert result.stores == [{"test": 101}, {"test": 101, "1700000000-fA": "os.time"}]
    assert result.final_store == {"test": 101, "1700000000-fA": "os.time"}


def test_unfinished_run() -> None:
    result = output.parse("\n".join(SAMPLE.splitlines()[:6]))
    assert not result.finished
    assert result.final_store == {"test": 101}
