#!/usr/bin/env python3
"""Start the testbed's nodes that were killed or crashed, as a node's
supervisor would bring its broker back.

Docker disables a container's restart policy when it is stopped with
`docker kill`, so a killed node would stay down.  This watchdog runs in a
container of its own project with the engine's API socket mounted.  Every
second it lists that project's node containers and starts each one that
exited with a non-zero code (killed: 137, or crashed).  A node stopped on
purpose (`docker compose stop`: its broker shuts down and it exits 0), or
whose broker ran `flux shutdown`, stays down.  It never stops or removes a
container, and it touches no other project's containers.

Standard library only: the official flux-core image has python3 and no
Docker client.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
import urllib.parse
from typing import Any

SOCKET = os.environ.get("ENGINE_SOCKET") or "/var/run/docker.sock"  # empty: the default
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
INTERVAL = 1.0


class UnixConnection(http.client.HTTPConnection):
    """HTTP over the engine's Unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.socket_path)
        self.sock = sock


def api(method: str, path: str, query: dict[str, str] | None = None) -> Any:
    conn = UnixConnection(SOCKET)
    try:
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        conn.request(method, url)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status >= 400:
        raise OSError(f"{method} {path}: {response.status} {body[:200]!r}")
    return json.loads(body) if body else None


def log(line: str) -> None:
    print(f"conduit-watchdog: {line}", file=sys.stderr, flush=True)


def own_project() -> str:
    """The compose project of this container (its id is its hostname)."""
    me = api("GET", f"/containers/{socket.gethostname()}/json")
    return str(me["Config"]["Labels"][PROJECT_LABEL])


def start_failed_nodes(project: str) -> None:
    filters = json.dumps({"label": [f"{PROJECT_LABEL}={project}"], "status": ["exited"]})
    for summary in api("GET", "/containers/json", {"all": "1", "filters": filters}):
        service = summary.get("Labels", {}).get(SERVICE_LABEL, "")
        if not service.startswith("node"):
            continue
        state = api("GET", f"/containers/{summary['Id']}/json")["State"]
        code = int(state.get("ExitCode", 0))
        if state.get("Status") != "exited" or code == 0:
            continue
        how = "killed" if code == 137 else "failed"
        log(f"{service} exited {code} ({how}); starting it")
        try:
            api("POST", f"/containers/{summary['Id']}/start")
        except OSError as exc:  # removed meanwhile (make down, make scale)
            log(f"could not start {service}: {exc}")


def main() -> int:
    while True:
        try:
            project = own_project()
            break
        except OSError as exc:
            log(f"no container engine API at {SOCKET} ({exc}); killed nodes stay down")
            time.sleep(60)
    log(f"watching the nodes of project {project}")
    while True:
        try:
            start_failed_nodes(project)
        except OSError as exc:
            log(str(exc))
        time.sleep(INTERVAL)


if __name__ == "__main__":
    sys.exit(main())
