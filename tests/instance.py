"""A Flux instance for the tests, driven through the `flux` command.

Either the instance the tests already run in (FLUX_URI set, e.g. under
`flux alloc -N3`), or a `flux start --test-size=3` of our own, whose
initial program waits on a pipe so that closing it shuts the instance down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from conduit import output

REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "module" / "conduit.so"


def missing_flux() -> str | None:
    """Why the Flux tests cannot run here, or None."""
    if shutil.which("flux") is None:
        return "flux-core is not installed (no `flux` on PATH)"
    if not MODULE.is_file():
        return f"{MODULE.relative_to(REPO)} is not built; run `make module`"
    return None


@dataclass
class FluxInstance:
    uri: str
    size: int
    owned: bool
    env: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, size: int = 3, timeout: float = 60, own: bool = False) -> FluxInstance:
        """The instance the tests run in, if any (unless `own`), else a new one."""
        if os.environ.get("FLUX_URI") and not own:
            env = cls._env(os.environ["FLUX_URI"])
            got = subprocess.run(
                ["flux", "getattr", "size"], env=env, capture_output=True, text=True, timeout=30
            )
            if got.returncode == 0:
                return cls(os.environ["FLUX_URI"], int(got.stdout), owned=False, env=env)
        tmp = Path(tempfile.mkdtemp(prefix="conduit-flux-"))
        urifile = tmp / "uri"
        proc = subprocess.Popen(
            [
                "flux",
                "start",
                f"--test-size={size}",
                "sh",
                "-c",
                f'echo "$FLUX_URI" > {urifile}.new && mv {urifile}.new {urifile} && read _',
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "broker.log", "wb"),  # noqa: SIM115
            env=cls._env(None),
        )
        deadline = time.monotonic() + timeout
        while not urifile.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = (tmp / "broker.log").read_text(errors="replace")
                raise RuntimeError(f"flux start --test-size={size} did not come up:\n{log}")
            time.sleep(0.1)
        uri = urifile.read_text().strip()
        return cls(uri, size, owned=True, env=cls._env(uri), _proc=proc)

    @staticmethod
    def _env(uri: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if uri:
            env["FLUX_URI"] = uri
        return env

    def stop(self) -> None:
        if self._proc is None:
            return
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def run(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args),
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def flux(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run("flux", *args, **kw)  # type: ignore[arg-type]

    def python(self, code: str, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """Run `code` with the Python that Flux was built with (it imports flux)."""
        return self.flux("python", "-c", code, *args, **kw)

    def submit(self, *conduit_args: str, rank: int | None = None) -> str:
        """Submit `flux python -m conduit ARGS...`; return the job id."""
        where = [f"--requires=rank:{rank}"] if rank is not None else []
        out = self.flux(
            "submit", "-N1", "-n1", "-u", *where, "flux", "python", "-m", "conduit", *conduit_args
        )
        return out.stdout.strip()

    def attach(self, jobid: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Wait for a job and return its output (`flux job attach`)."""
        return self.flux("job", "attach", jobid, check=False, timeout=timeout)

    def datastore_output(self, jobid: str, timeout: float = 120) -> output.DatastoreOutput:
        done = self.attach(jobid, timeout)
        assert done.returncode == 0, f"datastore {jobid} exited {done.returncode}:\n{done.stderr}"
        return output.parse(done.stdout)

    def wait_ready(self, jobid: str, timeout: float = 60) -> dict[str, object]:
        """Wait until datastore `jobid` has published its location."""
        want = int(self.flux("job", "id", "--to=dec", jobid).stdout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.flux("kvs", "get", "conduit.datastore", check=False)
            location = json.loads(got.stdout) if got.returncode == 0 else {}
            if location.get("jobid") == want:
                return location
            time.sleep(0.2)
        raise AssertionError(f"datastore {jobid} did not become ready in {timeout}s")

    def module_loaded(self, rank: int) -> bool:
        listing = self.flux("exec", "-r", str(rank), "flux", "module", "list").stdout
        return any(line.split()[:1] == ["conduit"] for line in listing.splitlines())
