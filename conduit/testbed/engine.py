"""The container engine under compose: Docker, or Podman through its Docker API."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conduit.testbed.errors import TestbedError
from conduit.testbed.image import build_context
from conduit.testbed.paths import work_dir
from conduit.testbed.waiting import wait_until

ENGINES = ("docker", "podman")
DOCKER_SOCKET = "/var/run/docker.sock"
PODMAN_IDLE = 600  # seconds without a request before the Podman service we start exits


def podman_conf() -> Path:
    """The limits Podman needs where its defaults exceed the host's (see the file)."""
    return build_context() / "docker" / "podman-containers.conf"


def podman_socket() -> str:
    """Where the Podman API service that the testbed starts listens: a path of its own."""
    if os.geteuid() == 0:
        return "/run/flux-conduit/podman.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    own = f"{runtime}/flux-conduit" if runtime else f"/tmp/flux-conduit-{os.getuid()}"
    return f"{own}/podman.sock"


def api_ping(path: str, timeout: float = 5) -> bool:
    """Whether a Docker-compatible engine API answers on the Unix socket `path`."""
    conn = http.client.HTTPConnection("localhost", timeout=timeout)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        conn.sock = sock
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@dataclass(frozen=True)
class Engine:
    """The container engine under compose: Docker, or Podman through its Docker API.

    Compose v2 (`docker compose`) drives both.  For Podman it talks to
    Podman's Docker-compatible API service on `socket` (DOCKER_HOST), which
    `ensure_service` starts when none answers there, with the container
    limits of docker/podman-containers.conf; it builds with the classic
    builder (BuildKit would need a moby/buildkit container).  The watchdog
    mounts the same socket (ENGINE_SOCKET).
    """

    name: str = "docker"
    socket: str = ""  # ENGINE_SOCKET; "": the engine's default

    @classmethod
    def named(cls, name: str, socket: str = "") -> Engine:
        """ENGINE=name (and ENGINE_SOCKET), or a one-line TestbedError."""
        name = name.strip() or "docker"
        if name not in ENGINES:
            raise TestbedError(f"ENGINE={name}: not an engine; use ENGINE=docker or ENGINE=podman")
        return cls(name, socket.strip())

    @classmethod
    def from_environment(cls) -> Engine:
        """The engine of ENGINE and ENGINE_SOCKET, as `make` passes them on."""
        return cls.named(os.environ.get("ENGINE", ""), os.environ.get("ENGINE_SOCKET", ""))

    @property
    def api_socket(self) -> str:
        """The engine's API socket on this host."""
        if self.socket:
            return self.socket
        return podman_socket() if self.name == "podman" else DOCKER_SOCKET

    def env(self) -> dict[str, str]:
        """What compose, the engine's command and the compose file need to reach this engine."""
        if self.name == "docker":
            return {"ENGINE_SOCKET": self.socket} if self.socket else {}
        env = {
            "ENGINE_SOCKET": self.api_socket,
            "DOCKER_HOST": f"unix://{self.api_socket}",
            "DOCKER_BUILDKIT": "0",
            "COMPOSE_DOCKER_CLI_BUILD": "0",
        }
        if not os.environ.get("CONTAINERS_CONF"):  # one the user set is theirs to keep
            env["CONTAINERS_CONF"] = str(podman_conf())
        return env

    def missing_dns(self) -> str | None:
        """Podman: why its networks give containers no DNS (nodes must resolve node0), or None.

        Netavark resolves names with aardvark-dns; the older CNI backend only
        with the dnsname plugin, which Debian's podman does not pull in.
        """
        if self.name != "podman":
            return None
        try:
            done = subprocess.run(
                ["podman", "info", "--format", "{{.Host.NetworkBackend}}"],
                env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        backend = done.stdout.strip()
        if backend == "cni" and not any(
            Path(d, "dnsname").exists() for d in ("/usr/lib/cni", "/opt/cni/bin")
        ):
            return (
                "Podman's network backend is CNI without the dnsname plugin, so the nodes "
                "cannot resolve node0; install netavark and aardvark-dns (then `podman "
                "system reset`), or the CNI dnsname plugin"
            )
        return None

    def ensure_service(self, say: Callable[[str], None], timeout: float = 60) -> None:
        """Podman: its API service answering on the socket; started here if none does.

        Rootful Podman's own socket (/run/podman/podman.sock, started by
        systemd) would run containers with the system's limits, so the
        testbed has a socket of its own.  The service exits after
        PODMAN_IDLE seconds without a request (the watchdog asks every
        second while the testbed runs); containers outlive it.
        """
        if self.name != "podman" or api_ping(self.api_socket):
            return
        if shutil.which("podman") is None:
            raise TestbedError("ENGINE=podman, but `podman` is not on PATH; install Podman")
        path = Path(self.api_socket)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # left by a service that did not end cleanly
        log = work_dir() / "podman-service.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        say(f"starting Podman's API service on {path} (log: {log})")
        with open(log, "ab") as out:
            subprocess.Popen(
                ["podman", "system", "service", f"--time={PODMAN_IDLE}", f"unix://{path}"],
                env={**os.environ, **self.env()},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,  # not ended with make's process group
            )
        wait_until(
            lambda: api_ping(self.api_socket),
            timeout,
            f"Podman's API service answering on {path}",
            state=lambda: f"see {log}",
        )
