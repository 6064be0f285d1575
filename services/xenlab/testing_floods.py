"""Floods of the hypervisor, for the security review's soak (``xenlab
hostile-soak``) and its tests: each is one way a domain tried to stall the
hypervisor for everyone (issue "Hold the boundaries"), and returns what its
calls got, by gRPC status name. They attack the transport itself (message
sizes, calls and streams held open, datagrams on the doorbell), so they
speak gRPC, unlike the hostile peers of xenlab.testing_hostile, which act
through the typed hypercall layer.
"""
from __future__ import annotations

import asyncio
import collections
import mmap
import os
import socket as socket_

import grpc

from xenlab import eventloop
from xenlab.client import HypervisorClient
from xenlab.domain.hypercall.memory import MemoryOps
from xenlab.proto import common_pb2, evtchn_pb2, grants_pb2, memory_pb2, xenstore_pb2, xenstore_pb2_grpc
from xenlab.rpc import CHANNEL_OPTIONS
from xenlab.xen import abi
from xenlab.xen import doorbell as wire
from xenlab.xen.grant_table import GrantFrames

WAIT = 10.0                # seconds before a peer that never answers is a hang


# -- floods of the hypervisor ---------------------------------------------------------------------
# Each is one way a domain tried to stall the hypervisor for everyone
# (issue "Hold the boundaries"); each returns what its calls got, by status
# name. ``client`` is a HypervisorClient acting as the hostile domain. With
# ``stop`` a flood goes on until it is set, else it runs ``rounds`` times:
# a soak runs them all at once while other domains work.

async def _outcome(call) -> str:
    try:
        await call
        return "OK"
    except grpc.aio.AioRpcError as err:
        return err.code().name


def _rounds(rounds: int, stop: asyncio.Event | None):
    count = 0
    while (stop is None and count < rounds) or (stop is not None and not stop.is_set()):
        yield count
        count += 1


async def fill_grant_table(client, peer: int | None = None) -> int:
    """Give the domain's grant table its most frames (GNTTABOP_setup_table
    on frames of its own) and grant one frame in every entry, writing the
    entries in its memory as its kernel would; the number of entries
    granted."""
    peer = client.domid if peer is None else peer
    mm = await MemoryOps(client.memory, client.domid).memory_map(with_populated=True)
    size = await client.grants.QuerySize(common_pb2.Empty())
    have = list(mm.populated)[:size.max_nr_frames + 1]
    frames, granted = have[1:], have[0]
    await client.grants.SetupTable(grants_pb2.SetupTableRequest(gfns=frames))
    fd = os.open(mm.shm_path, os.O_RDWR)
    try:
        segment = mmap.mmap(fd, 0)
    finally:
        os.close(fd)
    table = GrantFrames(memoryview(segment)[mm.first_frame_offset + gfn * abi.PAGE_SIZE:]
                        [:abi.PAGE_SIZE] for gfn in frames)
    try:
        for ref in range(abi.GNTTAB_NR_RESERVED_ENTRIES, table.nr_entries):
            table.grant(ref, peer, granted, readonly=True)
        return table.nr_entries - abi.GNTTAB_NR_RESERVED_ENTRIES
    finally:
        table.release()
        segment.close()


async def decrease_reservation_flood(client, *, gfns: int = 8000, rounds: int = 3,
                                     stop: asyncio.Event | None = None,
                                     fill: bool = True) -> collections.Counter:
    """A full grant table, then DecreaseReservation calls of ``gfns`` frames
    (16 KB of request for 8000) whose last gfn is outside the domain, so that
    each fails on its last gfn and frees nothing: when every gfn was checked
    against every grant entry, each call froze the hypervisor for 4-7 s."""
    if fill:                        # else the caller filled it already
        await fill_grant_table(client)
    request = memory_pb2.DecreaseReservationRequest(
        domid=client.domid, gfns=list(range(2000, 2000 + gfns - 1)) + [1 << 40])
    out: collections.Counter = collections.Counter()
    for _ in _rounds(rounds, stop):
        out[await _outcome(client.memory.DecreaseReservation(request))] += 1
    return out


