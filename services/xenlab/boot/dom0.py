"""`xenlab dom0`: Domain-0's kernel, the driver domain of a lab.

The hypervisor creates Domain-0 in its table; this process is its kernel:
it authenticates with the secret the hypervisor left in the rundir, runs
netback for every vif whose backend is Domain-0, and hotplugs each vif into
its bridge through a veth pair (as vif-bridge does). When netback is
registered it writes /local/domain/0/data/netback = "ready".
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from xenlab import eventloop
from xenlab.client import Rundir
from xenlab.domain.agent import start_guest_agent
from xenlab.domain.hypercall import Hypercalls
from xenlab.domain.kernel import DomainKernel
from xenlab.drivers.hotplug import BridgeHotplug
from xenlab.drivers.netback import NetbackDriver
from xenlab.events import config as events_config
from xenlab.events import server as events_server
from xenlab.events.sources import Dom0Source, service_events
from xenlab.osutil import die_with_parent, on_stop_signal, raise_fd_limit
from xenlab.xen.errors import ConfigError, XenError
from xenlab.xen.start_info import StartInfo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rundir", type=Path, default=None,
                        help="the hypervisor's rundir (default $XENLAB_RUNDIR, else "
                             "$XDG_RUNTIME_DIR/xenlab, else /tmp/xenlab-UID)")
    parser.add_argument("--vcpus", type=int, default=0, metavar="N",
                        help="Domain-0's vCPUs, as its start_info gives them (default: as many "
                             "as the hypervisor gave Domain-0, its cpu/N nodes)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="how much Domain-0's kernel logs (default INFO)")
    parser.add_argument("--die-with-parent", action="store_true",
                        help="exit when the process that started it exits (used by `xenlab up`)")
    events_config.add_arguments(parser)


def dom0_start_info(rundir: Rundir, vcpus: int = 0) -> StartInfo:
    """Domain-0's xenbus reaches xenstored on its socket, where one listens
    (the hypervisor's rundir is Domain-0's own), as Xen's tools in Domain-0 do."""
    xenstored = rundir.xenstored_socket
    return StartInfo(domid=0, name="Domain-0", secret=rundir.read_dom0_secret(),
                     hypervisor=rundir.read_address(), doorbell=str(rundir.doorbell),
                     vcpus=vcpus, console_log="",
                     xenstored=str(xenstored) if xenstored.exists() else "")


def dom0_drivers(kernel: DomainKernel) -> list:
    """netback, each vif hotplugged into its bridge through a veth pair."""
    return [NetbackDriver(kernel, BridgeHotplug(kernel.xenbus, kernel.domid,
                                                kernel.netif_changed))]


async def reset_previous_kernel(start: StartInfo) -> None:
    """A Domain-0 kernel that ran before this one and died may have left
    grant mappings, event channels and backends marked Connected behind:
    have the toolstack clear them (Domains.BackendGone) before netback probes
    the backends, so that their frontends start over. Nothing to do on a
    fresh host."""
    hypercall = Hypercalls.connect(start.hypervisor, 0, start.secret)
    try:
        reply = await hypercall.domains.backend_gone(0)
    finally:
        await hypercall.close()
    if reply.closed or reply.unmapped or reply.ports:
        logging.getLogger(__name__).warning(
            "a previous Domain-0 kernel left %d backend(s), %d mapping(s), %d port(s): "
            "reset%s", len(reply.closed), reply.unmapped, reply.ports,
            f"; frontends not Closed yet: {', '.join(reply.stuck)}" if reply.stuck else "")


async def dom0_vcpus(start: StartInfo) -> int:
    """How many vCPUs the hypervisor gave Domain-0: the cpu/N nodes the
    toolstack wrote for it (one thread each: xenlab.domain.vcpus)."""
    hypercall = Hypercalls.connect(start.hypervisor, 0, start.secret)
    try:
        return len(await hypercall.xenstore.directory("/local/domain/0/cpu")) or 1
    except XenError:
        return 1
    finally:
        await hypercall.close()


async def _main(start: StartInfo, events=None) -> int:
    if start.vcpus <= 0:
        start = dataclasses.replace(start, vcpus=await dom0_vcpus(start))
    await reset_previous_kernel(start)
    async with service_events(events, "dom0") as ev:
        # The per-vif counters stream beside the agent, behind its token, as
        # the hypervisor's and the bridges' events stream on their servers.
        services = [(events_server.register(ev.hub), events_server.SERVICE_NAME)] \
            if ev is not None else []
        kernel = DomainKernel(start, drivers=dom0_drivers,
                              agent=lambda k: start_guest_agent(k, services))
        on_stop_signal(kernel.stop, "poweroff")
        kernel.on_boot.append(lambda: kernel.xenbus.write("data/netback", "ready"))
        if ev is not None:
            async def publish_vif_counters() -> None:
                ev.add(Dom0Source(kernel, ev.publisher, events.interval))
            kernel.on_boot.append(publish_vif_counters)
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
        events = events_config.config_from_args(args)
        start = dom0_start_info(Rundir(args.rundir), args.vcpus)
    except (FileNotFoundError, PermissionError) as err:
        print(f"xenlab dom0: {err}", file=sys.stderr)
        return 1
    except ConfigError as err:
        print(f"xenlab dom0: {err.message}", file=sys.stderr)
        return 2
    return eventloop.run(_main(start, events), full_gc_interval=eventloop.FULL_COLLECTION_INTERVAL)
