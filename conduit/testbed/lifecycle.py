"""The testbed's life cycle behind `make up`, `scale`, `restart`, `status`, `stop` and `down`.

- **Size and nodes.** An instance's size is fixed when rank 0 starts, so it
  is made for SIZE brokers (Flux's advice for elasticity: define the larger
  instance, start brokers as needed) and NODES of them run.  `scale` starts
  or stops nodes of the running instance without restarting it.
- **Ready** (conduit.testbed.readiness) means every started broker is
  online and every started node's resources are up.
- **Repeatable.** `up` of an unchanged tree recreates nothing (the image tag
  is a hash of its build inputs, conduit.testbed.image); where a change
  needs new containers, it says so before the instance is replaced.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conduit.testbed import composefile, image, readiness
from conduit.testbed.compose import STOP_TIMEOUT, Compose, _say
from conduit.testbed.engine import Engine
from conduit.testbed.errors import TestbedError
from conduit.testbed.image import build_context, short_ref
from conduit.testbed.site import (
    check_site,
    default_data,
    default_site,
    prepare_data,
    site_files,
    site_hash,
)


def check_size(nodes: int, size: int) -> None:
    """NODES must fit in the instance (MAX_NODES), or a one-line TestbedError."""
    if nodes > size:
        raise TestbedError(
            f"NODES={nodes} is more than MAX_NODES={size}; give MAX_NODES={nodes} or more"
        )


def node_index(service: str) -> int | None:
    """k for service nodeK, None for another service."""
    found = re.fullmatch(r"node(\d+)", service)
    return int(found.group(1)) if found else None


@dataclass
class Testbed:
    """One compose project of the testbed: `COMPOSE -p project -f file`."""

    __test__ = False  # not a pytest test class, whatever its name

    project: str
    file: Path
    compose_command: Sequence[str] = ("docker", "compose")
    image: str | None = None  # a published image to run; None: build flux-conduit:<hash>
    say: Callable[[str], None] = _say
    quiet: bool = False  # capture the output of builds and `up` instead of showing it
    engine: Engine = Engine()
    data: Path = field(default_factory=default_data)  # /data on every node (DATA)
    site: Path = field(default_factory=default_site)  # /etc/flux/site (SITE_CONFIG)

    @functools.cached_property
    def image_ref(self) -> str:
        """The image the nodes run: IMAGE, or this tree's flux-conduit:<hash>."""
        return self.image or image.image_tag()

    @functools.cached_property
    def compose(self) -> Compose:
        """The one runner of this project's compose commands."""
        return Compose(
            self.project,
            self.file,
            self.image_ref,
            self.compose_command,
            self.engine,
            self.say,
            self.quiet,
            self.variables,
        )

    def variables(self) -> dict[str, str]:
        """The compose file's variables for the shared directory and the site config."""
        return {
            "CONDUIT_DATA": str(self.data.resolve()),
            "CONDUIT_SITE": str(self.site.resolve()),
            "CONDUIT_SITE_HASH": site_hash(self.site),
        }

    def ensure_image(self) -> str:
        """The image the nodes run, pulled (IMAGE) or built if the engine lacks it."""
        return image.ensure_image(self.compose, self.image_ref, published=bool(self.image))

    def is_running(self) -> bool:
        """Whether node0 of this project runs."""
        return "node0" in self.compose.running()

    def require_running(self) -> None:
        """A one-line TestbedError unless this project's node0 runs."""
        if not self.is_running():
            raise TestbedError(
                f"no testbed {self.project} is running; `make up` starts one "
                "(PROJECT= names another)"
            )

    def running_jobs(self) -> int:
        done = self.compose.run(
            "exec", "-T", "node0", "flux", "jobs", "--no-header", "--filter=running",
            "--format={id}", check=False, timeout=30,
        )  # fmt: skip
        return len(done.stdout.split()) if done.returncode == 0 else 0

    def will_recreate(self, services: Sequence[str], image_ref: str) -> list[str]:
        """The existing containers that `up` of these services would recreate (compose dry run)."""
        done = self.compose.run(
            "--dry-run", "up", "--detach", "--no-build", *services,
            check=False, timeout=120, image=image_ref,
        )  # fmt: skip
        names = re.findall(r"Container (\S+)\s+Recreate\b", done.stdout + done.stderr)
        return sorted(set(names))

    def write_file(self, size: int) -> None:
        """This project's compose file for `size` brokers, written whole."""
        context = os.path.relpath(build_context(), self.file.parent)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        new = self.file.with_name(self.file.name + ".new")
        new.write_text(composefile.compose_yaml(size, context=context))
        new.replace(self.file)

    def file_size(self) -> int | None:
        """The instance size this project's file was written for."""
        return composefile.file_size(self.file)

    def announce_replacement(
        self,
        before: dict[str, dict[str, str]],
        replaced: list[str],
        old_size: int | None,
        size: int,
        image_ref: str,
    ) -> None:
        """Say why `up` replaces a running instance, and what that costs, before it does."""
        old_image = short_ref(str(before.get("node0", {}).get("Image", "")))
        why = []
        if old_size not in (None, size):
            why.append(f"size {old_size} -> {size}")
        if old_image and old_image != image_ref:
            why.append(f"image {old_image} -> {image_ref}")
        if self.compose.container_env("node0", "SITE_HASH") not in (
            None,
            site_hash(self.site),
        ):
            why.append(f"the site config in {self.site} changed")
        self.say(
            f"up: replacing the running instance {self.project} "
            f"({', '.join(why) or 'its compose file changed'}): "
            f"{len(replaced)} containers are recreated, its running jobs "
            f"({self.running_jobs()}) end, the KVS in its state volume is kept"
        )

    def up(self, nodes: int, size: int, timeout: float) -> readiness.Ready:
        """Start (or keep) an instance of `size` with node0 .. node<nodes-1> running."""
        check_size(nodes, size)
        no_dns = self.engine.missing_dns()
        if no_dns:
            raise TestbedError(no_dns)
        before = self.compose.containers()
        services = [f"node{k}" for k in range(nodes)] + ["watchdog"]
        old_size = self.file_size() if before else None
        prepare_data(self.data)
        self.write_file(size)
        image_ref = self.ensure_image()
        check_site(self.compose, self.site, image_ref, size)
        if before:
            replaced = self.will_recreate(services, image_ref)
            if replaced and any(e.get("State") == "running" for e in before.values()):
                self.announce_replacement(before, replaced, old_size, size, image_ref)
        ready = self.start_nodes(nodes, image_ref, timeout, ["--remove-orphans", *services])
        if site_files(self.site):  # named queues start stopped; a site's admin starts them
            self.compose.run("exec", "-T", "node0", "flux", "queue", "start", "--all", check=False)
        return ready

    def scale(self, nodes: int, timeout: float) -> readiness.Ready:
        """Start or stop nodes of the running instance, without restarting it."""
        running = self.compose.running()
        if "node0" not in running:
            raise TestbedError(
                f"no running testbed {self.project}; `make up NODES={nodes}` starts one"
            )
        size = self.file_size() or 0
        if nodes > size:
            raise TestbedError(
                f"NODES={nodes}: this instance holds at most {size} nodes; "
                f"`make up NODES={nodes}` makes a new one (its running jobs end)"
            )
        image_ref = str(running["node0"]["Image"])  # what runs, whatever the tree says
        new = [f"node{k}" for k in range(nodes)]
        return self.start_nodes(nodes, image_ref, timeout, ["--no-recreate", *new])

    def start_nodes(
        self, nodes: int, image_ref: str, timeout: float, up_args: Sequence[str]
    ) -> readiness.Ready:
        """What up and scale share: stop the nodes past `nodes`, `up` the rest, wait for ready."""
        start = time.monotonic()
        indices = {s: node_index(s) for s in self.compose.containers()}
        extra = [s for s, k in indices.items() if k is not None and k >= nodes]
        if extra:
            self.compose.run("rm", "--stop", "--force", *extra, timeout=180, show=True)
        self.compose.run(
            "up", "--detach", "--no-build", *up_args, timeout=timeout, show=True, image=image_ref
        )
        return self.wait_ready(nodes, timeout, start)

    def wait_ready(self, nodes: int, timeout: float, start: float | None = None) -> readiness.Ready:
        """Until node0 .. node<nodes-1> are online with their resources up."""
        return readiness.wait_ready(self.compose, nodes, timeout, start)

    def probe(self) -> readiness.Probe | None:
        """One look at the instance from node0 (None while it does not answer)."""
        return readiness.probe(self.compose)

    def started_nodes(self) -> int:
        """How many of node0 .. node<k> have a container (stopped or not)."""
        ks = {node_index(s) for s in self.compose.containers()}
        k = 0
        while k in ks:
            k += 1
        return k

    def restart(self, timeout: float) -> readiness.Ready:
        """Restart every node, rank 0 included; its state is kept."""
        nodes = self.started_nodes()
        if nodes == 0:
            raise TestbedError(f"no testbed {self.project}; `make up` starts one")
        node0 = self.compose.running().get("node0")
        if node0:  # the brokers read the site config again as they start
            check_site(self.compose, self.site, str(node0["Image"]), self.file_size() or nodes)
        start = time.monotonic()
        # The timeout is explicit: Podman's Docker API kills at once on a restart
        # without one, where Docker waits stop_grace_period; rank 0 would not dump.
        self.compose.run("restart", "--timeout", STOP_TIMEOUT, timeout=300, show=True)
        return self.wait_ready(nodes, timeout, start)

    def stop(self) -> None:
        """Stop the containers, keeping everything; `up` starts them again."""
        self.compose.run("stop", "--timeout", STOP_TIMEOUT, timeout=300, show=True)

    def down(self, keep_state: bool = False) -> None:
        """Remove the containers and network, and the volumes unless `keep_state`."""
        self.compose.down(keep_state)