async def grant_copy_flood(client, *, ops: int = 500_000, rounds: int = 1,
                           stop: asyncio.Event | None = None) -> collections.Counter:
    """GrantTable.Copy calls of ``ops`` copies between two of the domain's
    own frames (500k ops froze the hypervisor for 4.5-6 s)."""
    frame = grants_pb2.GrantCopyOp(source=grants_pb2.CopyPtr(domid=abi.DOMID_SELF, gfn=1000),
                                   dest=grants_pb2.CopyPtr(domid=abi.DOMID_SELF, gfn=1001), len=8)
    request = grants_pb2.GrantCopyRequest(ops=[frame] * ops)
    out: collections.Counter = collections.Counter()
    for _ in _rounds(rounds, stop):
        out[await _outcome(client.grants.Copy(request))] += 1
    return out


async def oversized_message_flood(address: str, *, calls: int = 16, size: int = 60 << 20,
                                  credentials=(), rounds: int = 1,
                                  stop: asyncio.Event | None = None) -> collections.Counter:
    """``calls`` concurrent XenStore.Write calls of ``size`` bytes each, with
    the given credentials metadata (none by default): when credentials were
    checked after the body arrived, 16 x 60 MiB took the hypervisor's RSS to
    1-2 GiB for good."""
    out: collections.Counter = collections.Counter()
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = xenstore_pb2_grpc.XenStoreStub(channel)
        request = xenstore_pb2.WriteRequest(path="data/big", value=b"\xee" * size)
        for _ in _rounds(rounds, stop):
            results = await asyncio.gather(*(
                _outcome(stub.Write(request, metadata=tuple(credentials), timeout=60))
                for _ in range(calls)))
            out.update(results)
    return out


