"""`xenlab domain` (`python -m xenlab.boot.domu`): a domain process: its
kernel, netfront and the guest agent. Its start_info (domain id, secret,
hypervisor address) arrives as one JSON line on standard input, as the
launcher writes it.

Everything the kernel will run is imported here, at the top, before the
process gives up its launcher's rights: once it is the domain's own uid it
may not be able to read the interpreter's files (a Python under /root, say).
"""
from __future__ import annotations

import argparse
import logging
import sys

from xenlab import eventloop
from xenlab.domain.agent import start_guest_agent
from xenlab.domain.console import log_to_console
from xenlab.domain.getty import ConsoleShell
from xenlab.domain.evtchn import greet
from xenlab.domain.kernel import DomainKernel
from xenlab.domain.memory import map_memory_object, map_paging_pool
from xenlab.drivers.netfront import NetfrontDriver
from xenlab.osutil import die_with_parent, drop_privileges, on_stop_signal
from xenlab.xen import doorbell as wire
from xenlab.xen.errors import XenError
from xenlab.xen.paging import PagingMode
from xenlab.xen.start_info import StartInfo

# Seconds a domU's connection to the hypervisor stays open with no
# hypercall in flight. Once booted with a doorbell, a domU's xenstore and
# upcalls take its store ring and doorbell, and gRPC carries only
# occasional hypercalls (grant maps, event-channel binds, the balloon); an
# open channel keeps grpc-core's threads waking the process several times a
# second. 5 s spans a boot's or a burst's back-to-back calls, so that they
# share one connection, and makes reconnecting (a unix socket and an HTTP/2
# handshake: under a millisecond more than a call on an open connection)
# rare. Domain-0 keeps its channel open: it is one process, not one per
# guest, and its netback maps buffer pages as traffic first uses them.
HYPERVISOR_IDLE_CLOSE = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="how much the domain's kernel logs to its console (default INFO)")
    parser.add_argument("--start-info", default="-", metavar="FILE",
                        help="start_info JSON (default: one line on standard input)")
    parser.add_argument("--orphan-ok", action="store_true",
                        help="keep running if the process that started it exits")


def domu_drivers(kernel: DomainKernel) -> list:
    """netfront, in every domain but Domain-0 (whose netback is boot.dom0's)."""
    return [NetfrontDriver(kernel)] if kernel.domid != 0 else []


class NoMemory(Exception):
    """The domain could not take its memory object."""


def _enter_domain(start: StartInfo):
    """Map the memory object the launcher handed over, or (a launcher that
    cannot hand descriptors over: a container) the one the doorbell's OK
    brings, and, in shadow or HAP mode, the paging pool (read-only, always
    from the doorbell's OK); then become the domain's own uid for good,
    before anything untrusted is read. Returns the memory mapping (None: the
    kernel opens its segment by path), the paging pool's mapping (None in
    direct mode) and the greeted doorbell connection, if any."""
    doorbell = None
    flags = wire.HELLO_CHANNELS
    if PagingMode(start.paging_mode) is not PagingMode.DIRECT:
        flags |= wire.HELLO_PAGING
    if start.memory_fd < 0:
        flags |= wire.HELLO_MEMORY
    where = start.doorbell_fd if start.doorbell_fd >= 0 else start.doorbell
    handed = None
    if flags & (wire.HELLO_MEMORY | wire.HELLO_PAGING) and where != "":
        try:
            doorbell, handed = greet(where, start.domid, start.secret, flags)
        except (OSError, TimeoutError, XenError) as err:
            raise NoMemory(f"its memory or paging pool comes with the doorbell's OK at "
                           f"{start.doorbell or 'the doorbell handed over'}, and the doorbell "
                           f"failed: {err} (the gRPC fallback carries no memory or paging pool)") from None
    elif flags & wire.HELLO_PAGING:
        raise NoMemory(f"it runs on {start.paging_mode} paging and has no doorbell to take "
                       "its paging pool from")
    if start.memory_fd >= 0:
        memory = map_memory_object(start.memory_fd)
    elif handed is not None:
        memory = map_memory_object(handed.memory)
    else:
        memory = None
    paging = map_paging_pool(handed.paging) if handed is not None and handed.paging >= 0 \
        else None
    if start.uid >= 0:
        drop_privileges(start.uid, start.gid, tuple(start.groups))
    return memory, paging, doorbell


async def _main(start: StartInfo, memory, doorbell=None, paging=None) -> int:
    kernel = DomainKernel(start, drivers=domu_drivers, agent=start_guest_agent,
                          memory_map=memory, doorbell=doorbell, paging_pool=paging,
                          hypervisor_idle_close=HYPERVISOR_IDLE_CLOSE)
    # printk on hvc0 from the moment it is up; a shell on it once booted.
    kernel.on_console.append(log_to_console)
    kernel.on_boot.append(lambda: start_console_shell(kernel))
    on_stop_signal(kernel.stop, "poweroff")
    reason = await kernel.run()
    return 0 if reason in ("poweroff", "reboot") else 1


async def start_console_shell(kernel: DomainKernel) -> None:
    if kernel.console is None:
        return
    net = kernel.agent.net if kernel.agent is not None else None
    ConsoleShell(kernel.console, net, kernel.name, kernel.booted).start()


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def read_start_info(text: str) -> StartInfo | int:
    """The start_info a launcher wrote; an exit status (2) when there is none."""
    if not text.strip():
        print("xenlab domain: no start_info on standard input (it is started by the hypervisor's launcher)",
              file=sys.stderr)
        return 2
    try:
        return StartInfo.from_json(text)
    except (ValueError, KeyError, TypeError) as err:
        print(f"xenlab domain: malformed start_info: {err}", file=sys.stderr)
        return 2


def boot(start: StartInfo, watch_parent=None) -> int:
    """Take over the memory, become the domain's uid, run the kernel until
    it stops; its exit status. ``watch_parent`` (none: outlive the parent)
    arms the parent-death signal again once the ids changed, which cleared
    it. Also what the fork server's child runs (xenlab.boot.zygote)."""
    try:
        memory, paging, doorbell = _enter_domain(start)
    except NoMemory as err:
        print(f"xenlab domain: d{start.domid}: no memory to run in: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"xenlab domain: d{start.domid}: cannot take over its memory or become uid "
              f"{start.uid}: {err}", file=sys.stderr)
        return 2
    if start.uid >= 0 and watch_parent is not None:
        watch_parent()          # changing ids cleared the parent-death signal
    return eventloop.run(_main(start, memory, doorbell, paging))


def run(args) -> int:
    configure_logging(args.log_level)
    if not args.orphan_ok:
        die_with_parent()
    text = sys.stdin.readline() if args.start_info == "-" else open(args.start_info).read()
    start = read_start_info(text)
    if isinstance(start, int):
        return start
    return boot(start, None if args.orphan_ok else die_with_parent)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xenlab domain", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
