"""`xenlab xl`: the toolstack, as xl(1). It acts as Domain-0 with the secret
the hypervisor left in its rundir."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import grpc

from xenlab.cli import output, savefile
from xenlab.client import HypervisorClient, Rundir, to_domain_spec
from xenlab.proto import common_pb2, domains_pb2, memory_pb2
from xenlab.xen import abi
from xenlab.xen.errors import ConfigError
from xenlab.xen.digits import is_decimal
from xenlab.toolstack.xlcfg import load_xl_config, parse_vif_spec

log = logging.getLogger(__name__)

RPC_TIMEOUT = 30.0          # seconds; a unary call that takes longer is a hung hypervisor
CREATE_TIMEOUT = 120.0      # a launcher may have to start a process or a container
SHUTDOWN_WAIT = 30.0        # ShutdownRequest.timeout 0 means 30 s on the server


class CliError(Exception):
    """A user error the command reports in one line, without a traceback."""


@dataclass(frozen=True)
class Toolstack:
    """Where the hypervisor is, resolved by main from flags and environment."""
    rundir: Path
    address: str | None = None    # None: read <rundir>/hypervisor.addr

    def connect(self) -> HypervisorClient:
        rundir = Rundir(self.rundir)
        address = self.address or rundir.read_address()
        return HypervisorClient.connect(address, 0, rundir.read_dom0_secret())


def run_command(prog: str, command: str, work: Callable[[], Awaitable[int]]) -> int:
    """Run one command's coroutine; turn every user error into one line on
    stderr and exit status 1."""
    try:
        return asyncio.run(work()) or 0
    except grpc.aio.AioRpcError as err:
        hint = " (is the hypervisor running?)" if err.code() is grpc.StatusCode.UNAVAILABLE else ""
        print(f"{prog}: {command}: {err.details()} ({err.code().name}){hint}", file=sys.stderr)
    except ConfigError as err:
        print(err.message, file=sys.stderr)
    except CliError as err:
        print(f"{prog}: {command}: {err}", file=sys.stderr)
    except (FileNotFoundError, PermissionError) as err:
        # Rundir's messages already say what is missing and what to do.
        print(f"{prog}: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


# --------------------------------------------------------------------------
# Argument types.

def domain_ref(text: str) -> common_pb2.DomainRef:
    """DOM on the command line: a number is a domain id, anything else a name
    (xl's domain_qualifier_to_domid, with C's isdigit(): '²' is a name)."""
    if not text:
        raise argparse.ArgumentTypeError("a domain name or id is required")
    if is_decimal(text) and len(text) < 10:
        return common_pb2.DomainRef(domid=int(text))
    # A longer number would not fit the uint32: the server reads it as an id too.
    return common_pb2.DomainRef(name=text)


def describe_ref(ref: common_pb2.DomainRef) -> str:
    return ref.name or str(ref.domid)


# xl_utils.c parse_mem_size_kb: no suffix falls through to 'm' (MiB), even
# though xl(1) says kiB; xenlab does what xl does.
MEM_DEFAULT_SUFFIX = "m"
_MEM = re.compile(r"([0-9]+)([tgmkbTGMKB]?)")
_MEM_SHIFT = {"t": 30, "g": 20, "m": 10, "k": 0}


def parse_memory_kb(text: str) -> int:
    """xl's MEM argument -> KiB: a number with an optional t/g/m/k/b suffix."""
    m = _MEM.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(
            f"invalid memory size {text!r}: a number with an optional suffix t, g, m, k or b")
    amount, suffix = int(m.group(1)), (m.group(2) or MEM_DEFAULT_SUFFIX).lower()
    return amount >> 10 if suffix == "b" else amount << _MEM_SHIFT[suffix]


def vcpu_count(text: str) -> int:
    if not is_decimal(text) or len(text) > 4 or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid vcpu count {text!r}: a number >= 1")
    return int(text)


# --------------------------------------------------------------------------
# Commands.

def _config_source(args) -> tuple[str, list[str]]:
    items = list(args.items)
    path = args.defconfig
    if path is None:
        if not items or "=" in items[0]:
            raise CliError("no config file given: xenlab xl create FILE.cfg [key=value ...]")
        path = items.pop(0)
    bad = [item for item in items if "=" not in item]
    if bad:
        raise CliError(f"{bad[0]!r} is not a key=value override")
    return path, items