async def concurrent_call_flood(client, *, calls: int = 5000, rounds: int = 1,
                                stop: asyncio.Event | None = None,
                                hold: float | None = None) -> collections.Counter:
    """``calls`` XenStore.Read calls at once from one domain, half of them
    held open as Upcalls streams: grpc-core's queue of calls not yet picked
    up overflowed and cancelled Domain-0's own reads. A stream the
    hypervisor admitted is held until its first upcall, or ``hold`` seconds
    at most ("held")."""
    out: collections.Counter = collections.Counter()
    await client.xenstore.Write(xenstore_pb2.WriteRequest(path="data/flood", value=b"x"))
    read = xenstore_pb2.PathRequest(path="data/flood")
    for _ in _rounds(rounds, stop):
        streams = [client.evtchn.Upcalls(common_pb2.Empty()) for _ in range(calls // 2)]

        async def first(stream) -> str:
            try:
                await eventloop.wait_for(stream.read(), hold)
                return "OK"
            except asyncio.TimeoutError:
                return "held"
            except grpc.aio.AioRpcError as err:
                return err.code().name
        results = await asyncio.gather(*(first(s) for s in streams),
                                       *(_outcome(client.xenstore.Read(read))
                                         for _ in range(calls - len(streams))))
        out.update(results)
        for stream in streams:
            stream.cancel()
    return out


# A client that takes in no more than it must: no BDP probing, a small
# look-ahead, so that events it does not read stay with the hypervisor.
_NOT_READING = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]


async def watch_event_flood(address: str, domid: int, secret: str, *, streams: int = 128,
                            token_size: int = 4096, path_size: int = 3072, writes: int = 4000,
                            nodes: int = 500, in_flight: int = 32,
                            stop: asyncio.Event | None = None,
                            quiet: float = 0.5) -> collections.Counter:
    """``streams`` WatchStreams that never read, watching the domain's data
    directory with ``token_size``-byte tokens (as many watches as its quota
    allows), then ``writes`` writes to ``nodes`` nodes of ``path_size``-byte
    paths under it: every write queued an event per watch, 128 x 4000 of
    them took the hypervisor from 138 MiB to 3.3 GiB in 27 s. Outcomes:
    each write's status, and how each stream ended once read at last
    ("open" if it stayed ``quiet`` seconds without ending). A set ``stop``
    ends the writes early (the streams are still read and closed)."""
    async with HypervisorClient.connect(address, domid, secret,
                                        [*CHANNEL_OPTIONS, *_NOT_READING]) as client:
        return await _watch_event_flood(client, streams, token_size, path_size, writes, nodes,
                                        in_flight, stop, quiet)


async def _watch_event_flood(client, streams: int, token_size: int, path_size: int, writes: int,
                             nodes: int, in_flight: int,
                             stop: asyncio.Event | None = None,
                             quiet: float = 0.5) -> collections.Counter:
    home = f"/local/domain/{client.domid}/data"
    stem = f"{home}/" + "w" * max(1, path_size - len(home) - 8)
    calls = [client.xenstore.WatchStream() for _ in range(streams)]
    out: collections.Counter = collections.Counter()
    for i in range(max(streams, 128)):
        control = xenstore_pb2.WatchControl(path=home, token=f"{i:06d}".ljust(token_size, "t"))
        try:
            await calls[i % streams].write(control)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            out["watch_write_failed"] += 1
    write = [xenstore_pb2.WriteRequest(path=f"{stem}{n:06d}", value=b"v") for n in range(nodes)]
    for start in range(0, writes, in_flight):
        if stop is not None and stop.is_set() and start:
            break
        out.update(f"write {status}" for status in await asyncio.gather(*(
            _outcome(client.xenstore.Write(write[i % nodes]))
            for i in range(start, min(writes, start + in_flight)))))
    for call in calls:
        out[f"stream {await _stream_end(call, quiet)}"] += 1
        call.cancel()
    return out


async def _stream_end(call, quiet: float = 0.5) -> str:
    """Read what a stream has for us until it ends (its status) or stays
    quiet for ``quiet`` seconds ("open")."""
    while True:
        try:
            event = await eventloop.wait_for(call.read(), quiet)
        except asyncio.TimeoutError:
            return "open"
        except grpc.aio.AioRpcError as err:
            return err.code().name
        except asyncio.InvalidStateError:
            return (await call.code()).name
        if event is grpc.aio.EOF:
            return (await call.code()).name


async def bind_ipis(client, ports: int) -> list[int]:
    """``ports`` IPI ports the domain binds to itself."""
    return [(await client.evtchn.BindIpi(evtchn_pb2.BindIpiRequest(vcpu=0))).port
            for _ in range(ports)]


async def doorbell_storm(client, secret: str, doorbell: str, *, ports: int = 600,
                         datagrams: int = 20000, stop: asyncio.Event | None = None,
                         bound: list[int] | None = None) -> collections.Counter:
    """SEND datagrams of 512 ports each, as fast as the doorbell socket
    takes them, on ``ports`` IPI ports the domain binds to itself (or the
    ports already ``bound``; the upcalls they raise are never read): when
    the router's budget counted datagrams, this took another pair's ping
    RTT from 3 ms to 0.5-1.3 s."""
    if bound is None:
        bound = await bind_ipis(client, ports)
    sock = socket_.socket(socket_.AF_UNIX, socket_.SOCK_SEQPACKET)
    out: collections.Counter = collections.Counter()
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, doorbell)
        sock.send(wire.Hello(client.domid, secret).encode())
        reply = wire.decode(await eventloop.wait_for(
            asyncio.get_running_loop().sock_recv(sock, wire.MAX_DATAGRAM + 1), WAIT))
        if not isinstance(reply, wire.Ok):
            out["hello refused"] += 1
            return out
        batches = [wire.Send(tuple(bound[i:i + wire.MAX_SEND_BATCH])).encode()
                   for i in range(0, len(bound), wire.MAX_SEND_BATCH)]
        for n in _rounds(datagrams, stop):
            try:
                sock.send(batches[n % len(batches)])
                out["sent"] += 1
            except BlockingIOError:
                out["socket full"] += 1
                await asyncio.sleep(0.001)
            except OSError:
                out["closed"] += 1
                break
            if n % 64 == 0:
                await asyncio.sleep(0)
    finally:
        sock.close()
    return out
