"""`xenlab dom0`: Domain-0's kernel, the driver domain of a lab.

The hypervisor creates Domain-0 in its table; this process is its kernel:
it authenticates with the secret the hypervisor left in the rundir, runs
netback for every vif whose backend is Domain-0, and hotplugs each vif into
its bridge through a veth pair (as vif-bridge does). When netback is
registered it writes /local/domain/0/data/netback = "ready".
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from xenlab.client import Rundir
from xenlab.hypervisor.launcher import StartInfo
from xenlab.osutil import die_with_parent, raise_fd_limit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rundir", type=Path, default=None,
                        help="the hypervisor's rundir (default $XENLAB_RUNDIR or /tmp/xenlab-UID)")
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--die-with-parent", action="store_true",
                        help="exit when the process that started it exits (used by `xenlab up`)")


def dom0_start_info(rundir: Rundir, vcpus: int = 1) -> StartInfo:
    return StartInfo(domid=0, name="Domain-0", secret=rundir.read_dom0_secret(),
                     hypervisor=rundir.read_address(), doorbell=str(rundir.doorbell),
                     vcpus=vcpus, console_log="")


def dom0_drivers(kernel) -> list:
    from xenlab.drivers.hotplug import BridgeHotplug
    from xenlab.drivers.netback import NetbackDriver
    def announce(name, device):
        for callback in kernel.on_netif_change:
            callback(name, device)
    return [NetbackDriver(kernel, BridgeHotplug(kernel.xenbus, kernel.domid, announce))]


async def _main(start: StartInfo) -> int:
    from xenlab.domain.kernel import DomainKernel

    kernel = DomainKernel(start, drivers=dom0_drivers)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, kernel.stop, "poweroff")
    kernel.on_boot.append(lambda: kernel.xenbus.write("data/netback", "ready"))
    reason = await kernel.run()
    return 0 if reason in ("poweroff", "reboot") else 1


def run(args) -> int:
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s dom0 %(levelname)s %(name)s: %(message)s")
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    raise_fd_limit()
    if args.die_with_parent:
        die_with_parent()
    try:
        start = dom0_start_info(Rundir(args.rundir), args.vcpus)
    except (FileNotFoundError, PermissionError) as err:
        print(f"xenlab dom0: {err}", file=sys.stderr)
        return 1
    return asyncio.run(_main(start))
