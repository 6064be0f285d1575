"""Quotas under floods (issue "Hostile input and faults", part 2, and
"Hold the boundaries").

An unprivileged domain floods one resource at a time through the gRPC API:
xenstore watches, nodes and transactions, watch streams and the bytes of
events queued on them; calls in flight; event-channel ports; grant entries;
grant mappings; memory. Each time the flood stops exactly at the quota with
a specific error (RESOURCE_EXHAUSTED, or the watch ack's EDQUOT), nothing is
half done (a refused batch leaves no entry behind), another domain still
gets what it asks for, the hypervisor's invariants hold, and destroying the
flooder gives everything back.
"""
from __future__ import annotations

import asyncio
import errno

import grpc
import pytest

from xenlab.proto import common_pb2, evtchn_pb2, grants_pb2, memory_pb2, xenstore_pb2
from xenlab.testing import call_each, check_invariants
from xenlab.testing.grants import GuestGrantTable

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


async def exhausted(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == EXHAUSTED, (err.value.code(), err.value.details())
    return err.value.details()


@pytest.fixture
async def pair(hypervisor):
    flooder = await hypervisor.create_domain("flooder")
    other = await hypervisor.create_domain("other")
    yield flooder, other
    await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=flooder[0]))
    hv = hypervisor.hv
    # Destroying the flooder gives back everything it held.
    assert hv.xenstore.node_count(flooder[0]) == 0
    assert hv.xenstore.watch_count(flooder[0]) == 0
    assert hv.xenstore.open_transactions(flooder[0]) == 0
    assert flooder[0] not in hv.evtchn.domains() and flooder[0] not in hv.grants.domains()
    in_flight = hypervisor.server.admission.in_flight.calls
    for _ in range(200):       # its streams end, each as the server sees it go
        if not hv.xs_connections.streams(flooder[0]) and not in_flight[flooder[0]]:
            break
        await asyncio.sleep(0.01)
    assert hv.xs_connections.streams(flooder[0]) == 0
    assert hv.xs_connections.queued_bytes(flooder[0]) == 0
    assert in_flight[flooder[0]] == 0
    check_invariants(hv)


def write(client, path: str, value: bytes = b"x", tx: int = 0):
    return client.xenstore.Write(xenstore_pb2.WriteRequest(path=path, value=value, tx=tx))


async def test_xenstore_nodes(hypervisor, pair):
    (domid, client), (other_id, other) = pair
    quota = hypervisor.hv.xenstore.quotas.nodes
    owned = hypervisor.hv.xenstore.node_count(domid)
    writes = [write(client, f"data/n{i}") for i in range(quota - owned)]
    await asyncio.gather(*writes)
    assert hypervisor.hv.xenstore.node_count(domid) == quota
    details = await exhausted(write(client, "data/one-more"))
    assert str(quota) in details
    # a transaction that would pass the quota is refused at commit, and leaves nothing
    await client.xenstore.Rm(xenstore_pb2.PathRequest(path="data/n0"))
    tx = (await client.xenstore.TransactionStart(common_pb2.Empty())).tx
    await write(client, "data/t0", tx=tx)
    await exhausted(write(client, "data/t1", tx=tx))
    await client.xenstore.TransactionEnd(xenstore_pb2.TransactionEndRequest(tx=tx, commit=True))
    assert hypervisor.hv.xenstore.node_count(domid) == quota
    # overwriting an existing node costs nothing; another domain is unaffected
    await write(client, "data/n1", b"y" * 2048)
    await exhausted(write(client, "data/n1", b"y" * 2049))
    await write(other, "data/fine")
    check_invariants(hypervisor.hv)


async def test_xenstore_transactions(hypervisor, pair):
    (domid, client), (other_id, other) = pair
    quota = hypervisor.hv.xenstore.quotas.transactions
    txs = [(await client.xenstore.TransactionStart(common_pb2.Empty())).tx for _ in range(quota)]
    await exhausted(client.xenstore.TransactionStart(common_pb2.Empty()))
    await other.xenstore.TransactionStart(common_pb2.Empty())
    await client.xenstore.TransactionEnd(xenstore_pb2.TransactionEndRequest(tx=txs[0]))
    await client.xenstore.TransactionStart(common_pb2.Empty())
    assert hypervisor.hv.xenstore.open_transactions(domid) == quota
    check_invariants(hypervisor.hv)


async def watch_acks(stream, controls) -> list:
    for control in controls:
        await stream.write(control)
    acks = []
    while len(acks) < len(controls):
        event = await asyncio.wait_for(stream.read(), 10)
        if event.ack:
            acks.append(event)
    return acks


