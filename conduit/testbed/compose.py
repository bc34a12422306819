"""The one way the host side runs a compose command: `COMPOSE -p PROJECT -f FILE ARGS...`.

`make up` and friends (conduit.testbed.lifecycle) and the pytest plugin's
testbed (conduit.testbed.cluster) both run every compose command, and the
engine's own `image inspect` and `pull`, through a `Compose`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conduit.testbed.engine import Engine
from conduit.testbed.errors import TestbedError
from conduit.testbed.image import build_context

# A broker's time to shut down cleanly (rank 0 dumps its KVS), as stop_grace_period
# says; given to every compose command that stops containers (see Testbed.restart).
STOP_TIMEOUT = "60"


def _say(line: str) -> None:
    print(line, flush=True)


@dataclass
class Compose:
    """One compose project on one engine, and the image its nodes run."""

    project: str
    file: Path
    image: str  # the image the nodes run (CONDUIT_IMAGE in the compose file)
    command_line: Sequence[str] = ("docker", "compose")
    engine: Engine = Engine()
    say: Callable[[str], None] = _say
    quiet: bool = False  # capture the output of builds and `up` instead of showing it
    # more of the compose file's variables, asked for anew at each command
    variables: Callable[[], dict[str, str]] = dict
    connected: bool = field(default=False, init=False, repr=False)

    def connect(self) -> None:
        """Before the first command: the engine answers (Podman's service started if need be)."""
        if not self.connected:
            self.engine.ensure_service(self.say)
            self.connected = True

    def env(self, image: str | None = None) -> dict[str, str]:
        """The environment compose runs in: the engine's, and the image the nodes run."""
        return {
            **os.environ,
            **self.engine.env(),
            **self.variables(),
            "CONDUIT_IMAGE": image or self.image,
        }

    def argv(self, *args: str) -> list[str]:
        """`COMPOSE -p PROJECT -f FILE ARGS...`."""
        return [*self.command_line, "-p", self.project, "-f", str(self.file), *args]

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 120,
        show: bool = False,
        image: str | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """compose ARGS; with `show`, its output goes to the terminal (unless quiet).

        Raises:
            TestbedError: compose is missing, did not finish within `timeout`,
                or (with `check`) exited non-zero; the message has its last line.
        """
        argv = self.argv(*args)
        stream = show and not self.quiet
        self.connect()
        try:
            done = subprocess.run(
                argv,
                cwd=build_context(),
                env=self.env(image),
                text=True,
                capture_output=not stream,
                timeout=timeout,
                input=input,
            )
        except subprocess.TimeoutExpired:
            raise TestbedError(f"`{' '.join(argv)}` did not finish within {timeout:g}s") from None
        except OSError:
            raise TestbedError(
                f"no `{self.command_line[0]}` command; install Compose v2 (with Docker, or its "
                "docker-compose binary for Podman), or set COMPOSE to your compose command"
            ) from None
        if check and done.returncode != 0:
            said = [] if stream else (done.stderr or done.stdout).strip().splitlines()
            last = f": {said[-1]}" if said else ""
            raise TestbedError(f"`{' '.join(argv)}` exited {done.returncode}{last}")
        return done

    def containers(self) -> dict[str, dict[str, Any]]:
        """service -> `compose ps` entry, for every container of the project."""
        done = self.run("ps", "--all", "--format", "json", check=False, timeout=60)
        if done.returncode != 0:
            return {}
        text = done.stdout.strip()
        entries = json.loads(text) if text.startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]  # fmt: skip
        return {str(e["Service"]): e for e in entries}

    def running(self) -> dict[str, dict[str, Any]]:
        """The services whose container runs."""
        return {s: e for s, e in self.containers().items() if e.get("State") == "running"}

    def logs(self) -> str:
        """Every container's log, with timestamps (for failure reports)."""
        done = self.run("logs", "--no-color", "--timestamps", check=False, timeout=60)
        return done.stdout + done.stderr

    def down(self, keep_state: bool = False) -> None:
        """Remove the containers and network (and the volumes, unless `keep_state`)."""
        args = ["down", "--remove-orphans", "--timeout", STOP_TIMEOUT]
        self.run(*args if keep_state else [*args, "--volumes"], timeout=300, show=True)

    def engine_command(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The engine's own command (docker, podman ARGS...): image inspect and pull."""
        self.connect()
        argv = [self.engine.name, *args]
        try:
            return subprocess.run(
                argv, env=self.env(), capture_output=True, text=True, timeout=timeout
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TestbedError(f"`{' '.join(argv)}` failed: {exc}") from None

    def container_env(self, service: str, name: str) -> str | None:
        """The value of environment variable `name` in the container of `service`, if any."""
        container = self.containers().get(service, {}).get("Name")
        if not container:
            return None
        done = self.engine_command("inspect", "--format", "{{json .Config.Env}}", str(container))
        if done.returncode != 0:
            return None
        for item in json.loads(done.stdout or "[]"):
            key, _, value = str(item).partition("=")
            if key == name:
                return value
        return None

    def image_present(self, ref: str) -> bool:
        """Whether the engine has image `ref`."""
        return self.engine_command("image", "inspect", ref).returncode == 0