async def cmd_create(args, ts: Toolstack) -> int:
    path, overrides = _config_source(args)
    if not args.quiet:
        print(f"Parsing config from {path}", file=sys.stderr)
    try:
        cfg = load_xl_config(path, overrides)
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from None
    for warning in cfg.warnings:
        print(warning, file=sys.stderr)
    spec = to_domain_spec(cfg)
    if args.dry_run:
        print(json.dumps(output.message_to_dict(spec), indent=4))
        return 0
    async with ts.connect() as hv:
        reply = await hv.domains.Create(
            domains_pb2.CreateDomainRequest(spec=spec, paused=args.paused), timeout=CREATE_TIMEOUT)
        log.debug("created %s as d%d", reply.info.name, reply.info.domid)
        if args.console:
            await _stream_console(hv, common_pb2.DomainRef(domid=reply.info.domid))
    return 0


async def cmd_destroy(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.domains.Destroy(args.domain, timeout=RPC_TIMEOUT)
    return 0


async def cmd_list(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        if args.domains:
            domains = [await hv.domains.Info(ref, timeout=RPC_TIMEOUT) for ref in args.domains]
        else:
            domains = list((await hv.domains.List(common_pb2.Empty(), timeout=RPC_TIMEOUT)).domains)
    text = output.format_domain_long(domains) if args.long else output.format_domain_list(domains)
    sys.stdout.write(text)
    return 0


async def cmd_pause(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.domains.Pause(args.domain, timeout=RPC_TIMEOUT)
    return 0


async def cmd_unpause(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.domains.Unpause(args.domain, timeout=RPC_TIMEOUT)
    return 0


async def _shutdown(args, ts: Toolstack, reason: str, doing: str) -> int:
    """xl shutdown/reboot: control/shutdown is written and the command
    returns, as xl does (a paused domain's too); -w waits, and says how it
    ended as xl's wait_for_domain_deaths does."""
    timeout = RPC_TIMEOUT + (SHUTDOWN_WAIT if args.wait else 0)
    async with ts.connect() as hv:
        domid = (await hv.domains.Info(args.domain, timeout=RPC_TIMEOUT)).domid
        print(f"{doing} domain {domid}", file=sys.stderr)
        ref = common_pb2.DomainRef(domid=domid)
        if args.wait:
            print("Waiting for 1 domains", file=sys.stderr)
        await hv.domains.Shutdown(domains_pb2.ShutdownRequest(domain=ref, reason=reason,
                                                              wait=args.wait), timeout=timeout)
        if args.wait:
            print(await _how_it_ended(hv, ref), file=sys.stderr)
    return 0


async def _how_it_ended(hv, ref: common_pb2.DomainRef) -> str:
    try:
        info = await hv.domains.Info(ref, timeout=RPC_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return f"Domain {ref.domid} has been destroyed"
    code = abi.SHUTDOWN_REASONS.get(info.shutdown_reason)
    if code is None:
        return f"Domain {ref.domid} has been destroyed"
    return f"Domain {ref.domid} has been shut down, reason code {code}"


async def cmd_shutdown(args, ts: Toolstack) -> int:
    return await _shutdown(args, ts, "poweroff", "Shutting down")


async def cmd_reboot(args, ts: Toolstack) -> int:
    return await _shutdown(args, ts, "reboot", "Rebooting")


async def cmd_mem_set(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.memory.SetTarget(memory_pb2.MemSetRequest(domain=args.domain, kb=args.memory),
                                  timeout=RPC_TIMEOUT)
    return 0


async def cmd_mem_max(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.memory.SetMax(memory_pb2.MemSetRequest(domain=args.domain, kb=args.memory),
                               timeout=RPC_TIMEOUT)
    return 0


async def cmd_vcpu_set(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.domains.SetVcpus(domains_pb2.VcpuSetRequest(domain=args.domain, vcpus=args.vcpus),
                                  timeout=RPC_TIMEOUT)
    return 0


async def cmd_info(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        info = await hv.domains.GetHostInfo(common_pb2.Empty(), timeout=RPC_TIMEOUT)
    sys.stdout.write(output.format_host_info(info))
    return 0


async def _stream_console(hv: HypervisorClient, ref: common_pb2.DomainRef) -> None:
    out = sys.stdout.buffer
    async for chunk in hv.domains.Console(domains_pb2.ConsoleRequest(domain=ref, follow=True)):
        out.write(chunk.data)
        out.flush()


async def cmd_console(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await _stream_console(hv, args.domain)
    return 0


def _vif_spec(items: list[str]) -> domains_pb2.VifSpec:
    bad = [item for item in items if "=" not in item]
    if bad:
        raise CliError(f"{bad[0]!r} is not a key=value vif setting (mac=, bridge=, ip=, ...)")
    vif = parse_vif_spec(",".join(items), 0)
    return domains_pb2.VifSpec(mac=vif.mac or "", bridge=vif.bridge, ip=vif.ip or "",
                               vifname=vif.vifname or "", rate=vif.rate or "", mtu=vif.mtu,
                               backend=vif.backend or "", script=vif.script or "",
                               model=vif.model or "", vlan=vif.vlan or "")


async def cmd_network_attach(args, ts: Toolstack) -> int:
    spec = _vif_spec(args.settings)
    async with ts.connect() as hv:
        await hv.domains.NetworkAttach(domains_pb2.NetworkAttachRequest(domain=args.domain, vif=spec),
                                       timeout=RPC_TIMEOUT)
    return 0


async def cmd_network_detach(args, ts: Toolstack) -> int:
    request = domains_pb2.NetworkDetachRequest(domain=args.domain, device=args.device,
                                               force=args.force)
    async with ts.connect() as hv:
        await hv.domains.NetworkDetach(request, timeout=RPC_TIMEOUT)
    return 0


async def cmd_network_list(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        vifs = []
        for ref in args.domains:
            vifs.extend((await hv.domains.NetworkList(ref, timeout=RPC_TIMEOUT)).vifs)
    sys.stdout.write(output.format_network_list(vifs))
    return 0


async def cmd_save(args, ts: Toolstack) -> int:
    """xl save: its lines on stderr, as xl and libxc print them."""
    if args.store_domid or args.config:
        raise CliError("-D is not emulated (a restore never reuses the domain id)" if args.store_domid
                       else "a config file to save with is not supported: the domain's own is saved")
    async with ts.connect() as hv:
        info = await hv.domains.Info(args.domain, timeout=RPC_TIMEOUT)
        print(f"Saving to {args.file} new xl format (xenlab save image v1)", file=sys.stderr)
        print(f"xc: info: Saving domain {info.domid}, type x86 PV", file=sys.stderr)
        try:
            saved = await savefile.save_domain(hv, common_pb2.DomainRef(domid=info.domid), args.file,
                                               args.checkpoint, args.paused)
        except savefile.SaveFileError as err:
            raise CliError(str(err)) from None
    print(f"xc: info: {saved.pages} pages, {saved.size} bytes, suspended for "
          f"{saved.suspended_s:.3f}s", file=sys.stderr)
    return 0


async def cmd_restore(args, ts: Toolstack) -> int:
    if args.vncviewer:
        raise CliError("-V is not emulated: xenlab domains have no VNC console")
    print(f"Loading new save file {args.file} (xenlab save image v1)", file=sys.stderr)
    print(" Savefile contains xl domain config in JSON format", file=sys.stderr)
    print("Parsing config from <saved>", file=sys.stderr)
    async with ts.connect() as hv:
        try:
            reply = await savefile.restore_domain(hv, args.file, args.paused, args.no_monitor)
        except savefile.SaveFileError as err:
            raise CliError(str(err)) from None
    print("xc: info: Restore successful", file=sys.stderr)
    log.debug("restored %s as d%d (%d pages)", reply.name, reply.domid, reply.pages)
    return 0


# --------------------------------------------------------------------------
# The parser.

def _dom(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", type=domain_ref, metavar="DOM", help="domain name or id")


def _wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--wait", action="store_true",
                   help="wait until the domain has shut down (and its on_* action is done)")


def _create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--defconfig", metavar="FILE", help="the config file (or give it first)")
    p.add_argument("-p", "--paused", action="store_true", help="leave the domain paused")
    p.add_argument("-c", "--console", action="store_true", help="attach to the console afterwards")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="parse the config and print the DomainSpec; create nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print 'Parsing config'")
    p.add_argument("items", nargs="*", metavar="FILE.cfg | key=value",
                   help="the config file, then key=value lines that override it")


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-l", "--long", action="store_true", help="print each domain's config as JSON")
    p.add_argument("domains", nargs="*", type=domain_ref, metavar="DOM",
                   help="domains to list, by name or id (default: every domain)")


def _mem_args(p: argparse.ArgumentParser) -> None:
    _dom(p)
    p.add_argument("memory", type=parse_memory_kb, metavar="MEM",
                   help="size with suffix t, g, m, k or b; no suffix means MiB, as xl")


def _vcpu_args(p: argparse.ArgumentParser) -> None:
    _dom(p)
    p.add_argument("vcpus", type=vcpu_count, metavar="N",
                   help="vCPUs to have online, 1 up to the domain's maxvcpus")


def _shutdown_args(p: argparse.ArgumentParser) -> None:
    _wait(p)
    _dom(p)


def _attach_args(p: argparse.ArgumentParser) -> None:
    _dom(p)
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                   help="vif settings as in xl.cfg: mac=, bridge=, ip=, rate=, mtu=, vifname=, backend=")


def _detach_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="remove the device even if its backend does not close it")
    _dom(p)
    p.add_argument("device", metavar="DEVID|MAC",
                   help="the vif, by its device id (ethDEVID in the guest) or its MAC")


def _network_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="+", type=domain_ref, metavar="DOM",
                   help="domains whose vifs to list, by name or id")


def _save_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--checkpoint", action="store_true",
                   help="leave the domain running after saving it")
    p.add_argument("-p", "--paused", action="store_true",
                   help="leave the domain paused after saving it")
    p.add_argument("-D", dest="store_domid", action="store_true",
                   help="store the domain id in the config (not emulated: refused)")
    _dom(p)
    p.add_argument("file", metavar="CHECKPOINTFILE", help="the file to save the domain to")
    p.add_argument("config", nargs="?", metavar="CONFIGFILE",
                   help="a config to save instead of the domain's (not supported: refused)")


def _restore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--paused", action="store_true", help="leave the domain paused")
    p.add_argument("-e", dest="no_monitor", action="store_true",
                   help="do not apply its on_poweroff/on_reboot/on_crash actions when it dies")
    p.add_argument("-V", "--vncviewer", action="store_true",
                   help="connect to the VNC display (not emulated: refused)")
    p.add_argument("file", metavar="CHECKPOINTFILE", help="a file xl save wrote")


# name: (one-line help, argument adder, handler)
COMMANDS: dict[str, tuple[str, Callable | None, Callable]] = {
    "create": ("create a domain from an xl.cfg file", _create_args, cmd_create),
    "destroy": ("terminate a domain immediately", _dom, cmd_destroy),
    "list": ("list domains", _list_args, cmd_list),
    "pause": ("pause a domain's execution", _dom, cmd_pause),
    "unpause": ("unpause a paused domain", _dom, cmd_unpause),
    "shutdown": ("ask a domain to shut down", _shutdown_args, cmd_shutdown),
    "reboot": ("ask a domain to reboot", _shutdown_args, cmd_reboot),
    "mem-set": ("set a domain's memory target (the balloon follows it)", _mem_args, cmd_mem_set),
    "mem-max": ("set a domain's maximum memory reservation", _mem_args, cmd_mem_max),
    "vcpu-set": ("set the number of online vcpus", _vcpu_args, cmd_vcpu_set),
    "info": ("print information about the host", None, cmd_info),
    "console": ("print a domain's console, following it", _dom, cmd_console),
    "network-attach": ("add a vif to a running domain", _attach_args, cmd_network_attach),
    "network-detach": ("remove a vif from a domain", _detach_args, cmd_network_detach),
    "network-list": ("list a domain's vifs", _network_list_args, cmd_network_list),
    "save": ("save a domain's state to a file (and destroy it)", _save_args, cmd_save),
    "restore": ("restore a domain from a saved state file", _restore_args, cmd_restore),
}


def add_arguments(parser: argparse.ArgumentParser, parents: tuple = ()) -> None:
    """Add the xl subcommands to `parser`; `parents` are parsers whose
    options every subcommand accepts too (--rundir, --hypervisor, -v)."""
    sub = parser.add_subparsers(dest="xl_command", metavar="COMMAND", required=True)
    for name, (help_text, add, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                           parents=list(parents))
        if add is not None:
            add(p)
        p.set_defaults(xl_handler=handler)


def run(args, toolstack: Toolstack) -> int:
    return run_command("xenlab xl", args.xl_command, lambda: args.xl_handler(args, toolstack))
