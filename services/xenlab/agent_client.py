"""Reaching a domain's guest agent, and showing what it answers.

    async with await agent_for(hv, 3) as agent:
        reply = await agent.Ping(agent_pb2.PingRequest(dst="10.0.0.2"))
        print(format_ping(reply, "10.0.0.2"))

Where the agent listens and the token it asks for are the toolstack's own
record (/libxl/<domid>/agent, Domain-0's alone), written when the domain was
created from what its launcher decided: nothing the guest wrote is taken for
where to connect. The guest's /local/domain/<domid>/data/agent only says that
its agent is up.
"""
from __future__ import annotations

import ipaddress
import json
import math

import grpc

from xenlab.client import metadata_channel
from xenlab.proto import agent_pb2, agent_pb2_grpc, common_pb2, xenstore_pb2
from xenlab.rpc import CHANNEL_OPTIONS
from xenlab.xen.xenstore_paths import agent_record_path

AGENT_TOKEN_MD = "xenlab-agent-token"     # the metadata every GuestAgent call carries

# A domU's agent is socket-activated (xenlab.domain.agent_activation): its
# gRPC server stops after an idle period, and a connection made to it just
# before, whose call the busy domain did not read before the server stopped,
# ends UNAVAILABLE with nothing done. gRPC's own retry policy makes the call
# again (the next attempt wakes the agent); a call the server had begun
# keeps the agent up, so it is never the one retried.
AGENT_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "xenlab.proto.GuestAgent"}],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "1s",
                    "backoffMultiplier": 3, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})
AGENT_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.enable_retries", 1),
                         ("grpc.service_config", AGENT_SERVICE_CONFIG)]


class NoAgentError(LookupError):
    """The domain has no guest agent yet (not booted, or gone), or none at all."""


class AgentStub(agent_pb2_grpc.GuestAgentStub):
    """A GuestAgentStub that owns its channel: close it, or use ``async with``."""

    def __init__(self, channel: grpc.aio.Channel, address: str):
        super().__init__(channel)
        self.channel = channel
        self.address = address

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AgentStub:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def agent_key(domid: int) -> str:
    """The node the guest writes once its agent is up."""
    return f"/local/domain/{domid}/data/agent"


def agent_channel(address: str, token: str, options=AGENT_CHANNEL_OPTIONS) -> grpc.aio.Channel:
    """A channel to a guest agent whose every call presents ``token``."""
    return metadata_channel(address, ((AGENT_TOKEN_MD, token),), options)


async def _read(hv, path: str) -> str | None:
    try:
        reply = await hv.xenstore.Read(xenstore_pb2.PathRequest(path=path))
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return reply.value.decode(errors="replace").strip()


async def agent_for(hv, domid: int) -> AgentStub:
    """A stub for domain ``domid``'s agent, through ``hv``, a HypervisorClient
    acting as the toolstack (Domain-0): only it may read the record."""
    record = agent_record_path(domid)
    address, token = await _read(hv, f"{record}/address"), await _read(hv, f"{record}/token")
    if not address or not token:
        raise NoAgentError(f"domain {domid} has no guest agent: the toolstack has no record "
                           f"of one ({record}); is it a running domain?")
    if not await _read(hv, agent_key(domid)):
        raise NoAgentError(f"domain {domid} has no guest agent yet ({agent_key(domid)} is "
                           f"missing): is the domain running and booted?")
    return AgentStub(agent_channel(address, token), address)


# -- domain names as destinations -------------------------------------------------------

class ResolveError(LookupError):
    """A destination that names no domain, or a domain with no IPv4 address."""


def pick_address(sources: list[str], targets: list[tuple[str, str]]) -> str | None:
    """The address to reach a domain at, as a host resolving a name with
    several addresses would prefer one: an address on a subnet the source
    is on (``sources``: its interfaces' "A.B.C.D/LEN"), else the target's
    first interface's (``targets``: (interface, "A.B.C.D/LEN")), reached
    through a gateway."""
    networks = []
    for text in sources:
        try:
            networks.append(ipaddress.IPv4Interface(text).network)
        except ValueError:
            continue
    addressed = []
    for name, text in targets:
        try:
            addressed.append((name, ipaddress.IPv4Interface(text)))
        except ValueError:
            continue
    for _, address in sorted(addressed, key=lambda row: _iface_order(row[0])):
        if any(address.ip in network for network in networks):
            return str(address.ip)
    if not addressed:
        return None
    return str(min(addressed, key=lambda row: _iface_order(row[0]))[1].ip)


def _iface_order(name: str) -> tuple:
    """eth0 before eth1 before eth10."""
    digits = name.lstrip("abcdefghijklmnopqrstuvwxyz")
    return (name[:len(name) - len(digits)], int(digits) if digits.isdigit() else 0, name)


async def interface_addresses(agent) -> list[tuple[str, str]]:
    """(interface, "A.B.C.D/LEN") of each interface the guest has an address on."""
    reply = await agent.InterfaceStats(agent_pb2.StatsRequest())
    return [(i.name, i.ip) for i in reply.interfaces if i.ip]


