"""The `xenlab` command. The only place the CLI reads the environment:
everything below gets its settings passed in."""
from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Mapping, Sequence

from xenlab.osutil import exec_only_forks
from xenlab.rundir import default_rundir

# Commands that live in other packages: name -> (module, one-line help).
# Each module has add_arguments(parser) and run(args) -> int ("module:NAME":
# NAME_arguments(parser) and NAME(args) instead); it is imported only when its
# command runs, so one missing module breaks only itself.
DELEGATES = {
    "hypervisor": ("xenlab.hypervisor.__main__", "run the hypervisor service in the foreground"),
    "domain": ("xenlab.boot.domu", "run one domain's kernel (what a launcher starts)"),
    "demo": ("xenlab.cli.demo", "run the demo lab: ping mesh, FDB and counters, then stop"),
    "tour": ("xenlab.cli.tour", "a tour of the hypervisor alone: domains, balloon, event channels, grants"),
    "bridge-service": ("xenlab.bridge.__main__", "run the bridge service (xenbr0) in the foreground"),
    "ping": ("xenlab.cli.ping", "ping from inside a domain, through its guest agent"),
    "perf": ("xenlab.cli.perf", "a UDP test between two domains, as iperf -u: rate, loss and jitter"),
    "dom0": ("xenlab.boot.dom0", "run Domain-0's kernel: netback and its hotplug to the bridges"),
    "capture": ("xenlab.cli.capture:capture", "capture frames at a point of the lab into a pcap file"),
    "inject": ("xenlab.cli.capture:inject", "inject frames (from a pcap file or generated) at a point of the lab"),
    "up": ("xenlab.cli.lab:up", "start a lab (the demo lab when no file is given) and keep it up"),
    "down": ("xenlab.cli.lab:down", "stop the lab that `xenlab up` runs"),
    "status": ("xenlab.cli.lab:status", "show what a lab runs"),
    "swarm-stack": ("xenlab.lab.swarm", "write the Docker Swarm stack file of a pool of hosts (docs/SWARM.md)"),
    "soak": ("xenlab.lab.soak", "run a lab under traffic and faults, then check every frame is accounted for"),
    "hostile-soak": ("xenlab.lab.hostile", "one domU runs every known flood while two others ping: RTT, failures, memory"),
    "bench": ("xenlab.bench.__main__", "measure throughput, latency and scale, side by side with the Linux kernel bridge"),
    "web": ("xenlab.cli.web", "serve a live web view of the running lab (topology, rates, FDB, events)"),
    "graph": ("xenlab.cli.graph", "draw the running lab's topology as Graphviz dot or Mermaid"),
    "events": ("xenlab.cli.events", "print a lab's events as they arrive, from MQTT or gRPC (docs/EVENTS.md)"),
    "healthcheck": ("xenlab.cli.healthcheck", "exit 0 when gRPC servers, a broker, xenstore nodes or vifs are healthy"),
    "mqtt-broker": ("xenlab.events.broker", "run an MQTT broker for a lab's events (amqtt or mosquitto)"),
    "bridge": ("xenlab.cli.bridge:bridge_main", "show and change the lab's bridges, as iproute2's bridge(8)"),
    "brctl": ("xenlab.cli.bridge:brctl_main", "show the lab's bridges, as brctl(8)"),
    "ip": ("xenlab.cli.ip:ip_main", "show and set a domain's links up or down, as iproute2's ip-link(8)"),
    "tc": ("xenlab.cli.tc:tc_main", "shape a lab's links: netem on vifs, veths and bridge ports, as tc(8)"),
    "spin": ("xenlab.cli.spin", "keep a domain's vCPUs busy for a while (a CPU-bound guest workload)"),
    "xentop": ("xenlab.cli.xl:xentop", "monitor the domains, as xentop: CPU, memory, vCPUs, network"),
}
# Delegates that parse their own command line, as the tools they mirror do
# (`bridge -j fdb show`): entry(argv, env) -> int.
RAW_ARGV = {"bridge", "brctl", "ip", "tc"}
TOOLSTACK = {
    "xl": "the toolstack: create, list, destroy... domains, as xl(1)",
    "xenstore": "read, write and watch xenstore, as the xenstore-* tools",
}


def version() -> str:
    """The installed package's version, as pip shows it."""
    from importlib.metadata import PackageNotFoundError, version as installed  # lazy: only for --version
    try:
        return installed("xenlab")
    except PackageNotFoundError:
        return "(not installed: run from a source tree)"


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS: an option given at one level must not be reset by the
    # default of the level below it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--rundir", type=Path, default=argparse.SUPPRESS,
                        help="the hypervisor's rundir (default $XENLAB_RUNDIR, else "
                             "$XDG_RUNTIME_DIR/xenlab, else /tmp/xenlab-UID)")
    common.add_argument("--hypervisor", metavar="ADDR", default=argparse.SUPPRESS,
                        help="the hypervisor's gRPC address (default: read from the rundir)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")
    return common


def build_parser() -> argparse.ArgumentParser:
    from xenlab.cli import xenstore, xl  # lazy: `xenlab up` and the other delegated commands start without grpc

    parser = argparse.ArgumentParser(
        prog="xenlab", description="A networked emulation of a Xen host.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"xenlab {version()}",
                        help="print xenlab's version (the installed package's) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in DELEGATES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    common = _common_options()
    for name, module in (("xl", xl), ("xenstore", xenstore)):
        p = sub.add_parser(name, help=TOOLSTACK[name], description=TOOLSTACK[name].capitalize() + ".",
                           parents=[common])
        module.add_arguments(p, parents=(common,))
    return parser


def _delegated(argv: Sequence[str]) -> int | None:
    """The index of a delegated command in argv, if that is the command."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return i if arg in DELEGATES else None
    return None


def run_delegate(name: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
    module_name, help_text = DELEGATES[name]
    module_name, _, entry = module_name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        print(f"xenlab {name}: not available: {err}", file=sys.stderr)
        return 1
    if name in RAW_ARGV:
        return int(getattr(module, entry)(list(argv), env) or 0)
    add_arguments = getattr(module, f"{entry}_arguments" if entry else "add_arguments")
    run = getattr(module, entry or "run")
    parser = argparse.ArgumentParser(prog=f"xenlab {name}",
                                     description=help_text[0].upper() + help_text[1:] + ".")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if getattr(args, "rundir", ...) is None:
        args.rundir = default_rundir(env)
    if hasattr(args, "rundir"):
        # Hints name --rundir only when it is not this one.
        args.default_rundir = default_rundir(env)
    result = run(args)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return int(result or 0)


def _setup_logging(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(level=logging.DEBUG,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:
        return _main(argv, env)
    except BrokenPipeError:
        # `xenlab status | head`: the reader left. Say nothing more (the
        # interpreter's own flush at exit would raise again) and exit as a
        # command that SIGPIPE ended.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _main(argv: Sequence[str] | None, env: Mapping[str, str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    exec_only_forks()
    parser = build_parser()
    at = _delegated(argv)
    if at is not None:
        args = parser.parse_args(argv[:at + 1])
        _setup_logging(args.verbose)
        return run_delegate(argv[at], argv[at + 1:], env)

    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from xenlab.cli import xenstore, xl  # lazy: as in build_parser

    toolstack = xl.Toolstack(rundir=getattr(args, "rundir", None) or default_rundir(env),
                             address=getattr(args, "hypervisor", None))
    module = xl if args.command == "xl" else xenstore
    return module.run(args, toolstack)


if __name__ == "__main__":
    sys.exit(main())