async def test_xenstore_watches(hypervisor, pair):
    (domid, client), (other_id, other) = pair
    quota = hypervisor.hv.xenstore.quotas.watches
    stream = client.xenstore.WatchStream()
    controls = [xenstore_pb2.WatchControl(path=f"data/w{i}", token=f"t{i}")
                for i in range(quota + 20)]
    acks = await watch_acks(stream, controls)
    refused = [a for a in acks if a.error]
    assert len(refused) == 20 and {a.errno for a in refused} == {errno.EDQUOT}
    assert hypervisor.hv.xenstore.watch_count(domid) == quota
    # a second connection counts against the same domain
    second = client.xenstore.WatchStream()
    (ack,) = await watch_acks(second, [xenstore_pb2.WatchControl(path="data", token="x")])
    assert ack.errno == errno.EDQUOT
    other_stream = other.xenstore.WatchStream()
    (ack,) = await watch_acks(other_stream, [xenstore_pb2.WatchControl(path="data", token="x")])
    assert not ack.error
    check_invariants(hypervisor.hv)
    for s in (stream, second, other_stream):
        s.cancel()
    await asyncio.sleep(0.1)
    assert hypervisor.hv.xenstore.watch_count(domid) == 0


async def test_event_channel_ports(hypervisor, pair):
    (domid, client), (other_id, other) = pair
    max_ports = hypervisor.hv.evtchn.max_ports(domid)
    request = evtchn_pb2.AllocUnboundRequest(dom=domid, remote_dom=other_id)
    ports = await call_each(lambda _: client.evtchn.AllocUnbound(request),
                            range(max_ports - 1 - len(hypervisor.hv.evtchn.ports(domid))))
    assert len({p.port for p in ports}) == len(ports)
    await exhausted(client.evtchn.AllocUnbound(request))
    await exhausted(client.evtchn.BindIpi(evtchn_pb2.BindIpiRequest(vcpu=0)))
    # the peer is not affected: it can still allocate, and bind what it was offered
    await other.evtchn.AllocUnbound(evtchn_pb2.AllocUnboundRequest(dom=other_id, remote_dom=0))
    await other.evtchn.BindInterdomain(evtchn_pb2.BindInterdomainRequest(
        remote_dom=domid, remote_port=ports[0].port))
    check_invariants(hypervisor.hv)
    await client.evtchn.Reset(evtchn_pb2.ResetRequest(dom=domid))
    assert hypervisor.hv.evtchn.ports(domid) == []
    check_invariants(hypervisor.hv)      # the peer's end went back to unbound


async def test_grant_frames(hypervisor, pair):
    """A domain's grant table costs the hypervisor its frames' bookkeeping
    only, up to max_grant_frames; the entries are the domain's own writes."""
    (domid, client), (other_id, other) = pair
    size = await client.grants.QuerySize(common_pb2.Empty())
    gfns = sorted(hypervisor.hv.memory.populated(domid))[-size.max_nr_frames - 1:]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.grants.SetupTable(grants_pb2.SetupTableRequest(gfns=gfns))
    assert "at most" in err.value.details()
    table = await GuestGrantTable.setup(hypervisor.hv, client, frames=size.max_nr_frames)
    while table.refs.free:
        table.grant(other_id, 100)
    info = await client.grants.Query(common_pb2.DomainRef(domid=domid))
    assert info.entries_in_use == info.max_entries - 8     # refs 0..7 are the toolstack's
    # the peer is not affected: it sets up its own table and grants
    theirs = await GuestGrantTable.setup(hypervisor.hv, other)
    theirs.grant(domid, 100)
    check_invariants(hypervisor.hv)
    table.release()
    theirs.release()


async def test_grant_mappings(hypervisor, pair):
    (domid, client), (other_id, other) = pair
    limit = hypervisor.hv.grants.max_maptrack
    table = await GuestGrantTable.setup(hypervisor.hv, other, frames=3)
    refs = [table.grant(domid, 100 + i % 64, readonly=True) for i in range(limit + 10)]
    # a flood, without 1024 calls in flight
    maps = await call_each(lambda ref: client.grants.Map(grants_pb2.MapGrantRequest(
        domid=other_id, ref=ref, readonly=True)), refs[:limit], in_flight=64)
    await exhausted(client.grants.Map(grants_pb2.MapGrantRequest(domid=other_id, ref=refs[-1],
                                                                 readonly=True)))
    # the granter still owns its table: it cannot end what is mapped, but can grant more
    assert not table.end(refs[0])
    table.grant(0, 100)
    check_invariants(hypervisor.hv)
    await asyncio.gather(*(client.grants.Unmap(grants_pb2.UnmapGrantRequest(handle=m.handle))
                           for m in maps[:10]))
    await client.grants.Map(grants_pb2.MapGrantRequest(domid=other_id, ref=refs[-1], readonly=True))
    check_invariants(hypervisor.hv)
    table.release()


