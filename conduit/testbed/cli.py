"""python3 -m conduit.testbed: the command line behind the Makefile's testbed targets.

    python3 -m conduit.testbed up --nodes 3          # what `make up` runs
    python3 -m conduit.testbed compose-file --size 16 --context ../.. > build/x/compose.yaml
    python3 -m conduit.testbed minicluster 3 > minicluster.yaml   # docs/kubernetes.md
    python3 -m conduit.testbed plot build/bench.json build/bench.png

Every failure is one line, `make <command>: <what is wrong and what to do>`,
and exit status 1 (usage errors: 2).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from conduit.testbed import composefile, image, minicluster
from conduit.testbed.composefile import DEFAULT_NODES, DEFAULT_SIZE, PROJECT
from conduit.testbed.engine import Engine, podman_socket
from conduit.testbed.errors import TestbedError
from conduit.testbed.lifecycle import Testbed, check_size
from conduit.testbed.paths import work_dir
from conduit.testbed.readiness import hostlist
from conduit.testbed.site import default_data, default_site


def parse_count(text: str | int, name: str, hint: str) -> int:
    """A number of nodes given as NAME=text, or a one-line TestbedError."""
    value = str(text).strip()
    if not value.isdigit() or int(value) < 1:
        raise TestbedError(f"{name}={text}: not a number of nodes; {hint}")
    return int(value)


def project_testbed(args: argparse.Namespace) -> Testbed:
    """The testbed of --project: its file and remembered size live in build/<project>/."""
    file = work_dir() / args.project / "compose.yaml"
    engine = Engine.named(args.engine, args.engine_socket)
    return Testbed(
        args.project, file, compose_command=args.compose.split(), image=args.image or None,
        engine=engine, data=Path(args.data or default_data()).absolute(),
        site=Path(args.site_config or default_site()).absolute(),
    )  # fmt: skip


def remembered_nodes(tb: Testbed) -> int | None:
    try:
        return int((tb.file.parent / "nodes").read_text())
    except (OSError, ValueError):
        return None


def remember_nodes(tb: Testbed, nodes: int) -> None:
    (tb.file.parent / "nodes").write_text(f"{nodes}\n")


def cmd_up(args: argparse.Namespace) -> None:
    nodes = parse_count(args.nodes, "NODES", "use NODES=1 or more") if args.nodes else None
    size = (
        parse_count(args.max_nodes, "MAX_NODES", "use MAX_NODES=NODES or more")
        if args.max_nodes
        else None
    )
    tb = project_testbed(args)
    if nodes is None:
        nodes = remembered_nodes(tb) or DEFAULT_NODES
    if size is None:
        size = max(tb.file_size() or DEFAULT_SIZE, nodes)
    check_size(nodes, size)  # before anything is written or asked of the engine
    fresh = not tb.file.parent.exists()
    try:
        ready = tb.up(nodes, size, args.timeout)
    finally:
        # Remember what runs, ready or not; a project that never started leaves nothing.
        if tb.compose.containers():
            remember_nodes(tb, nodes)
        elif fresh:
            shutil.rmtree(tb.file.parent, ignore_errors=True)
    tb.say(ready.line())
    tb.compose.run("exec", "-T", "node0", "flux", "resource", "list", show=True, check=False)


def cmd_scale(args: argparse.Namespace) -> None:
    if not args.nodes:
        raise TestbedError("give the number of nodes: make scale NODES=N")
    nodes = parse_count(args.nodes, "NODES", "use NODES=1 or more")
    tb = project_testbed(args)
    ready = tb.scale(nodes, args.timeout)
    remember_nodes(tb, nodes)
    tb.say(ready.line())


def cmd_restart(args: argparse.Namespace) -> None:
    tb = project_testbed(args)
    tb.say(tb.restart(args.timeout).line())


def cmd_status(args: argparse.Namespace) -> None:
    tb = project_testbed(args)
    nodes = remembered_nodes(tb)
    probe = tb.probe() if nodes else None
    if nodes is None or probe is None:
        raise TestbedError(f"no running testbed {args.project}; `make up` starts one")
    line = f"{args.project}: {probe.describe(nodes)}"
    if probe.size > nodes:
        line += f"; {hostlist(range(nodes, probe.size))} not started"
    tb.say(line)


def cmd_running(args: argparse.Namespace) -> None:
    project_testbed(args).require_running()


def cmd_stop(args: argparse.Namespace) -> None:
    project_testbed(args).stop()


def cmd_down(args: argparse.Namespace) -> None:
    tb = project_testbed(args)
    if not tb.file.exists():
        tb.file = image.build_context() / "compose.yaml"  # nothing remembered: remove it all
    tb.down(keep_state=args.keep_state)
    if args.keep_state:
        tb.say(
            f"down: removed the containers of {args.project}; kept its volumes "
            "(the certificate, and rank 0's state: the KVS); `make up` starts it again"
        )
    else:
        shutil.rmtree(work_dir() / args.project, ignore_errors=True)
        tb.say(
            f"down: removed {args.project}: its containers, network and volumes "
            "(the certificate, and rank 0's state: the KVS and job history)"
        )


def cmd_compose_file(args: argparse.Namespace) -> None:
    size = parse_count(args.size, "size", "use --size 1 or more")
    sys.stdout.write(composefile.compose_yaml(size, args.context))


def cmd_image_tag(args: argparse.Namespace) -> None:
    print(image.image_tag())


def cmd_defaults(args: argparse.Namespace) -> None:
    print(f"NODES={DEFAULT_NODES} MAX_NODES={DEFAULT_SIZE}")


def cmd_engine_env(args: argparse.Namespace) -> None:
    """DOCKER_HOST=... for compose's exec and logs on ENGINE (none for Docker), for the Makefile.

    Podman's service is started if none answers, as for `up`, so that `make
    demo`, `make logs` and `make shell` find it (it exits when idle).
    """
    engine = Engine.named(args.engine, args.engine_socket)
    engine.ensure_service(lambda line: print(line, file=sys.stderr, flush=True))
    env = engine.env()
    print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k == "DOCKER_HOST"))


def cmd_socket(args: argparse.Namespace) -> None:
    print(Engine.named(args.engine, args.engine_socket).api_socket)


def cmd_service(args: argparse.Namespace) -> None:
    engine = Engine.named(args.engine, args.engine_socket)
    if engine.name != "podman":
        raise TestbedError("the engine service is Podman's: give --engine podman")
    engine.ensure_service(print)
    print(f"Podman's API service answers on {engine.api_socket}")


def cmd_minicluster(args: argparse.Namespace) -> None:
    minicluster.run(args)


def cmd_plot(args: argparse.Namespace) -> None:
    from conduit.testbed import plot  # matplotlib is imported only here

    plot.main(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m conduit.testbed",
        description="The host side of flux-conduit: the compose testbed behind `make up` and "
        "friends, the Kubernetes manifest, and the bench plot.",
    )
    p.add_argument("--project", default=PROJECT, help="the compose project (PROJECT)")
    p.add_argument("--compose", default="docker compose", help="the compose command (COMPOSE)")
    p.add_argument("--image", default="", help="run this published image instead of building")
    p.add_argument("--engine", default="docker", help="docker or podman (ENGINE)")
    p.add_argument(
        "--engine-socket",
        default="",
        help="the engine's API socket (ENGINE_SOCKET; default: Docker's, or Podman's own "
        f"for the testbed, {podman_socket()})",
    )
    p.add_argument(
        "--data", default="", help="the shared directory, /data on every node (DATA; default data/)"
    )
    p.add_argument(
        "--site-config",
        default="",
        help="the site's broker config files, *.toml (SITE_CONFIG; default docker/site.d/)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: object, help: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help, description=help)
        q.set_defaults(func=run)
        return q

    def timeout(q: argparse.ArgumentParser) -> None:
        q.add_argument("--timeout", type=float, default=300, help="seconds to wait for ready")

    q = command("up", cmd_up, "build if needed, start NODES nodes, wait until ready")
    q.add_argument(
        "--nodes", default="", help=f"nodes to run (default: remembered, else {DEFAULT_NODES})"
    )
    q.add_argument(
        "--max-nodes", default="", help=f"the instance size (default: {DEFAULT_SIZE} or NODES)"
    )
    timeout(q)
    q = command("scale", cmd_scale, "start or stop nodes of the running instance")
    q.add_argument("--nodes", default="", help="nodes to run")
    timeout(q)
    timeout(command("restart", cmd_restart, "restart every node, rank 0 included; state is kept"))
    command("status", cmd_status, "brokers online and resources up")
    q = command("running", cmd_running, "exit 1, with one line, unless the testbed runs")
    q.add_argument("target", help="the make target that needs it, for the message")
    command("stop", cmd_stop, "stop the containers; `up` starts them again")
    q = command("down", cmd_down, "remove the containers, the network and the volumes")
    q.add_argument("--keep-state", action="store_true", help="keep the volumes")
    q = command("compose-file", cmd_compose_file, "print the compose file of an instance of SIZE")
    q.add_argument("--size", default=str(DEFAULT_SIZE), help="brokers the instance holds")
    q.add_argument(
        "--context", default=".", help="the repository root, relative to where the file goes"
    )
    command("image-tag", cmd_image_tag, "the image tag of this tree")
    command("defaults", cmd_defaults, "the default NODES and MAX_NODES")
    command("engine-env", cmd_engine_env, "the environment compose needs for the engine")
    command("socket", cmd_socket, "the engine's API socket")
    command("service", cmd_service, "Podman: start its API service unless one answers")
    q = command(
        "minicluster", cmd_minicluster, "write a Flux Operator MiniCluster that runs the demo"
    )
    minicluster.add_arguments(q)
    q = command("plot", cmd_plot, "draw a bench --json file as a PNG (needs matplotlib)")
    q.add_argument("results", help="bench results (JSON)")
    q.add_argument("png", help="output image")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        args.func(args)
    except ValueError as exc:  # a value the command refuses: a usage error
        p.error(f"{args.command}: {exc}")
    except TestbedError as exc:
        print(f"make {getattr(args, 'target', None) or args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
