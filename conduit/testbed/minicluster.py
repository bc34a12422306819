"""Write a Flux Operator MiniCluster that runs the conduit demo on N pods.

The MiniCluster (flux-framework.org/v1alpha2) is one Flux instance of N
brokers, one per pod, all running this project's image. The image has its
own flux-core, so the operator's Flux view is disabled
(`spec.flux.container.disable`). The operator still runs its init container
to write the broker config; that container is this image too, so no other
image is pulled and the files it writes belong to the image's user, who
runs the brokers. The lead broker's initial program is the demo
(`launcher`: the demo submits its own jobs), so the lead pod's log is the
demo's output.

    python3 -m conduit.testbed minicluster 3 > minicluster.yaml
    kubectl apply -f minicluster.yaml

tests/unit/test_minicluster.py checks the output against the MiniCluster CRD of
flux-operator 0.2.1; docs/kubernetes.md walks through it on `kind`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from conduit import __version__

API_VERSION = "flux-framework.org/v1alpha2"
KIND = "MiniCluster"
# Where the GitHub workflow publishes the image: ghcr.io/<repository>, tagged
# with the release's version (a tag v0.1.0 publishes 0.1.0).
PUBLISHED_IMAGE = "ghcr.io/flux-conduit/flux-conduit"
DEFAULT_IMAGE = f"{PUBLISHED_IMAGE}:{__version__}"
DEFAULT_NAME = "flux-conduit"
DEFAULT_NAMESPACE = "flux-operator"
DEMO = "flux python -m conduit demo"
# Kubernetes ends the MiniCluster's job after this long, so a hung broker
# does not hold the pods (the operator's default is about a year).
DEADLINE_SECONDS = 1800

INT32_MAX = 2**31 - 1
# The pods' hostnames are <name>-<index>, DNS labels of at most 63
# characters; the operator also names a Service after the MiniCluster.
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
IMAGE = re.compile(r"[a-z0-9][A-Za-z0-9._/:@-]*")
# Strings YAML reads back unchanged when unquoted: words of these characters,
# starting with a letter, joined by single spaces or colons; and not one of
# the words YAML 1.1 reads as a boolean or null.
PLAIN = re.compile(r"[A-Za-z][\w./@-]*(?:[ :][\w./@-]+)*")
YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def minicluster(
    size: int,
    image: str = DEFAULT_IMAGE,
    name: str = DEFAULT_NAME,
    namespace: str = DEFAULT_NAMESPACE,
) -> dict[str, Any]:
    """The MiniCluster of `size` pods that runs the demo in `image`.

    Raises:
        ValueError: a size, name, namespace or image Kubernetes would refuse.
    """
    if not 1 <= size <= INT32_MAX:
        raise ValueError(f"a MiniCluster needs 1 to {INT32_MAX} pods, not {size}")
    last_host = f"{name}-{size - 1}"
    if not DNS_LABEL.fullmatch(name) or len(last_host) > 63:
        raise ValueError(
            f"--name {name!r}: use lowercase letters, digits and '-', starting with a"
            f" letter, short enough that the hostname {last_host!r} has at most 63 characters"
        )
    if not NAMESPACE.fullmatch(namespace) or len(namespace) > 63:
        raise ValueError(
            f"--namespace {namespace!r}: use at most 63 lowercase letters, digits and '-'"
        )
    if not IMAGE.fullmatch(image):
        raise ValueError(f"--image {image!r}: not an image reference (REGISTRY/NAME:TAG)")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "size": size,
            "deadlineSeconds": DEADLINE_SECONDS,
            "flux": {"container": {"disable": True, "image": image}},
            "containers": [
                {"image": image, "command": DEMO, "runFlux": True, "launcher": True},
            ],
        },
    }


def to_yaml(value: dict[str, Any], indent: int = 0) -> str:
    """Block YAML of nested mappings, lists of mappings and scalars."""
    pad = "  " * indent
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 1)}")
        elif isinstance(item, list):
            lines.append(f"{pad}{key}:")
            for element in item:
                nested = to_yaml(element, indent + 2)
                lines.append(f"{pad}  - {nested.lstrip()}")
        else:
            lines.append(f"{pad}{key}: {scalar(item)}")
    return "\n".join(lines)


def scalar(value: object) -> str:
    """A YAML scalar: plain where YAML reads it back as the same string, else quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if PLAIN.fullmatch(value) and value.lower() not in YAML_WORDS:
            return value
        return json.dumps(value)
    raise TypeError(f"no YAML for {type(value).__name__}")


def manifest(
    size: int,
    image: str = DEFAULT_IMAGE,
    name: str = DEFAULT_NAME,
    namespace: str = DEFAULT_NAMESPACE,
) -> str:
    """The MiniCluster as a YAML document, with a header saying what made it."""
    options = [f"minicluster {size}"]
    for option, value, default in (
        ("--image", image, DEFAULT_IMAGE),
        ("--name", name, DEFAULT_NAME),
        ("--namespace", namespace, DEFAULT_NAMESPACE),
    ):
        if value != default:
            options.append(f"{option} {value}")
    body = to_yaml(minicluster(size, image, name, namespace))
    return (
        f"# The conduit demo on a Flux instance of {size} pods, under the Flux Operator.\n"
        f"# Generated by `python3 -m conduit.testbed {' '.join(options)}`;"
        " see docs/kubernetes.md.\n"
        "# The image has its own flux-core, so the operator adds no Flux view\n"
        "# (flux.container.disable); the demo is the lead broker's initial program (launcher).\n"
        f"{body}\n"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `python3 -m conduit.testbed minicluster N`."""
    p.add_argument("pods", type=int, metavar="N", help="a MiniCluster of N pods that runs the demo")
    p.add_argument("--image", default=DEFAULT_IMAGE, help="the pods' image (%(default)s)")
    p.add_argument("--name", default=DEFAULT_NAME, help="the MiniCluster (%(default)s)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="its namespace (%(default)s)")


def run(args: argparse.Namespace) -> None:
    """Write the MiniCluster that `args` asks for to stdout.

    Raises:
        ValueError: a value Kubernetes would refuse (a usage error).
    """
    sys.stdout.write(manifest(args.pods, args.image, args.name, args.namespace))