async def test_memory(hypervisor, pair):
    (domid, client), (other_id, other) = pair
    res = await client.memory.GetReservation(common_pb2.DomainRef(domid=domid))
    assert res.current_pages == res.max_pages
    await exhausted(client.memory.IncreaseReservation(memory_pb2.IncreaseReservationRequest(
        domid=domid, nr_pages=1)))
    await exhausted(client.memory.IncreaseReservation(memory_pb2.IncreaseReservationRequest(
        domid=domid, nr_pages=(1 << 64) - 1)))
    free = hypervisor.hv.memory.free_pages
    # giving pages back and taking them again stays within the maximum
    gfns = list(range(3000, 3100))
    await client.memory.DecreaseReservation(memory_pb2.DecreaseReservationRequest(
        domid=domid, gfns=gfns))
    assert hypervisor.hv.memory.free_pages == free + len(gfns)
    await client.memory.IncreaseReservation(memory_pb2.IncreaseReservationRequest(
        domid=domid, gfns=gfns))
    await exhausted(client.memory.IncreaseReservation(memory_pb2.IncreaseReservationRequest(
        domid=domid, nr_pages=1)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.memory.IncreaseReservation(memory_pb2.IncreaseReservationRequest(
            domid=other_id, nr_pages=1))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    check_invariants(hypervisor.hv)


async def test_xenstore_watch_streams(hypervisor, pair):
    (domid, client), (other_id, other) = pair
    most = hypervisor.hv.xs_connections.quotas.watch_streams
    streams = [client.xenstore.WatchStream() for _ in range(most)]
    for i, stream in enumerate(streams):
        (ack,) = await watch_acks(stream, [xenstore_pb2.WatchControl(path="data", token=f"s{i}")])
        assert not ack.error
    extra = client.xenstore.WatchStream()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await watch_acks(extra, [xenstore_pb2.WatchControl(path="data", token="x")])
    assert err.value.code() == EXHAUSTED and f"{most} watch streams" in err.value.details()
    assert hypervisor.hv.xs_connections.streams(domid) == most
    other_stream = other.xenstore.WatchStream()
    (ack,) = await watch_acks(other_stream, [xenstore_pb2.WatchControl(path="data", token="o")])
    assert not ack.error
    check_invariants(hypervisor.hv)
    other_stream.cancel()


async def test_xenstore_watch_event_bytes(hypervisor, pair):
    (domid, client), (other_id, other) = pair
    connections = hypervisor.hv.xs_connections
    budget = connections.quotas.watch_event_bytes
    stream = client.xenstore.WatchStream()
    tokens = [f"{i:03d}".ljust(4096, "t") for i in range(16)]
    acks = await watch_acks(stream, [xenstore_pb2.WatchControl(path="data", token=t)
                                     for t in tokens])
    assert not any(a.error for a in acks)
    # nobody reads: events pile up to the budget, then the stream is closed
    stem = f"/local/domain/{domid}/data/" + "n" * 3000
    for i in range(200):
        await write(client, f"{stem}{i:03d}")
        assert connections.queued_bytes(domid) <= budget
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while True:
            await asyncio.wait_for(stream.read(), 10)
    assert err.value.code() == EXHAUSTED and "bytes of events queued" in err.value.details()
    assert connections.queued_bytes(domid) == 0
    other_stream = other.xenstore.WatchStream()
    (ack,) = await watch_acks(other_stream, [xenstore_pb2.WatchControl(path="data", token="o")])
    assert not ack.error
    check_invariants(hypervisor.hv)
    other_stream.cancel()


async def test_calls_in_flight(hypervisor, pair):
    (domid, client), (other_id, other) = pair
    admission = hypervisor.server.admission
    most = admission.limits.in_flight
    streams = [client.evtchn.Upcalls(common_pb2.Empty()) for _ in range(most)]
    for stream in streams:
        await stream.read()
    assert admission.in_flight.calls[domid] == most
    await exhausted(client.xenstore.Read(xenstore_pb2.PathRequest(path="name")))
    # the peer and Domain-0 are served as before
    await other.xenstore.Read(xenstore_pb2.PathRequest(path="name"))
    await hypervisor.dom0.xenstore.Read(xenstore_pb2.PathRequest(path="/local/domain/0/name"))
    check_invariants(hypervisor.hv)
