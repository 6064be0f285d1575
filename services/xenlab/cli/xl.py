"""`xenlab xl`: the toolstack, as xl(1). It acts as Domain-0 with the secret
the hypervisor left in its rundir."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import grpc

from xenlab import eventloop
from xenlab.agent_client import NoAgentError, agent_for
from xenlab.cli import output, sched_output
from xenlab.toolstack import save_client
from xenlab.client import HypervisorClient, Rundir, to_domain_spec
from xenlab.cli import console as xl_console
from xenlab.proto import (agent_pb2, common_pb2, console_pb2, domains_pb2, memory_pb2, sched_pb2,
                          xenstore_pb2)
from xenlab.xen import abi
from xenlab.xen.errors import ConfigError
from xenlab.xen.digits import is_decimal
from xenlab.toolstack.cpupool_cfg import parse_cpupool_config
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
            await xl_console.attach(hv, reply.info.domid)
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
        phys = await hv.sched.GetPhysInfo(common_pb2.Empty(), timeout=RPC_TIMEOUT)
    sys.stdout.write(output.format_host_info(info, phys))
    return 0


async def cmd_console(args, ts: Toolstack) -> int:
    if args.type == "serial":
        raise CliError("no serial console is emulated: a PV domain's console is -t pv")
    if args.num != 0:
        raise CliError(f"console {args.num}: a domain has one PV console, number 0")
    async with ts.connect() as hv:
        domid = (await hv.domains.Info(args.domain, timeout=RPC_TIMEOUT)).domid
        if domid == 0:
            raise CliError("Domain-0 has no PV console: its console is Xen's own "
                           "(its kernel's log is logs/dom0.log)")
        try:
            return await xl_console.attach(hv, domid, line_timeout=args.timeout)
        except xl_console.ConsoleError as err:
            raise CliError(str(err)) from None


async def cmd_sysrq(args, ts: Toolstack) -> int:
    """libxl_send_sysrq: the key in control/sysrq, for the guest to act on."""
    if len(args.key) != 1:
        raise CliError("Invalid sysrq: one letter")
    async with ts.connect() as hv:
        domid = (await hv.domains.Info(args.domain, timeout=RPC_TIMEOUT)).domid
        await hv.xenstore.Write(xenstore_pb2.WriteRequest(
            path=f"/local/domain/{domid}/control/sysrq", value=args.key.encode("latin-1", "replace")),
            timeout=RPC_TIMEOUT)
    return 0


async def cmd_trigger(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.triggers.Send(console_pb2.TriggerRequest(
            domain=args.domain, trigger=args.trigger, vcpu=args.vcpu), timeout=RPC_TIMEOUT)
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
            saved = await save_client.save_domain(hv, common_pb2.DomainRef(domid=info.domid),
                                                  args.file, args.checkpoint, args.paused)
        except save_client.SaveFileError as err:
            raise CliError(str(err)) from None
    print(f"xc: info: {saved.pages} pages, {saved.size} bytes, suspended for "
          f"{saved.suspended_s:.3f}s", file=sys.stderr)
    return 0


def _migration_target(rundir: Path, host: str) -> Path | None:
    """xl migrate's HOST when it is on this machine: another host of the
    pool this rundir's host is in (RUNDIR/../HOST, where a pool keeps its
    hosts), or a rundir; None when it is neither (a host to reach with
    SSHCOMMAND, as xl does)."""
    here = Path(rundir).resolve()
    sibling = here.parent / host
    if here.parent.name == "hosts" and "/" not in host and sibling.is_dir():
        target = sibling
    elif Path(host).is_dir():
        target = Path(host).resolve()
    else:
        return None
    if target == here:
        raise CliError(f"{host} is this host: migrate to another one")
    return target


def migration_rune(ssh_command: str, host: str, paused: bool) -> str:
    """The command xl migrate runs to reach the receiver (xl's "rune"):
    ``exec SSHCOMMAND HOST xenlab xl migrate-receive``, or HOST itself as
    the command when SSHCOMMAND is empty."""
    if not ssh_command:
        return host
    return f"exec {ssh_command} {host} xenlab xl migrate-receive" + (" -p" if paused else "")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def cmd_migrate(args, ts: Toolstack) -> int:
    """xl migrate DOMAIN HOST: the sender's and the receiver's lines, as xl
    prints them (on stderr), then what it moved and the downtime. HOST is a
    host of this pool or a rundir (the target's toolstack, reached
    directly), or with -s, or when it is neither, a host whose
    `xenlab xl migrate-receive` SSHCOMMAND runs (ssh by default)."""
    target = None if args.ssh_command is not None else _migration_target(ts.rundir, args.host)
    async with ts.connect() as source:
        info = await source.domains.Info(args.domain, timeout=RPC_TIMEOUT)
        if target is None:
            return await _migrate_through(args, source, info, _pool_hint(ts.rundir, args))
        if args.paused:
            raise CliError("-p is for a receiver reached with -s: a host of this pool starts "
                           "the domain (xl unpause it there, or xl pause it after)")
        async with Toolstack(rundir=target).connect() as dest:
            _say("Saving to migration stream new xl format (xenlab save image v1)")
            _say(f"xc: info: Saving domain {info.domid}, type x86 PV")
            try:
                moved = await save_client.migrate_domain(
                    source, common_pb2.DomainRef(domid=info.domid), dest, say=_say)
            except save_client.MigrationError as err:
                raise CliError(f"migration failed: {err}") from None
            _say("migration sender: Target reports successful startup.")
            _say("Migration successful.")
            connected = await save_client.vifs_connected(dest, moved.new_domid)
    network = (f"; its vifs connected {moved.downtime_s + connected - moved.started_at:.3f} s "
               f"after its suspend" if connected is not None else
               "; its vifs did not connect within 10 s (xl network-list on the target)")
    print(f"{info.name}: d{moved.domid} here -> d{moved.new_domid} on {args.host}: "
          f"{_moved_text(moved)}; downtime {moved.downtime_s:.3f} s{network}")
    return 0


def _moved_text(moved) -> str:
    rounds = moved.round_pages
    return (f"{moved.pages} pages, {len(rounds)} rounds (pages sent: {', '.join(map(str, rounds))}; "
            f"the last while suspended), {moved.size} bytes")


def _pool_hint(rundir: Path, args) -> str:
    """For a HOST that went to ssh from a host of a pool (no -s): the
    pool's hosts, in case a name was mistyped."""
    here = Path(rundir).resolve()
    if args.ssh_command is not None or here.parent.name != "hosts":
        return ""
    others = sorted(p.name for p in here.parent.iterdir() if p.is_dir() and p != here)
    return f" ({args.host} is not a host of this pool: {', '.join(others) or 'it has no other'})"


async def _migrate_through(args, source, info, hint: str = "") -> int:
    """The sender's side over a pipe to `xl migrate-receive` (xl's protocol),
    run by SSHCOMMAND; the receiver's lines come through its stderr."""
    rune = migration_rune("ssh" if args.ssh_command is None else args.ssh_command,
                          args.host, args.paused)
    try:
        child = await asyncio.create_subprocess_exec(
            "sh", "-c", rune, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    except OSError as err:
        raise CliError(f"cannot run the migration transport: {err}") from None
    _say("Saving to migration stream new xl format (xenlab save image v1)")
    _say(f"xc: info: Saving domain {info.domid}, type x86 PV")
    try:
        moved = await save_client.migrate_through(
            source, common_pb2.DomainRef(domid=info.domid), child.stdout, child.stdin, say=_say)
    except save_client.HandshakeLost as err:
        _say("** Migration failed during final handshake **")
        raise CliError(f"{err} (command run was: {rune} )") from None
    except save_client.MigrationError as err:
        transport = await _child_report(child)
        raise CliError(f"migration failed: {err} (command run was: {rune} ){transport}{hint}") from None
    finally:
        if child.stdin is not None and not child.stdin.is_closing():
            child.stdin.close()
    await _child_report(child)
    _say("migration sender: Target reports successful startup.")
    _say("Migration successful.")
    print(f"{info.name}: d{moved.domid} here -> {args.host}: {_moved_text(moved)}; downtime "
          f"{moved.downtime_s:.3f} s (the suspend here to the receiver's report of its start)")
    return 0


async def _child_report(child) -> str:
    """How the transport ended, as xl's migration_child_report: waited for
    up to 2 s; its status when it failed."""
    if child.stdin is not None and not child.stdin.is_closing():
        child.stdin.close()
    try:
        status = await eventloop.wait_for(child.wait(), 2.0)
    except asyncio.TimeoutError:
        child.kill()
        await child.wait()
        return "; the migration transport did not exit, and was killed"
    return f"; the migration transport exited with status {status}" if status else ""


async def cmd_migrate_receive(args, ts: Toolstack) -> int:
    """xl migrate-receive: the receiving end of `xl migrate -s`, on standard
    input and output (xl's messages and the image); its lines on stderr."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 22)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", 0))
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                        os.fdopen(1, "wb", 0))
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    async with ts.connect() as hv:
        try:
            await save_client.receive_migration(hv, reader, writer, say=_say, paused=args.paused)
        except save_client.MigrationError as err:
            raise CliError(str(err)) from None
    return 0


async def cmd_restore(args, ts: Toolstack) -> int:
    if args.vncviewer:
        raise CliError("-V is not emulated: xenlab domains have no VNC console")
    print(f"Loading new save file {args.file} (xenlab save image v1)", file=sys.stderr)
    print(" Savefile contains xl domain config in JSON format", file=sys.stderr)
    print("Parsing config from <saved>", file=sys.stderr)
    async with ts.connect() as hv:
        try:
            reply = await save_client.restore_domain(hv, args.file, args.paused, args.no_monitor)
        except save_client.SaveFileError as err:
            raise CliError(str(err)) from None
    print("xc: info: Restore successful", file=sys.stderr)
    log.debug("restored %s as d%d (%d pages)", reply.name, reply.domid, reply.pages)
    return 0


# --------------------------------------------------------------------------
# vCPUs, scheduling, cpupools, and the host's and domains' times and names
# (the Sched service: xenlab.hypervisor.scheduler).

async def cmd_vcpu_list(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        reply = await hv.sched.ListVcpus(sched_pb2.VcpuListRequest(domains=args.domains),
                                         timeout=RPC_TIMEOUT)
    sys.stdout.write(sched_output.format_vcpu_list(reply.vcpus, reply.nr_cpus))
    return 0


def vcpu_number(text: str) -> int:
    """xl vcpu-pin's VCPU: a number, or ``all`` (-1)."""
    if text == "all":
        return -1
    if not is_decimal(text) or len(text) > 4:
        raise argparse.ArgumentTypeError(f"invalid argument {text!r} as VCPU: a number or 'all'")
    return int(text)


async def cmd_vcpu_pin(args, ts: Toolstack) -> int:
    if args.force and args.vcpu == -1:
        raise CliError("--force and 'all' as VCPU not allowed")
    request = sched_pb2.VcpuPinRequest(domain=args.domain, vcpu=args.vcpu, hard=args.hard,
                                       soft=args.soft or "")
    async with ts.connect() as hv:
        await hv.sched.VcpuPin(request, timeout=RPC_TIMEOUT)
    return 0


def _sched_cmd(scheduler: str):
    async def cmd(args, ts: Toolstack) -> int:
        """xl sched-credit/-credit2: list every pool of the scheduler with
        its domains, one domain, or set a domain's weight and cap."""
        setting = args.weight is not None or args.cap is not None
        if args.pool and (args.domain or setting):
            raise CliError("specifying a cpupool is not allowed with domain options")
        if setting and args.domain is None:
            raise CliError("must specify a domain (-d DOM) to set its weight or cap")
        async with ts.connect() as hv:
            if args.domain is None:
                pools = await hv.sched.ListCpupools(common_pb2.Empty(), timeout=RPC_TIMEOUT)
                if args.pool and not any(args.pool in (p.name, str(p.poolid)) for p in pools.pools):
                    raise CliError(f"unknown cpupool '{args.pool}'")
                params = await hv.sched.SchedList(common_pb2.Empty(), timeout=RPC_TIMEOUT)
                sys.stdout.write(sched_output.format_sched_pools(pools.pools, params.domains,
                                                                 scheduler, args.pool or ""))
                return 0
            current = await hv.sched.SchedGet(args.domain, timeout=RPC_TIMEOUT)
            pools = await hv.sched.ListCpupools(common_pb2.Empty(), timeout=RPC_TIMEOUT)
            pool = next((p for p in pools.pools if p.poolid == current.poolid), None)
            if pool is not None and pool.sched != scheduler:
                raise CliError(f"domain {current.name} is in cpupool {pool.name}, whose scheduler "
                               f"is {pool.sched}: use xl sched-{pool.sched}")
            if not setting:
                sys.stdout.write(sched_output.sched_header() + sched_output.sched_row(current))
                return 0
            request = sched_pb2.SchedSetRequest(
                domain=args.domain, set_weight=args.weight is not None, weight=args.weight or 0,
                set_cap=args.cap is not None, cap=args.cap or 0)
            reply = await hv.sched.SchedSet(request, timeout=RPC_TIMEOUT)
        for where, value in sorted(reply.written.items()):
            log.info("wrote %s = %s", where, value)
        return 0
    return cmd


async def cmd_cpupool_list(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        reply = await hv.sched.ListCpupools(common_pb2.Empty(), timeout=RPC_TIMEOUT)
    pools = list(reply.pools)
    if args.pool:
        pools = [p for p in pools if args.pool in (p.name, str(p.poolid))]
        if not pools:
            raise CliError(f"Pool '{args.pool}' does not exist")
    sys.stdout.write(sched_output.format_cpupool_list(pools, args.cpus))
    return 0


async def cmd_cpupool_create(args, ts: Toolstack) -> int:
    items = list(args.items)
    path = args.defconfig
    if path is None and items and "=" not in items[0]:
        path = items.pop(0)
    text = ""
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise CliError(f"cannot read {path}: {err.strerror}") from None
    cfg = parse_cpupool_config(text, items, path)
    request = sched_pb2.CpupoolCreateRequest(name=cfg.name, sched=cfg.sched, cpus=cfg.cpus)
    if args.dry_run:
        print(json.dumps(output.message_to_dict(request), indent=4))
        return 0
    async with ts.connect() as hv:
        await hv.sched.CpupoolCreate(request, timeout=RPC_TIMEOUT)
    return 0


async def cmd_cpupool_destroy(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.sched.CpupoolDestroy(sched_pb2.CpupoolRef(pool=args.pool), timeout=RPC_TIMEOUT)
    return 0


async def cmd_cpupool_cpu_add(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.sched.CpupoolCpuAdd(sched_pb2.CpupoolCpusRequest(pool=args.pool, cpus=args.cpus),
                                     timeout=RPC_TIMEOUT)
    return 0


async def cmd_cpupool_cpu_remove(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.sched.CpupoolCpuRemove(sched_pb2.CpupoolCpusRequest(pool=args.pool, cpus=args.cpus),
                                        timeout=RPC_TIMEOUT)
    return 0


async def cmd_cpupool_migrate(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.sched.CpupoolMigrate(sched_pb2.CpupoolMigrateRequest(domain=args.domain,
                                                                       pool=args.pool),
                                      timeout=RPC_TIMEOUT)
    return 0


async def _start_time(hv, info: domains_pb2.DomainInfo) -> float | None:
    """libxl_vm_get_start_time: /vm/UUID/start_time."""
    try:
        reply = await hv.xenstore.Read(xenstore_pb2.PathRequest(path=f"/vm/{info.uuid}/start_time"),
                                       timeout=RPC_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    try:
        return float(reply.value.decode())
    except ValueError:
        return None


async def cmd_uptime(args, ts: Toolstack) -> int:
    """Domain-0's uptime is the host's (the hypervisor's, here), as xl reads
    dom0's /proc/uptime; a domU's is since /vm/UUID/start_time."""
    now = time.time()
    out = [] if args.short else [sched_output.uptime_header()]
    async with ts.connect() as hv:
        if args.domains:
            domains = [await hv.domains.Info(ref, timeout=RPC_TIMEOUT) for ref in args.domains]
        else:
            domains = list((await hv.domains.List(common_pb2.Empty(), timeout=RPC_TIMEOUT)).domains)
        host = None
        for info in domains:
            if info.domid == 0:
                if host is None:
                    host = await hv.domains.GetHostInfo(common_pb2.Empty(), timeout=RPC_TIMEOUT)
                seconds = host.uptime
            else:
                start = await _start_time(hv, info)
                if start is None:
                    continue            # xl skips a domain without a start time
                seconds = max(0.0, now - start)
            out.append(sched_output.uptime_line(info.name, info.domid, seconds, args.short, now))
    sys.stdout.write("".join(out))
    return 0


async def cmd_domid(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        info = await hv.domains.Info(common_pb2.DomainRef(name=args.name), timeout=RPC_TIMEOUT)
    print(info.domid)
    return 0


async def cmd_domname(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        info = await hv.domains.Info(common_pb2.DomainRef(domid=args.domid), timeout=RPC_TIMEOUT)
    print(info.name)
    return 0


async def cmd_rename(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await hv.sched.Rename(sched_pb2.RenameRequest(domain=args.domain, name=args.name),
                              timeout=RPC_TIMEOUT)
    return 0


async def cmd_dmesg(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        reply = await hv.sched.ReadConsole(sched_pb2.ReadConsoleRequest(clear=args.clear),
                                           timeout=RPC_TIMEOUT)
    sys.stdout.write("".join(line + "\n" for line in reply.lines))
    return 0


async def _net_counters(hv, domains) -> dict[int, tuple[int, int, int]]:
    """domid -> (vifs, bytes the domain sent, bytes it received), from
    netback's counters in each backend domain: a vif's rx is its
    frontend's tx, as xenstat reads vifD.N from the backend's /proc/net/dev."""
    by_backend: dict[int, dict[str, agent_pb2.InterfaceStats]] = {}
    out: dict[int, tuple[int, int, int]] = {}
    for info in domains:
        try:
            vifs = (await hv.domains.NetworkList(common_pb2.DomainRef(domid=info.domid),
                                                 timeout=RPC_TIMEOUT)).vifs
        except grpc.aio.AioRpcError:
            vifs = []
        tx = rx = 0
        for vif in vifs:
            if vif.backend_id not in by_backend:
                by_backend[vif.backend_id] = {}
                try:
                    async with await agent_for(hv, vif.backend_id) as agent:
                        stats = await agent.InterfaceStats(agent_pb2.StatsRequest(), timeout=RPC_TIMEOUT)
                    by_backend[vif.backend_id] = {i.name: i for i in stats.interfaces}
                except (NoAgentError, grpc.aio.AioRpcError) as err:
                    log.debug("no counters from d%d: %s", vif.backend_id, err)
            name = vif.vifname or f"vif{info.domid}.{vif.devid}"
            stats = by_backend[vif.backend_id].get(name)
            if stats is not None:
                tx += stats.rx_bytes
                rx += stats.tx_bytes
        out[info.domid] = (len(vifs), tx, rx)
    return out


async def _top_sample(hv):
    domains = list((await hv.domains.List(common_pb2.Empty(), timeout=RPC_TIMEOUT)).domains)
    return time.monotonic(), domains, await _net_counters(hv, domains)


async def cmd_top(args, ts: Toolstack) -> int:
    """xentop: every domain's CPU (seconds, and % of one CPU since the last
    sample), memory, vCPUs and network counters; -b prints the table each
    -d seconds (-i times), else the screen is redrawn until Ctrl-C."""
    previous: dict[int, float] = {}
    last = None
    n = 0
    async with ts.connect() as hv:
        host = await hv.domains.GetHostInfo(common_pb2.Empty(), timeout=RPC_TIMEOUT)
        phys = await hv.sched.GetPhysInfo(common_pb2.Empty(), timeout=RPC_TIMEOUT)
        while True:
            now, domains, nets = await _top_sample(hv)
            rows = []
            for d in domains:
                pct = sched_output.cpu_percent(previous[d.domid], d.cpu_time, now - last) \
                    if last is not None and d.domid in previous else 0.0
                vifs, tx, rx = nets.get(d.domid, (0, 0, 0))
                rows.append(sched_output.TopRow(d.domid, d.name, d.state, d.cpu_time, pct,
                                                d.memory_kb, d.maxmem_kb, d.vcpus, vifs, tx, rx))
            previous, last = {d.domid: d.cpu_time for d in domains}, now
            text = sched_output.xentop_table(rows, host.total_memory_kb)
            if not args.batch:
                host = await hv.domains.GetHostInfo(common_pb2.Empty(), timeout=RPC_TIMEOUT)
                text = "\x1b[H\x1b[2J" + sched_output.xentop_summary(
                    rows, host.xen_version, host.total_memory_kb, host.free_memory_kb,
                    host.nr_cpus, phys.cpu_khz // 1000) + text
            sys.stdout.write(text)
            sys.stdout.flush()
            n += 1
            if args.iterations and n >= args.iterations:
                return 0
            await asyncio.sleep(args.delay)


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


def _console_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--type", choices=("pv", "serial"), default="pv",
                   help="the console type (a PV domain has its PV console)")
    p.add_argument("-n", "--num", type=int, default=0, metavar="NUM",
                   help="the console number (0, the only one)")
    p.add_argument("--timeout", type=float, default=xl_console.LINE_TIMEOUT, metavar="SECONDS",
                   help="when input is not a terminal: how long each line's prompt may take "
                        f"(default {xl_console.LINE_TIMEOUT:g})")
    _dom(p)


def _sysrq_args(p: argparse.ArgumentParser) -> None:
    _dom(p)
    p.add_argument("key", metavar="LETTER", help="the sysrq key: b, c, m, o, t; any other prints help")


def _trigger_args(p: argparse.ArgumentParser) -> None:
    _dom(p)
    p.add_argument("trigger", choices=("nmi", "reset", "init", "power", "sleep", "s3resume"),
                   metavar="nmi|reset|init|power|sleep|s3resume", help="the trigger")
    p.add_argument("vcpu", type=int, nargs="?", default=0, metavar="VCPU",
                   help="the vCPU to send it to (default 0)")


def _network_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="+", type=domain_ref, metavar="DOM",
                   help="domains whose vifs to list, by name or id")


def _vcpu_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="*", type=domain_ref, metavar="DOM",
                   help="domains whose vCPUs to list (default: every domain)")


def _vcpu_pin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="accepted for xl's sake: affinity is always set for good")
    _dom(p)
    p.add_argument("vcpu", type=vcpu_number, metavar="VCPU|all", help="the vCPU, or all of them")
    p.add_argument("hard", metavar="CPUS",
                   help="hard affinity: CPUs and ranges, '^' to take away, 'all' ('0-3,^2'); '-' leaves it")
    p.add_argument("soft", nargs="?", metavar="SOFT",
                   help="soft affinity: only '-' or 'all' (Linux has no preferred-CPU affinity)")


def sched_weight(text: str) -> int:
    if not is_decimal(text) or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid weight {text!r}: 1..65535 (default 256)")
    return int(text)


def sched_cap(text: str) -> int:
    if not is_decimal(text) or len(text) > 5 or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid cap {text!r}: percent of one CPU, 0 (none)..65535")
    return int(text)


def _sched_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--domain", type=domain_ref, metavar="DOM",
                   help="the domain to show or set (default: list every domain)")
    p.add_argument("-w", "--weight", type=sched_weight, metavar="W",
                   help="relative weight, 1..65535 (default 256): cgroup cpu.shares = W*4 (v1), "
                        "cpu.weight = W*100/256 (v2)")
    p.add_argument("-c", "--cap", type=sched_cap, metavar="C",
                   help="most CPU it may use, in percent of one CPU (0: no cap): CFS quota "
                        "C%% of a 100 ms period")
    p.add_argument("-p", "--cpupool", dest="pool", metavar="POOL",
                   help="list only this cpupool's domains")


def _pool_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("pool", metavar="POOL", help="cpupool name or id")


def _cpupool_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--cpus", action="store_true", help="list each pool's CPUs")
    p.add_argument("pool", nargs="?", metavar="POOL", help="only this cpupool")


def _cpupool_create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--defconfig", metavar="FILE", help="the cpupool config file")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="parse the configuration and print it; create nothing")
    p.add_argument("items", nargs="*", metavar="[FILE] key=value",
                   help='name="NAME", sched="credit|credit2", cpus="LIST" (default: one free CPU)')


def _cpupool_cpus_args(p: argparse.ArgumentParser) -> None:
    _pool_arg(p)
    p.add_argument("cpus", metavar="CPUS", help="CPUs and ranges ('2', '1-3', '0-3,^2')")


def _cpupool_migrate_args(p: argparse.ArgumentParser) -> None:
    _dom(p)
    _pool_arg(p)


def _uptime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--short", dest="short", action="store_true", help="uptime(1)'s short form")
    p.add_argument("domains", nargs="*", type=domain_ref, metavar="DOM",
                   help="domains (default: every domain)")


def _domid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="a domain name")


def domid_number(text: str) -> int:
    if not is_decimal(text) or len(text) > 10 or int(text) > 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"invalid domain id {text!r}: a number")
    return int(text)


def _domname_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("domid", type=domid_number, metavar="DOMID", help="a domain id")


def _rename_args(p: argparse.ArgumentParser) -> None:
    _dom(p)
    p.add_argument("name", metavar="NEWNAME", help="the new name (the rules of a name at create)")


def _dmesg_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--clear", action="store_true", help="clear the ring after printing it")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"invalid delay {text!r}: seconds, more than 0")
    return value


def iterations(text: str) -> int:
    if not is_decimal(text) or len(text) > 9:
        raise argparse.ArgumentTypeError(f"invalid iterations {text!r}: a number")
    return int(text)


def _top_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-b", "--batch", action="store_true", help="print the table each time, no screen")
    p.add_argument("-d", "--delay", type=positive_seconds, default=3.0, metavar="SECONDS",
                   help="seconds between updates (default 3)")
    p.add_argument("-i", "--iterations", type=iterations, default=0, metavar="N",
                   help="stop after N updates (default: run until interrupted)")


def xentop_arguments(p: argparse.ArgumentParser) -> None:
    """`xenlab xentop`: `xl top` under xentop's own name."""
    p.add_argument("--rundir", type=Path, default=None,
                   help="the hypervisor's rundir (default $XENLAB_RUNDIR, else "
                        "$XDG_RUNTIME_DIR/xenlab, else /tmp/xenlab-UID)")
    p.add_argument("--hypervisor", metavar="ADDR", default=None,
                   help="the hypervisor's gRPC address (default: read from the rundir)")
    _top_args(p)


def xentop(args) -> int:
    toolstack = Toolstack(rundir=args.rundir, address=args.hypervisor)
    return run_command("xenlab", "xentop", lambda: cmd_top(args, toolstack))


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


def _migrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", dest="ssh_command", metavar="SSHCOMMAND", default=None,
                   help="run `SSHCOMMAND HOST xenlab xl migrate-receive` and migrate through "
                        "its standard input and output, as xl does (default for a HOST that is "
                        "neither a host of this pool nor a rundir: ssh). '' runs HOST itself as "
                        "the command")
    p.add_argument("-p", dest="paused", action="store_true",
                   help="leave the domain paused on the target (with -s)")
    p.add_argument("--live", action="store_true",
                   help="ignored, as xl ignores it: a migration is always live")
    _dom(p)
    p.add_argument("host", metavar="HOST",
                   help="the target: another host of this pool (its name), a rundir, or a host "
                        "SSHCOMMAND reaches")


def _migrate_receive_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", dest="paused", action="store_true",
                   help="leave the domain paused once received")
    p.add_argument("-e", dest="foreground", action="store_true",
                   help="accepted for xl's sake (this receiver never daemonizes)")


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
    "console": ("attach to a domain's console (Ctrl-] detaches)", _console_args, cmd_console),
    "network-attach": ("add a vif to a running domain", _attach_args, cmd_network_attach),
    "network-detach": ("remove a vif from a domain", _detach_args, cmd_network_detach),
    "network-list": ("list a domain's vifs", _network_list_args, cmd_network_list),
    "sysrq": ("send a sysrq to a domain", _sysrq_args, cmd_sysrq),
    "trigger": ("send a trigger to a domain", _trigger_args, cmd_trigger),
    "vcpu-list": ("list the vCPUs of domains: where each runs, its time and affinity",
                  _vcpu_list_args, cmd_vcpu_list),
    "vcpu-pin": ("set the CPUs a vCPU may run on (its thread's affinity)", _vcpu_pin_args,
                 cmd_vcpu_pin),
    "sched-credit": ("show or set credit scheduler weight and cap (through cgroups)", _sched_args,
                     _sched_cmd("credit")),
    "sched-credit2": ("show or set credit2 scheduler weight and cap (through cgroups)",
                      _sched_args, _sched_cmd("credit2")),
    "cpupool-list": ("list the CPU pools", _cpupool_list_args, cmd_cpupool_list),
    "cpupool-create": ("create a CPU pool of free CPUs", _cpupool_create_args, cmd_cpupool_create),
    "cpupool-destroy": ("remove a CPU pool that has no domains", _pool_arg, cmd_cpupool_destroy),
    "cpupool-cpu-add": ("add free CPUs to a CPU pool", _cpupool_cpus_args, cmd_cpupool_cpu_add),
    "cpupool-cpu-remove": ("take CPUs out of a CPU pool (they become free)", _cpupool_cpus_args,
                           cmd_cpupool_cpu_remove),
    "cpupool-migrate": ("move a domain into a CPU pool (its vCPUs then run on its CPUs)",
                        _cpupool_migrate_args, cmd_cpupool_migrate),
    "uptime": ("print the uptime of domains", _uptime_args, cmd_uptime),
    "domid": ("convert a domain name to a domain id", _domid_args, cmd_domid),
    "domname": ("convert a domain id to a domain name", _domname_args, cmd_domname),
    "rename": ("rename a domain", _rename_args, cmd_rename),
    "dmesg": ("print the hypervisor's log ring", _dmesg_args, cmd_dmesg),
    "top": ("monitor the domains: CPU, memory, vCPUs, network (xentop)", _top_args, cmd_top),
    "save": ("save a domain's state to a file (and destroy it)", _save_args, cmd_save),
    "restore": ("restore a domain from a saved state file", _restore_args, cmd_restore),
    "migrate": ("move a running domain to another host (live: pre-copy)", _migrate_args,
                cmd_migrate),
    "migrate-receive": ("receive a migrating domain on standard input (what xl migrate -s runs)",
                        _migrate_receive_args, cmd_migrate_receive),
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
