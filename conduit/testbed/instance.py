"""What a test does with a Flux instance, written once for a native one and the testbed.

A native instance (conduit.testbed.native) and the compose testbed
(conduit.testbed.cluster) differ only in how a command reaches the
instance: `flux ...` with FLUX_URI set, or `docker compose exec -T NODE
flux ...` from the host.  Each says that in `command()`; running commands,
submitting and waiting for jobs, attaching to their output and the
conduit's own calls are here.  Every call has a timeout, and a command
that fails raises `CommandError` with its command line, exit code and
output.
"""

from __future__ import annotations

import json
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from conduit import output
from conduit.lines import LineReader
from conduit.testbed import waiting
from conduit.testbed.errors import TestbedError

T = TypeVar("T")

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


class CommandError(TestbedError):
    """A command run in the instance failed: what ran, its exit code and its output."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv, self.returncode, self.stdout, self.stderr = argv, returncode, stdout, stderr
        super().__init__(
            f"`{' '.join(argv)}` exited {returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        )


class Instance(ABC):
    """A Flux instance that tests drive through the `flux` command."""

    size: int
    env: Mapping[str, str] | None = None  # the environment `command()` runs in
    cwd: Path | None = None  # where `command()` runs

    @abstractmethod
    def command(self, *argv: str, node: str | None = None, user: str | None = None) -> list[str]:
        """The command line that runs `argv` in the instance (on `node`, as `user`)."""

    def run(
        self,
        *argv: str,
        node: str | None = None,
        user: str | None = None,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the instance and wait for it.

        Args:
            node: where (the testbed's node0 by default; a native instance has one place).
            user: as whom (the testbed: a user of the nodes; default the instance owner).
            check: raise CommandError if it exits non-zero.
            timeout: seconds before it is killed and TestbedError raised.
            input: its standard input.

        Raises:
            CommandError: it exited non-zero (with `check`).
            TestbedError: it did not finish within `timeout` seconds.
        """
        full = self.command(*argv, node=node, user=user)
        try:
            done = subprocess.run(
                full,
                env=self.env,
                cwd=self.cwd,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
            )
        except subprocess.TimeoutExpired:
            raise TestbedError(f"`{' '.join(full)}` did not finish within {timeout:g}s") from None
        if check and done.returncode != 0:
            raise CommandError(full, done.returncode, done.stdout, done.stderr)
        return done

    def flux(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """`flux ARGS...` in the instance (keywords as for run())."""
        return self.run("flux", *args, **kw)

    def python(self, code: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run `code` with the Python that Flux was built with (it imports flux)."""
        return self.flux("python", "-c", code, *args, **kw)

    @staticmethod
    def wait_until(check: Callable[[], T], timeout: float, what: str, pause: float = 0.2) -> T:
        """Call `check` until it returns something true; that value (TestbedError on timeout)."""
        return waiting.wait_until(check, timeout, what, pause)

    # -- jobs ----------------------------------------------------------------

    def submit_command(
        self,
        *command: str,
        rank: int | None = None,
        host: str | None = None,
        user: str | None = None,
        options: tuple[str, ...] = ("-N1", "-n1"),
    ) -> str:
        """Submit `command` as a job (one task unless `options` say otherwise); its id.

        Args:
            rank, host: where it must run (a constraint), if anywhere in particular.
            user: who submits it.
            options: `flux submit` options.
        """
        where = [f"--requires=rank:{rank}"] if rank is not None else []
        where += [f"--requires=host:{host}"] if host else []
        done = self.flux("submit", "-u", *options, *where, *command, user=user)
        return done.stdout.strip()

    def wait_job(self, jobid: str, timeout: float = 120, user: str | None = None) -> dict[str, Any]:
        """Wait until job `jobid` is inactive (its `clean` event); `flux jobs --json` of it then.

        Raises:
            CommandError: it did not end within `timeout` seconds (or is no job).
        """
        self.flux(
            "job", "wait-event", f"--timeout={int(timeout)}", jobid, "clean",
            timeout=timeout + 30, user=user,
        )  # fmt: skip
        return self.job(jobid, user=user)

    def attach(self, jobid: str, node: str | None = None, user: str | None = None) -> LineReader:
        """The job's output as it comes (`flux job attach`), read with deadlines."""
        argv = self.command("flux", "job", "attach", jobid, node=node, user=user)
        return LineReader(argv, env=self.env, cwd=self.cwd)

    def wait_output(
        self, jobid: str, timeout: float = 120, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Wait for a job to end; its output (`flux job attach`) and exit status."""
        return self.flux("job", "attach", jobid, check=False, timeout=timeout, user=user)

    def job(self, jobid: str, user: str | None = None) -> dict[str, Any]:
        """What `flux jobs --json JOBID` says of the job."""
        return dict(json.loads(self.flux("jobs", "--json", jobid, user=user).stdout))

    def job_state(self, jobid: str) -> str:
        """The job's state (RUN, INACTIVE, ...), or "unknown" to this instance."""
        done = self.flux("jobs", "--json", jobid, check=False)
        return str(json.loads(done.stdout)["state"]) if done.returncode == 0 else "unknown"

    def plain(self, jobid: str) -> str:
        """A job id in the ASCII form (f58plain) the compute's store keys use."""
        return self.flux("job", "id", "--to=f58plain", jobid).stdout.strip()

    # -- the conduit -----------------------------------------------------------

    def conduit(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """`flux python -m conduit ARGS...`, not as a job."""
        return self.flux("python", "-m", "conduit", *args, **kw)

    def submit(
        self, *conduit_args: str, rank: int | None = None, host: str | None = None, **kw: Any
    ) -> str:
        """Submit `flux python -m conduit ARGS...` as a job; its id."""
        return self.submit_command(
            "flux", "python", "-m", "conduit", *conduit_args, rank=rank, host=host, **kw
        )

    def datastore_output(self, jobid: str, timeout: float = 120) -> output.DatastoreOutput:
        """Wait for datastore `jobid` to end; its attach output, parsed."""
        done = self.wait_output(jobid, timeout)
        if done.returncode != 0:
            raise CommandError(["flux", "job", "attach", jobid], done.returncode, done.stdout,
                               done.stderr)  # fmt: skip
        return output.parse(done.stdout)

    def wait_datastore(
        self, jobid: str, timeout: float = 60, stream: str | None = None
    ) -> dict[str, Any]:
        """Wait until datastore `jobid` has published its location (of `stream`); the location."""
        want = int(self.flux("job", "id", "--to=dec", jobid).stdout)
        key = f"conduit.streams.{stream}.datastore" if stream else "conduit.datastore"

        def published() -> dict[str, Any] | None:
            got = self.flux("kvs", "get", key, check=False)
            location = json.loads(got.stdout) if got.returncode == 0 else {}
            return location if location.get("jobid") == want else None

        return self.wait_until(published, timeout, f"datastore {jobid} publishing its location")

    def module_loaded(self, rank: int) -> bool:
        """Whether the conduit module is loaded on `rank`."""
        listing = self.flux("exec", "-r", str(rank), "flux", "module", "list").stdout
        return any(line.split()[:1] == ["conduit"] for line in listing.splitlines())

    def put_all(self, rank: int, payloads: list[Any]) -> list[dict[str, Any]]:
        """Send each payload to conduit.put on `rank` in turn; {"ok": response} or the error."""
        done = self.python(PUT_SCRIPT, str(rank), input=json.dumps(payloads))
        return list(json.loads(done.stdout))

    def durable_store(self) -> dict[str, Any]:
        """`conduit store`: {"packets", "segments", "store"}."""
        return dict(json.loads(self.conduit("store").stdout))

    def stats(self, rank: int, name: str = "conduit") -> dict[str, Any]:
        """The counters of the conduit module `name` on `rank` (what `flux module stats` reads)."""
        code = (
            "import flux, json, sys; print(json.dumps(flux.Flux().rpc("
            "sys.argv[2] + '.stats-get', nodeid=int(sys.argv[1])).get()))"
        )
        return dict(json.loads(self.python(code, str(rank), name).stdout))
