"""`xenlab ip link`: iproute2's ip-link(8) for a domain's interfaces, with its
syntax, output and errors.

    xenlab ip [-n DOMAIN] link show [[dev] DEV]
    xenlab ip [-n DOMAIN] link set [dev] DEV {up|down}

Without -n the interfaces are Domain-0's, as `ip link` in dom0 shows them:
netback's vifs (vifD.N, each a port of its bridge) and the driver domain's
ends of their veth pairs (vethD.N, whose other end is the bridge's port).
With -n NAME (a domain's name or id, as `ip -n NETNS` names a namespace) they
are that domain's: netfront's eth0... Objects and commands may be
abbreviated as iproute2 allows (`ip l s`).

Setting a link down is a carrier change the other side sees (README, "Link
state"): a vif or veth end set down disables its bridge port and flushes
the port's FDB entries, and the guest's netfront loses its carrier with a
vif; a guest's eth0 set down takes the carrier from its vif in Domain-0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import grpc

from xenlab.agent_client import agent_for
from xenlab.cli.bridge import Usage, _main, garbage, matches
from xenlab.client import HypervisorClient, Rundir
from xenlab.net.link import DOWN, UP, LinkInfo, LinkState, format_link
from xenlab.proto import agent_pb2, common_pb2
from xenlab.xen.names import VIF_MAC

USAGE = """\
Usage: xenlab ip [-n DOMAIN] link show [[dev] DEV]
       xenlab ip [-n DOMAIN] link set [dev] DEV { up | down }
DOMAIN: a domain's name or id (default: Domain-0: its vifs and veth ends)"""


@dataclass(frozen=True)
class IpCommand:
    domain: str          # "" for Domain-0
    action: str          # "show" or "set"
    device: str = ""     # show: "" for every interface
    up: bool | None = None


def parse(argv: Sequence[str]) -> IpCommand:
    """The command line after `xenlab ip`; raises Usage (iproute2's words)."""
    args = list(argv)
    domain = ""
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt in ("-h", "-help", "--help"):
            raise Usage(USAGE, 0)
        if opt in ("-n", "-netns", "--netns"):
            if not args:
                raise Usage('Option "-n" needs an argument: a domain\'s name or id')
            domain = args.pop(0)
            if not domain:
                raise Usage("Option \"-n\": the domain's name or id is empty")
            if domain in ("0", "Domain-0"):
                domain = ""
            continue
        raise Usage(f'Option "{opt}" is unknown, try "xenlab ip -help".')
    if not args:
        raise Usage(USAGE)
    obj = args.pop(0)
    if obj == "help":
        raise Usage(USAGE, 0)
    if not matches(obj, "link"):
        raise Usage(f'Object "{obj}" is unknown, try "xenlab ip help".')
    if not args:
        return IpCommand(domain, "show")
    cmd = args.pop(0)
    if matches(cmd, "help"):
        raise Usage(USAGE, 0)
    # iplink.c's order: "s" is set.
    if matches(cmd, "set"):
        return _parse_set(domain, args)
    if matches(cmd, "show") or matches(cmd, "list") or matches(cmd, "lst"):
        return IpCommand(domain, "show", _show_device(args))
    raise Usage(f'Command "{cmd}" is unknown, try "xenlab ip link help".')


def _show_device(args: list[str]) -> str:
    device = ""
    while args:
        word = args.pop(0)
        if word == "dev":
            if not args:
                raise Usage('Error: argument "dev" needs a device name.')
            word = args.pop(0)
        if device:
            raise garbage(word, "dev")
        device = word
    return device


def _parse_set(domain: str, args: list[str]) -> IpCommand:
    device, up = "", None
    while args:
        word = args.pop(0)
        if word in (UP, DOWN):
            if up is not None:
                raise garbage(word, UP if up else DOWN)
            up = word == UP
            continue
        if word == "dev":
            if not args:
                raise Usage('Error: argument "dev" needs a device name.')
            word = args.pop(0)
        if device:
            raise garbage(word, "dev")
        device = word
    if not device:
        raise Usage('Not enough information: "dev" argument is required.')
    if up is None:
        # ip itself does nothing, silently; the only flag here is up/down.
        raise Usage(f'Error: nothing to set on "{device}": say "up" or "down".')
    return IpCommand(domain, "set", device, up)


def format_links(interfaces, driver_domain: bool = False) -> str:
    """The agent's InterfaceStats as `ip link show` prints them. In a driver
    domain a vif (the one with a master) shows its own address, as Linux's
    netback gives every vif, not its guest's (which the agent reports)."""
    links = sorted(interfaces, key=lambda s: (s.ifindex, s.name))
    return "\n".join(format_link(LinkInfo(s.ifindex, s.name, s.mtu,
                                          LinkState(s.admin_up, s.carrier),
                                          VIF_MAC if driver_domain and s.master else s.mac,
                                          s.master))
                     for s in links)


async def run_command(hv: HypervisorClient, cmd: IpCommand) -> str:
    """Carry out ``cmd`` through the domain's agent; what ip prints."""
    domid = 0
    if cmd.domain:
        ref = common_pb2.DomainRef(domid=int(cmd.domain)) if cmd.domain.isdigit() \
            else common_pb2.DomainRef(name=cmd.domain)
        domid = (await hv.domains.Info(ref)).domid
    agent = await agent_for(hv, domid)
    try:
        if cmd.action == "set":
            try:
                await agent.SetLink(agent_pb2.SetLinkRequest(interface=cmd.device, up=cmd.up))
            except grpc.aio.AioRpcError as err:
                if err.code() is grpc.StatusCode.NOT_FOUND:
                    raise Usage(f'Cannot find device "{cmd.device}"', 1) from None
                raise
            return ""
        try:
            reply = await agent.InterfaceStats(agent_pb2.StatsRequest(interface=cmd.device))
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.NOT_FOUND and cmd.device:
                raise Usage(f'Device "{cmd.device}" does not exist.', 1) from None
            raise
        return format_links(reply.interfaces, driver_domain=domid == 0)
    finally:
        await agent.close()


def ip_main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    async def work(rundir: Path, args: list[str]) -> int:
        cmd = parse(args)               # a mistake is reported before connecting
        r = Rundir(rundir)
        async with HypervisorClient.connect(r.read_address(), 0, r.read_dom0_secret()) as hv:
            text = await run_command(hv, cmd)
        if text:
            print(text)
        return 0
    return _main("ip", argv, env, work)
