"""Reaching a domain's guest agent, and showing what it answers.

    async with await agent_for(hv, 3) as agent:
        reply = await agent.Ping(agent_pb2.PingRequest(dst="10.0.0.2"))
        print(format_ping(reply, "10.0.0.2"))

The agent's address is what the domain published at
/local/domain/<domid>/data/agent. The agent asks for no credentials (it is
the guest's own, like a qemu guest agent), so the channel carries none.
"""
from __future__ import annotations

import math

import grpc

from xenlab.proto import agent_pb2_grpc, xenstore_pb2
from xenlab.rpc import CHANNEL_OPTIONS


class NoAgentError(LookupError):
    """The domain has published no agent address (not booted yet, or gone)."""


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
    return f"/local/domain/{domid}/data/agent"


async def agent_for(hv, domid: int) -> AgentStub:
    """A stub for domain ``domid``'s agent, found through xenstore with
    ``hv`` (a HypervisorClient allowed to read the domain's data/, e.g. dom0)."""
    key = agent_key(domid)
    try:
        reply = await hv.xenstore.Read(xenstore_pb2.PathRequest(path=key))
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            raise NoAgentError(f"domain {domid} has no guest agent yet ({key} is missing): "
                               f"is the domain running and booted?") from None
        raise
    address = reply.value.decode().strip()
    if not address:
        raise NoAgentError(f"domain {domid} has no guest agent yet ({key} is empty)")
    return AgentStub(grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS), address)


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


def ping_header(dst: str, size: int = 56) -> str:
    """ping(8)'s first line, printed before the first request goes out."""
    return f"PING {dst} ({dst}) {size}({size + ICMP_HEADER + IP_HEADER}) bytes of data."


def format_ping(reply, dst: str, size: int = 56, header: bool = True) -> str:
    """The text ping(8) prints for a PingReply: one line per reply (or per
    request the next hop never answered ARP for, from the sender's own
    address, as ping prints ICMP host unreachables), then the statistics.
    ``size`` is the ICMP payload the request asked for."""
    lines = [ping_header(dst, size)] if header else []
    for seq, rtt in zip(reply.seq, reply.rtt):
        lines.append(f"{size + ICMP_HEADER} bytes from {dst}: icmp_seq={seq} time={_ms(rtt)} ms")
    errors = 0
    if reply.unreachable:
        answered = set(reply.seq)
        unanswered = [seq for seq in range(1, reply.transmitted + 1) if seq not in answered]
        errors = len(unanswered)
        lines += [f"From {reply.src or dst} icmp_seq={seq} Destination Host Unreachable"
                  for seq in unanswered]
    elif reply.error:
        lines.append(f"ping: {reply.error}")
    lines += ["", f"--- {dst} ping statistics ---", _summary(reply, errors)]
    if reply.rtt:
        lines.append(_rtt_line(list(reply.rtt)))
    return "\n".join(lines)


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
