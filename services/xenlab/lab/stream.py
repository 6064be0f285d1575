"""A lab's events over gRPC, for clients without an MQTT broker: the
``Events`` streams of the hypervisor (domains, vifs) and of every bridge
service (FDB, ports, counters and rates), merged into one, with the topics
and payloads MQTT carries (docs/EVENTS.md).

Each service streams what its own sources publish, so the merge is the
lab's whole tree: Domain-0's per-vif counters and rates (``vif.stats``)
come from its kernel's stream, served beside its agent and behind the
agent's token. A Domain-0 started without events serves none, and is left
out rather than failing the merge.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
from typing import AsyncIterator, Callable, Sequence

import grpc

from xenlab.agent_client import NoAgentError, agent_for
from xenlab.bridge.client import registered_bridges
from xenlab.client import HypervisorClient
from xenlab.proto import events_pb2, events_pb2_grpc
from xenlab.rpc import CHANNEL_OPTIONS
from xenlab.xen.errors import XenError


class StreamError(XenError):
    """A service's stream could not start or broke off."""


def _refused(where: str, code: grpc.StatusCode, details: str) -> StreamError:
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return StreamError(errno.EOPNOTSUPP, f"{where} serves no event stream (started "
                                             f"without --events or --mqtt)")
    return StreamError(errno.EIO, f"{where}: {code.name}: {details}")


async def lab_events(hv: HypervisorClient, topics: Sequence[str] = (), retained: bool = True,
                     subscribed: Callable[[], None] | None = None,
                     ) -> AsyncIterator[events_pb2.Event]:
    """Every Event of the lab on `topics` (MQTT filters; none: all), the
    current states first (with `retained`), until the caller stops. Raises
    StreamError when a service has no stream or one breaks off (a service
    stopped). `subscribed` is called once every service has the
    subscription in place: what happens from then on is seen."""
    request = events_pb2.SubscribeRequest(topics=list(topics), no_retained=not retained)
    sources: list[tuple[str, events_pb2_grpc.EventsStub]] = [
        ("the hypervisor", events_pb2_grpc.EventsStub(hv.channel))]
    channels = []
    optional: set[str] = set()
    try:
        dom0 = await agent_for(hv, 0)
    except NoAgentError:
        dom0 = None
    if dom0 is not None:
        channels.append(dom0.channel)
        sources.append(("Domain-0", events_pb2_grpc.EventsStub(dom0.channel)))
        optional.add("Domain-0")
    for address in sorted(set((await registered_bridges(hv)).values())):
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        channels.append(channel)
        sources.append((f"the bridge service at {address}", events_pb2_grpc.EventsStub(channel)))
    # Bounded: a reader that falls behind holds the streams back, and a
    # service cuts off a subscriber that falls too far behind.
    queue: asyncio.Queue = asyncio.Queue(maxsize=1024)
    calls = [(where, stub.Subscribe(request)) for where, stub in sources]
    try:
        for where, call in list(calls):
            try:
                await call.initial_metadata()
                code = await call.code() if call.done() else grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            if code == grpc.StatusCode.UNIMPLEMENTED and where in optional:
                calls.remove((where, call))
                continue
            if code != grpc.StatusCode.OK:
                raise _refused(where, code, await call.details())
        if subscribed is not None:
            subscribed()
        pumps = [asyncio.create_task(_pump(where, call, queue)) for where, call in calls]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, StreamError):
                    raise item
                yield item
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
    finally:
        for _, call in calls:
            call.cancel()
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()


async def _pump(where: str, call, queue: asyncio.Queue) -> None:
    try:
        async for event in call:
            await queue.put(event)
    except grpc.aio.AioRpcError as err:
        await queue.put(_refused(where, err.code(), err.details()))
        return
    await queue.put(StreamError(errno.EPIPE, f"{where} ended its event stream (it stopped)"))
