"""`xenlab hypervisor`: run the hypervisor service in the foreground."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from xenlab.osutil import die_with_parent, raise_fd_limit
from xenlab.hypervisor.config import DEFAULT_ADDRESS, HypervisorConfig, default_rundir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default=DEFAULT_ADDRESS, metavar="ADDR",
                        help=f"gRPC address, host:port or unix:PATH (default {DEFAULT_ADDRESS})")
    parser.add_argument("--rundir", type=Path, default=None,
                        help="where the address, Domain-0's secret, the doorbell socket and "
                             "logs go (default $XENLAB_RUNDIR or /tmp/xenlab-UID)")
    parser.add_argument("--shm-dir", type=Path, default=Path("/dev/shm"),
                        help="tmpfs directory for domain memory (default /dev/shm)")
    parser.add_argument("--memory", type=int, default=8192, metavar="MiB",
                        help="the emulated host's RAM (default 8192)")
    parser.add_argument("--launcher", choices=("local", "none"), default="local",
                        help="how created domains run (default local processes)")
    parser.add_argument("--max-domains", type=int, default=256)
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--die-with-parent", action="store_true",
                        help="exit when the process that started it exits (used by `xenlab up`)")


def config_from_args(args, env=None) -> HypervisorConfig:
    return HypervisorConfig(address=args.listen, rundir=args.rundir or default_rundir(env),
                            shm_dir=args.shm_dir, total_memory_mb=args.memory,
                            launcher=args.launcher, max_domains=args.max_domains,
                            log_level=args.log_level)


def run(args) -> int:
    from xenlab.hypervisor.server import serve

    raise_fd_limit()
    if args.die_with_parent:
        die_with_parent()
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s hypervisor %(levelname)s %(name)s: %(message)s")
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = config_from_args(args)
    try:
        asyncio.run(serve(config, ready=lambda s: print(
            f"xenlab hypervisor listening on {s.address}; rundir {s.hv.rundir.path}", flush=True)))
    except OSError as err:
        print(f"xenlab hypervisor: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xenlab hypervisor", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