async def resolve_destination(hv, source_agent, dest: str) -> tuple[str, str]:
    """``dest`` as (IPv4 address, the name to show): an address as it is, else
    a domain's name or id, whose guest agent says which addresses it has
    (the ip= on its kernel command line gave them). Raises ResolveError."""
    try:
        return str(ipaddress.IPv4Address(dest)), ""
    except ValueError:
        pass
    ref = common_pb2.DomainRef(domid=int(dest)) if dest.isascii() and dest.isdigit() \
        else common_pb2.DomainRef(name=dest)
    try:
        info = await hv.domains.Info(ref)
    except grpc.aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise ResolveError(f"{dest!r} is neither an IPv4 address nor a domain of the lab "
                               f"(xenlab xl list shows them)") from None
        raise
    try:
        target = await agent_for(hv, info.domid)
    except NoAgentError as err:
        raise ResolveError(f"cannot tell {info.name}'s address: {err}") from None
    async with target:
        targets = await interface_addresses(target)
    if not targets:
        raise ResolveError(f"{info.name} (domain {info.domid}) has no IPv4 address on any "
                           f"interface")
    sources = [text for _, text in await interface_addresses(source_agent)]
    return pick_address(sources, targets), info.name


# -- ping(8)-like output ----------------------------------------------------------------

ICMP_HEADER = 8
IP_HEADER = 20


def _ms(seconds: float) -> str:
    """An RTT as iputils ping prints it: three significant places below 100 ms."""
    ms = seconds * 1000.0
    if ms < 1:
        return f"{ms:.3f}"
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def ping_header(dst: str, size: int = 56, name: str = "") -> str:
    """ping(8)'s first line, printed before the first request goes out
    (``name``: the name ``dst`` was resolved from)."""
    return f"PING {name or dst} ({dst}) {size}({size + ICMP_HEADER + IP_HEADER}) bytes of data."


def format_ping(reply, dst: str, size: int = 56, header: bool = True, name: str = "") -> str:
    """The text ping(8) prints for a PingReply: one line per reply (or per
    request the next hop never answered ARP for, from the sender's own
    address, as ping prints ICMP host unreachables), then the statistics.
    ``size`` is the ICMP payload the request asked for; ``name``, the name
    ``dst`` was resolved from (ping prints both)."""
    lines = [ping_header(dst, size, name)] if header else []
    peer = f"{name} ({dst})" if name else dst
    rows = [(seq, f"{size + ICMP_HEADER} bytes from {peer}: icmp_seq={seq} time={_ms(rtt)} ms")
            for seq, rtt in zip(reply.seq, reply.rtt)]
    rows += [(e.seq, f"From {e.src} icmp_seq={e.seq} {icmp_error_text(e.type, e.code)}")
             for e in reply.errors]
    lines += [text for _, text in sorted(rows, key=lambda row: row[0])]
    errors = len(reply.errors)
    if reply.unreachable:
        answered = set(reply.seq) | {e.seq for e in reply.errors}
        unanswered = [seq for seq in range(1, reply.transmitted + 1) if seq not in answered]
        errors += len(unanswered)
        lines += [f"From {reply.src or dst} icmp_seq={seq} Destination Host Unreachable"
                  for seq in unanswered]
    elif reply.error:
        lines.append(f"ping: {reply.error}")
    lines += ["", f"--- {name or dst} ping statistics ---", _summary(reply, errors)]
    if reply.rtt:
        lines.append(_rtt_line(list(reply.rtt)))
    return "\n".join(lines)


# How ping(8) (iputils' pr_icmph) names the ICMP errors it prints.
_ICMP_ERROR_TEXT = {
    (3, 0): "Destination Net Unreachable", (3, 1): "Destination Host Unreachable",
    (3, 2): "Destination Protocol Unreachable", (3, 3): "Destination Port Unreachable",
    (3, 4): "Frag needed and DF set", (11, 0): "Time to live exceeded",
    (11, 1): "Frag reassembly time exceeded",
}


def icmp_error_text(type_: int, code: int) -> str:
    if (type_, code) in _ICMP_ERROR_TEXT:
        return _ICMP_ERROR_TEXT[(type_, code)]
    if type_ == 3:
        return f"Dest Unreachable, Bad Code: {code}"
    if type_ == 12:
        return "Parameter problem"
    return f"Bad ICMP type: {type_}"


def _summary(reply, errors: int = 0) -> str:
    loss = 0.0
    if reply.transmitted:
        loss = (reply.transmitted - reply.received) * 100.0 / reply.transmitted
    return (f"{reply.transmitted} packets transmitted, {reply.received} received, "
            + (f"+{errors} errors, " if errors else "") + f"{loss:g}% packet loss")


def _rtt_line(rtts: list[float]) -> str:
    ms = [r * 1000.0 for r in rtts]
    mean = sum(ms) / len(ms)
    # ping's mdev: the standard deviation sqrt(E[x^2] - E[x]^2).
    mdev = math.sqrt(max(0.0, sum(x * x for x in ms) / len(ms) - mean * mean))
    return f"rtt min/avg/max/mdev = {min(ms):.3f}/{mean:.3f}/{max(ms):.3f}/{mdev:.3f} ms"
