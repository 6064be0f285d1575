"""XenStore over real gRPC: each refusal is its own status code with a
message, the server keeps serving afterwards, and watches arrive on a
WatchStream."""
from __future__ import annotations

import asyncio
import errno

import grpc
import pytest

from xenlab.hypervisor.identity import Caller
from xenlab.hypervisor.xenstore_server import XenStoreConnection, XenStoreConnections
from xenlab.proto import common_pb2, xenstore_pb2 as xs_pb

pytestmark = pytest.mark.timeout(60)


async def refused(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert info.value.details()
    return info.value.details()


async def still_serving(client) -> None:
    reply = await client.xenstore.Directory(xs_pb.PathRequest(path="/local/domain"))
    assert "0" in reply.names


class WatchSession:
    """One WatchStream, with helpers to send controls and read events."""

    def __init__(self, client) -> None:
        self.outgoing: asyncio.Queue = asyncio.Queue()
        self.call = client.xenstore.WatchStream(self._requests())

    async def _requests(self):
        while True:
            yield await self.outgoing.get()

    async def next(self) -> xs_pb.WatchEvent:
        return await asyncio.wait_for(self.call.read(), 10)

    async def control(self, op, path: str, token: str) -> xs_pb.WatchEvent:
        await self.outgoing.put(xs_pb.WatchControl(op=op, path=path, token=token))
        ack = await self.next()
        assert ack.ack and ack.path == path and ack.token == token
        return ack

    async def watch(self, path: str, token: str) -> xs_pb.WatchEvent:
        return await self.control(xs_pb.WatchControl.WATCH, path, token)

    def close(self) -> None:
        self.call.cancel()


async def test_read_write_directory_and_perms(hypervisor):
    dom0 = hypervisor.dom0.xenstore
    await dom0.Write(xs_pb.WriteRequest(path="/tool/xenlab/a", value=b"\x00\x01"))
    assert (await dom0.Read(xs_pb.PathRequest(path="/tool/xenlab/a"))).value == b"\x00\x01"
    assert list((await dom0.Directory(xs_pb.PathRequest(path="/tool/xenlab"))).names) == ["a"]
    await dom0.SetPerms(xs_pb.SetPermsRequest(path="/tool/xenlab/a", perms=[
        xs_pb.Perm(domid=0, perm="n"), xs_pb.Perm(domid=3, perm="r")]))
    perms = (await dom0.GetPerms(xs_pb.PathRequest(path="/tool/xenlab/a"))).perms
    assert [(p.domid, p.perm) for p in perms] == [(0, "n"), (3, "r")]
    await dom0.Mkdir(xs_pb.PathRequest(path="/tool/xenlab/dir"))
    await dom0.Rm(xs_pb.PathRequest(path="/tool/xenlab"))
    await refused(dom0.Read(xs_pb.PathRequest(path="/tool/xenlab")), grpc.StatusCode.NOT_FOUND)


async def test_domain_uses_relative_paths_in_its_home(hypervisor):
    domid, client = await hypervisor.create_domain("rel")
    await client.xenstore.Write(xs_pb.WriteRequest(path="data/hello", value=b"hi"))
    reply = await hypervisor.dom0.xenstore.Read(
        xs_pb.PathRequest(path=f"/local/domain/{domid}/data/hello"))
    assert reply.value == b"hi"


async def test_write_without_permission_is_permission_denied(hypervisor):
    _, client = await hypervisor.create_domain("nosy")
    message = await refused(client.xenstore.Write(xs_pb.WriteRequest(path="/local/domain/0/x", value=b"")),
                            grpc.StatusCode.PERMISSION_DENIED)
    assert "/local/domain/0" in message
    await refused(client.xenstore.Read(xs_pb.PathRequest(path="/tool")),
                  grpc.StatusCode.PERMISSION_DENIED)
    await refused(client.xenstore.SetPerms(xs_pb.SetPermsRequest(
        path="name", perms=[xs_pb.Perm(domid=0, perm="b")])), grpc.StatusCode.PERMISSION_DENIED)
    await still_serving(hypervisor.dom0)
    await client.xenstore.Write(xs_pb.WriteRequest(path="data/ok", value=b"1"))


async def test_invalid_path_is_invalid_argument(hypervisor):
    await refused(hypervisor.dom0.xenstore.Write(xs_pb.WriteRequest(path="/bad//path")),
                  grpc.StatusCode.INVALID_ARGUMENT)
    await still_serving(hypervisor.dom0)


async def test_transaction_conflict_is_aborted(hypervisor):
    domid, client = await hypervisor.create_domain("tx")
    xs = client.xenstore
    await xs.Write(xs_pb.WriteRequest(path="data/state", value=b"1"))
    tx = (await xs.TransactionStart(common_pb2.Empty())).tx
    assert (await xs.Read(xs_pb.PathRequest(path="data/state", tx=tx))).value == b"1"
    await xs.Write(xs_pb.WriteRequest(path="data/state", value=b"tx", tx=tx))
    await hypervisor.dom0.xenstore.Write(
        xs_pb.WriteRequest(path=f"/local/domain/{domid}/data/state", value=b"2"))
    await refused(xs.TransactionEnd(xs_pb.TransactionEndRequest(tx=tx, commit=True)),
                  grpc.StatusCode.ABORTED)
    assert (await xs.Read(xs_pb.PathRequest(path="data/state"))).value == b"2"
    # the retry, with nobody in the way, commits
    tx = (await xs.TransactionStart(common_pb2.Empty())).tx
    await xs.Write(xs_pb.WriteRequest(path="data/state", value=b"3", tx=tx))
    await xs.TransactionEnd(xs_pb.TransactionEndRequest(tx=tx, commit=True))
    assert (await xs.Read(xs_pb.PathRequest(path="data/state"))).value == b"3"


async def test_unknown_transaction_is_not_found(hypervisor):
    await refused(hypervisor.dom0.xenstore.TransactionEnd(
        xs_pb.TransactionEndRequest(tx=12345, commit=True)), grpc.StatusCode.NOT_FOUND)


async def test_quota_is_resource_exhausted(hypervisor):
    _, client = await hypervisor.create_domain("greedy")
    xs = client.xenstore
    quotas = hypervisor.hv.xenstore.quotas
    big = b"x" * (quotas.entry_size + 1)
    await refused(xs.Write(xs_pb.WriteRequest(path="data/big", value=big)),
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
    for _ in range(quotas.transactions):
        await xs.TransactionStart(common_pb2.Empty())
    await refused(xs.TransactionStart(common_pb2.Empty()), grpc.StatusCode.RESOURCE_EXHAUSTED)
    await still_serving(hypervisor.dom0)
    await xs.Write(xs_pb.WriteRequest(path="data/small", value=b"x"))


async def test_node_quota_is_resource_exhausted(hypervisor):
    domid, client = await hypervisor.create_domain("many")
    xs = client.xenstore
    core = hypervisor.hv.xenstore
    room = core.quotas.nodes - core.node_count(domid)
    for i in range(room):
        await xs.Write(xs_pb.WriteRequest(path=f"data/n{i}", value=b""))
    await refused(xs.Write(xs_pb.WriteRequest(path="data/one-too-many", value=b"")),
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
    await xs.Rm(xs_pb.PathRequest(path="data/n0"))
    await xs.Write(xs_pb.WriteRequest(path="data/one-too-many", value=b""))


async def test_watch_is_delivered_through_watch_stream(hypervisor):
    domid, client = await hypervisor.create_domain("watcher")
    session = WatchSession(client)
    try:
        ack = await session.watch("data", "tok")
        assert not ack.error and ack.errno == 0
        first = await session.next()           # fires once at registration
        assert (first.path, first.token, first.ack) == ("data", "tok", False)
        await hypervisor.dom0.xenstore.Write(
            xs_pb.WriteRequest(path=f"/local/domain/{domid}/data/k", value=b"v"))
        event = await session.next()
        assert (event.path, event.token, event.ack) == ("data/k", "tok", False)
    finally:
        session.close()


async def test_watch_refusal_is_acked_and_stream_goes_on(hypervisor):
    domid, client = await hypervisor.create_domain("special")
    session = WatchSession(client)
    try:
        ack = await session.watch("@releaseDomain", "r")
        assert ack.errno == errno.EACCES and ack.error
        ack = await session.control(xs_pb.WatchControl.UNWATCH, "data", "never")
        assert ack.errno == errno.ENOENT and ack.error
        ack = await session.watch("data", "ok")
        assert not ack.error
        assert (await session.next()).path == "data"
    finally:
        session.close()


async def test_dom0_sees_release_domain(hypervisor):
    session = WatchSession(hypervisor.dom0)
    try:
        await session.watch("@releaseDomain", "rel")
        assert (await session.next()).path == "@releaseDomain"
        domid, _ = await hypervisor.create_domain("short-lived")
        await hypervisor.toolstack.destroy_domain(domid)
        event = await session.next()
        assert (event.path, event.token) == ("@releaseDomain", "rel")
    finally:
        session.close()


async def test_watches_go_when_the_stream_ends(hypervisor):
    domid, client = await hypervisor.create_domain("leaver")
    core = hypervisor.hv.xenstore
    session = WatchSession(client)
    await session.watch("data", "t")
    await session.next()
    assert core.watch_count(domid) == 1
    session.close()
    for _ in range(200):
        if core.watch_count(domid) == 0:
            break
        await asyncio.sleep(0.01)
    assert core.watch_count(domid) == 0
    await still_serving(hypervisor.dom0)


async def test_a_stream_that_falls_behind_is_closed_resource_exhausted(hypervisor):
    domid, client = await hypervisor.create_domain("slow")
    hypervisor.hv.xs_connections.limit = 8
    session = WatchSession(client)
    try:
        await session.watch("data", "t")
        await session.next()
        core = hypervisor.hv.xenstore
        dom0 = Caller(0, privileged=True)
        for i in range(20):        # no await: the stream cannot drain in between
            core.write(dom0, f"/local/domain/{domid}/data/k{i}", str(i).encode())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while True:
                await session.next()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details()
    finally:
        session.close()
    assert core.watch_count(domid) == 0
    await still_serving(hypervisor.dom0)


async def test_connection_overflow_closes_instead_of_dropping():
    connections = XenStoreConnections(limit=3)
    conn = connections.open(Caller(1))
    for i in range(4):
        connections.fire(conn, f"p{i}", "t")
    assert conn.overflowed
    assert conn.queue.qsize() == 1             # only the close marker is left
    connections.fire(conn, "late", "t")
    assert conn.queue.qsize() == 1


async def test_ack_goes_before_the_events_its_watch_fired():
    conn = XenStoreConnection(Caller(1))
    conn.hold()
    conn.deliver(xs_pb.WatchEvent(path="data", token="t"))
    conn.release(xs_pb.WatchEvent(path="data", token="t", ack=True))
    assert conn.queue.get_nowait().ack
    assert not conn.queue.get_nowait().ack


# -- per-domain watch limits (issue "Hold the boundaries", item 4) ---------------------------
def big_event(i: int) -> tuple[str, str]:
    return "/local/domain/1/data/" + "p" * 3000 + f"{i:04d}", f"{i:04d}".ljust(4096, "t")


async def test_queued_watch_events_of_a_domain_stay_within_its_byte_budget():
    from xenlab.hypervisor.xenstore import XenStoreQuotas
    quotas = XenStoreQuotas(watch_event_bytes=64 * 1024)
    connections = XenStoreConnections(quotas=quotas)
    flooder = [connections.open(Caller(1)) for _ in range(4)]
    bystander = connections.open(Caller(2))
    for i in range(200):                     # nobody reads
        for conn in flooder:
            connections.fire(conn, *big_event(i))
        assert connections.queued_bytes(1) <= quotas.watch_event_bytes
    # each stream that would have passed the budget was closed, its events given back
    assert all(conn.overflowed for conn in flooder)
    assert "bytes of events queued" in flooder[0].overflow_reason
    assert connections.queued_bytes(1) == 0
    connections.fire(bystander, *big_event(0))
    assert not bystander.overflowed and bystander.queue.qsize() == 1
    # reading gives bytes back
    bystander.queue.get_nowait()
    assert connections.queued_bytes(2) == 0


async def test_a_privileged_domain_has_a_larger_budget():
    from xenlab.hypervisor.xenstore import XenStoreQuotas
    quotas = XenStoreQuotas(watch_event_bytes=16 * 1024, privileged_watch_event_bytes=256 * 1024)
    connections = XenStoreConnections(quotas=quotas)
    dom0, domu = connections.open(Caller(0, privileged=True)), connections.open(Caller(1))
    for i in range(20):
        connections.fire(dom0, *big_event(i))
        connections.fire(domu, *big_event(i))
    assert domu.overflowed and not dom0.overflowed
    assert connections.queued_bytes(0) > quotas.watch_event_bytes


async def test_an_event_identical_to_one_still_queued_is_not_queued_again():
    connections = XenStoreConnections()
    conn = connections.open(Caller(1))
    for _ in range(4000):                   # as xenstored's send_event drops duplicates
        connections.fire(conn, "data/k", "t")
    connections.fire(conn, "data/k", "u")
    assert conn.queue.qsize() == 2 and conn.coalesced == 3999
    assert conn.queue.get_nowait().token == "t"
    connections.fire(conn, "data/k", "t")   # taken: the next one is news again
    assert [conn.queue.get_nowait().token for _ in range(2)] == ["u", "t"]


async def test_watch_streams_per_domain_are_limited(hypervisor):
    quotas = hypervisor.hv.xs_connections.quotas
    domid, client = await hypervisor.create_domain("streamer")
    sessions = [WatchSession(client) for _ in range(quotas.watch_streams)]
    try:
        for i, session in enumerate(sessions):
            assert not (await session.watch("data", f"t{i}")).error
        extra = WatchSession(client)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await extra.watch("data", "x")
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"{quotas.watch_streams} watch streams" in info.value.details()
        # Domain-0 and other domains are not affected
        other = WatchSession(hypervisor.dom0)
        assert not (await other.watch("/local/domain", "d0")).error
        other.close()
    finally:
        for session in sessions:
            session.close()
    for _ in range(200):
        if hypervisor.hv.xs_connections.streams(domid) == 0:
            break
        await asyncio.sleep(0.01)
    assert hypervisor.hv.xs_connections.streams(domid) == 0
    again = WatchSession(client)
    assert not (await again.watch("data", "y")).error
    again.close()
