"""A native Flux instance for the tests, driven through the `flux` command.

Either the instance the tests already run in (FLUX_URI set, e.g. under
`flux alloc -N3`), or a `flux start --test-size=N` of our own, whose
initial program waits on a pipe so that closing it shuts the instance down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.runner import REPO, FluxRunner, wait_until

MODULE = REPO / "module" / "conduit.so"


def missing_flux() -> str | None:
    """Why the Flux tests cannot run here, or None."""
    if shutil.which("flux") is None:
        return "flux-core is not installed (no `flux` on PATH)"
    if not MODULE.is_file():
        return f"{MODULE.relative_to(REPO)} is not built; run `make module`"
    return None


class FluxInstance(FluxRunner):
    def __init__(self, uri: str, size: int, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.uri = uri
        self.size = size
        self.env = self.environment(uri)
        self._proc = proc  # our own `flux start`, or None

    def command(self, *argv: str, node: str | None = None, user: str | None = None) -> list[str]:
        if user:
            raise ValueError(f"a native instance runs commands as its owner, not as {user}")
        return list(argv)

    @classmethod
    def start(cls, size: int = 3, timeout: float = 60, own: bool = False) -> FluxInstance:
        """The instance the tests run in, if any (unless `own`), else a new one."""
        if os.environ.get("FLUX_URI") and not own:
            got = subprocess.run(
                ["flux", "getattr", "size"],
                env=cls.environment(os.environ["FLUX_URI"]),
                capture_output=True,
                text=True,
                timeout=30,
            )
            if got.returncode == 0:
                return cls(os.environ["FLUX_URI"], int(got.stdout))
        tmp = Path(tempfile.mkdtemp(prefix="conduit-flux-"))
        urifile = tmp / "uri"
        with open(tmp / "broker.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    "flux",
                    "start",
                    f"--test-size={size}",
                    "sh",
                    "-c",
                    f'echo "$FLUX_URI" > {urifile}.new && mv {urifile}.new {urifile} && read _',
                ],  # fmt: skip
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=cls.environment(None),
            )

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"flux start --test-size={size} exited:\n{(tmp / 'broker.log').read_text()}"
                )
            return urifile.exists()

        try:
            wait_until(up, timeout, f"flux start --test-size={size}", pause=0.1)
        except AssertionError:
            proc.kill()
            raise
        return cls(urifile.read_text().strip(), size, proc)

    @staticmethod
    def environment(uri: str | None) -> dict[str, str]:
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
