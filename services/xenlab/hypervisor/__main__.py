"""`xenlab hypervisor`: run the hypervisor service in the foreground."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from xenlab import eventloop
from xenlab.events import config as events_config
from xenlab.events.sources import HypervisorSource, service_events
from xenlab.hypervisor import page_sharing
from xenlab.hypervisor.config import DEFAULT_ADDRESS, HypervisorConfig
from xenlab.hypervisor.server import serve
from xenlab.launchers import NAMES as LAUNCHERS, docker as docker_launcher
from xenlab.launchers.domains_dir import add_domain_uids_argument, parse_domain_uids
from xenlab.osutil import die_with_parent, raise_fd_limit
from xenlab.rundir import default_rundir
from xenlab.toolstack.toolstack import Toolstack
from xenlab.xen.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", action="append", default=None, metavar="ADDR",
                        help=f"gRPC address, host:port or unix:PATH (default {DEFAULT_ADDRESS}); "
                             f"repeat to serve several: the first is the one the rundir "
                             f"publishes to the toolstack and Domain-0 (the swarm stack "
                             f"gives unix:RUNDIR/hv.sock, then 0.0.0.0:PORT for the node)")
    parser.add_argument("--rundir", type=Path, default=None,
                        help="where the address, Domain-0's secret, the doorbell socket and "
                             "logs go (default $XENLAB_RUNDIR, else $XDG_RUNTIME_DIR/xenlab, "
                             "else /tmp/xenlab-UID)")
    parser.add_argument("--shm-dir", type=Path, default=Path("/dev/shm"),
                        help="tmpfs directory for domain memory (default /dev/shm)")
    parser.add_argument("--memory", type=int, default=8192, metavar="MiB",
                        help="the emulated host's RAM (default 8192)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="how created domains run (default local processes)")
    parser.add_argument("--max-domains", type=int, default=HypervisorConfig.max_domains, metavar="N",
                        help="domains the host may run at once, Domain-0 included; `xl create` "
                             "past it fails with ENOSPC (default %(default)s)")
    add_domain_uids_argument(parser)
    parser.add_argument("--domains-dir", type=Path, default=None, metavar="DIR",
                        help="with domain uids: the directory domains reach the hypervisor "
                             "through (its sockets for domains, a directory per domain), "
                             "made if missing (default: a fresh one in TMPDIR). The docker "
                             "launcher needs one, mounted into every domain (--docker-volume)")
    parser.add_argument("--page-sharing", choices=page_sharing.MODES, default="auto",
                        help="identical pages of the local domains shared by the kernel's "
                             "samepage merging (KSM): auto offers them and leaves ksmd as the "
                             "host has it; on also starts ksmd if it is stopped (root) and "
                             "stops it again at exit; off offers nothing (default auto)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="how much the hypervisor logs (default INFO)")
    parser.add_argument("--die-with-parent", action="store_true",
                        help="exit when the process that started it exits (used by `xenlab up`)")
    events_config.add_arguments(parser)
    docker_launcher.add_arguments(parser)


def config_from_args(args, env=None) -> HypervisorConfig:
    first, *others = args.listen or [DEFAULT_ADDRESS]
    return HypervisorConfig(address=first, also_listen=tuple(others),
                            rundir=args.rundir or default_rundir(env), shm_dir=args.shm_dir,
                            total_memory_mb=args.memory,
                            launcher=args.launcher, max_domains=args.max_domains,
                            log_level=args.log_level, docker=docker_launcher.config_from_args(args),
                            domain_uids=parse_domain_uids(args.domain_uids),
                            domains_dir=args.domains_dir, page_sharing=args.page_sharing)


def run(args) -> int:
    raise_fd_limit()
    if args.die_with_parent:
        die_with_parent()
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s hypervisor %(levelname)s %(name)s: %(message)s")
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = config_from_args(args)
    try:
        if config.domains_dir is not None and config.domain_uids is None:
            raise ValueError("--domains-dir needs domain uids (--domain-uids; root): without "
                             "them domains use the rundir")
        if config.launcher == "docker":
            docker_launcher.check_config(config.docker, config.domain_uids, config.domains_dir,
                                         private=(Path(config.rundir), Path(config.shm_dir)))
    except ValueError as err:
        print(f"xenlab hypervisor: {err}", file=sys.stderr)
        return 2
    try:
        events = events_config.config_from_args(args)
    except ConfigError as err:
        print(f"xenlab hypervisor: {err.message}", file=sys.stderr)
        return 2
    try:
        eventloop.run(_serve(config, events), full_gc_interval=eventloop.FULL_COLLECTION_INTERVAL)
    except OSError as err:
        print(f"xenlab hypervisor: {err}", file=sys.stderr)
        return 1
    return 0


async def _serve(config: HypervisorConfig, events) -> None:
    async with service_events(events, "hypervisor") as ev:
        def ready(s) -> None:
            print(f"xenlab hypervisor listening on {s.address}; rundir {s.hv.rundir.path}", flush=True)
            if ev is not None:
                ev.add(HypervisorSource(s.hv, s.toolstack, ev.publisher))
        await serve(config, Toolstack, ready=ready, events=ev.hub if ev is not None else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xenlab hypervisor", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
