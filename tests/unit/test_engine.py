"""How the testbed reaches its engine (conduit.testbed.engine), without Docker or Podman."""

from __future__ import annotations

import os
import re

from conduit.testbed.engine import Engine, podman_conf, podman_socket
from conduit.testbed.image import BASE_IMAGE, qualified, short_ref


def test_podman_is_reached_through_its_docker_api_with_the_classic_builder() -> None:
    env = Engine.named("podman").env()
    socket = podman_socket()
    assert env["DOCKER_HOST"] == f"unix://{socket}"
    assert env["ENGINE_SOCKET"] == socket  # the watchdog's mount
    assert (env["DOCKER_BUILDKIT"], env["COMPOSE_DOCKER_CLI_BUILD"]) == ("0", "0")
    if not os.environ.get("CONTAINERS_CONF"):
        assert env["CONTAINERS_CONF"] == str(podman_conf())
    conf = podman_conf().read_text()
    assert re.search(r'^\[containers\]\ndefault_ulimits = \[\n  "nofile=1024:1024",\n', conf, re.M)
    assert '"nproc=4096:4096"' in conf
    assert Engine.named("").env() == {}  # Docker: as it always was


def test_base_image_names_are_qualified_for_podman() -> None:
    assert qualified(BASE_IMAGE) == f"docker.io/{BASE_IMAGE}"
    assert qualified("ghcr.io/o/flux-conduit:1") == "ghcr.io/o/flux-conduit:1"
    assert qualified("localhost/flux-conduit:x") == "localhost/flux-conduit:x"
    assert short_ref("docker.io/library/flux-conduit:x") == "flux-conduit:x"
    assert short_ref("localhost/flux-conduit:x") == "flux-conduit:x"


def test_an_empty_engine_socket_means_the_engines_default() -> None:
    """ENGINE_SOCKET= (as make exports it when unset) is no path."""
    assert Engine.named("docker", "").api_socket == "/var/run/docker.sock"
    assert Engine.named("podman", " ").api_socket == podman_socket()
    assert Engine.named("docker", "/run/other.sock").api_socket == "/run/other.sock"
