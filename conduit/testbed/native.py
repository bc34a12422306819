"""A native Flux instance for tests, driven through the `flux` command.

Either the instance the tests already run in (FLUX_URI set, e.g. under
`flux alloc -N3`), or a `flux start --test-size=N` of their own, whose
initial program waits on a pipe so that closing it shuts the instance down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conduit.testbed.errors import TestbedError
from conduit.testbed.instance import Instance
from conduit.testbed.paths import CHECKOUT, in_checkout
from conduit.testbed.waiting import wait_until


def missing_flux() -> str | None:
    """Why a native instance cannot run here, in one line, or None."""
    if shutil.which("flux") is None:
        return "flux-core is not installed (no `flux` on PATH)"
    return None


class NativeInstance(Instance):
    """A Flux instance on this machine: its URI, its size, and our `flux start` if we made it."""

    def __init__(self, uri: str, size: int, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.uri = uri
        self.size = size
        self.env = self.environment(uri)
        self._proc = proc

    def command(self, *argv: str, node: str | None = None, user: str | None = None) -> list[str]:
        if user is not None:
            raise TestbedError(
                f"user={user}: a native instance runs commands as you; "
                "other users need the compose testbed (flux_testbed)"
            )
        return list(argv)

    @classmethod
    def start(cls, size: int = 3, timeout: float = 60, own: bool = False) -> NativeInstance:
        """The instance the tests run in, if any (unless `own`), else a new one of `size`.

        Raises:
            TestbedError: `flux start` failed or did not come up within `timeout`.
        """
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
        tmp = Path(tempfile.mkdtemp(prefix="flux-testbed-"))
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
                raise TestbedError(
                    f"flux start --test-size={size} exited:\n{(tmp / 'broker.log').read_text()}"
                )
            return urifile.exists()

        try:
            wait_until(up, timeout, f"flux start --test-size={size}", pause=0.1)
        except TestbedError:
            proc.kill()
            raise
        return cls(urifile.read_text().strip(), size, proc)

    @staticmethod
    def environment(uri: str | None) -> dict[str, str]:
        """This environment without FLUX_* (but FLUX_URI=uri); in a checkout, its package first."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
        if in_checkout():
            path = [str(CHECKOUT), env.get("PYTHONPATH")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        if uri:
            env["FLUX_URI"] = uri
        return env

    def stop(self) -> None:
        """Shut down our own `flux start` (an instance we did not start is left alone)."""
        if self._proc is None:
            return
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@contextmanager
def running_instance(size: int = 3, own: bool = False) -> Iterator[NativeInstance]:
    """A native instance for the block (the enclosing one, unless `own`), stopped after it."""
    instance = NativeInstance.start(size=size, own=own)
    try:
        yield instance
    finally:
        instance.stop()
