"""Admission: credentials from metadata before any body, request size limits
by method, calls in flight by domain; through the real gRPC server."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from xenlab.hypervisor.admission import DEFAULT_REQUEST_LIMIT, MAX_REQUEST, CallLimits, limit_for
from xenlab.hypervisor.grants import MAX_COPY_OPS, MAX_MAP_BATCH
from xenlab.hypervisor.memory import MAX_EXTENTS
from xenlab.xen.paging import MAX_MMU_UPDATES
from xenlab.hypervisor.xenstore import XENSTORE_PAYLOAD_MAX, XenStoreQuotas
from xenlab.proto import (common_pb2, domains_pb2, evtchn_pb2, grants_pb2, memory_pb2,
                          xenstore_pb2, xenstore_pb2_grpc)
from xenlab.rpc import CHANNEL_OPTIONS, credentials_metadata
from xenlab.xen import abi

U32, U64 = (1 << 32) - 1, (1 << 64) - 1
PATH = "/" + "p" * (XenStoreQuotas().path_max - 1)


def largest_requests() -> dict[str, object]:
    """The largest request each method's own caps let through, every number
    at its widest."""
    ptr = grants_pb2.CopyPtr(domid=U32, ref=U32, gfn=U64, use_gref=True, offset=U32)
    spec = domains_pb2.DomainSpec(
        name="n" * 64, uuid="u" * 36, launcher="docker", config_text="# xl.cfg\n" * 3000,
        vif=[domains_pb2.VifSpec(mac="00:16:3e:00:00:01", bridge="b" * 15, ip="10.0.0.1/24",
                                 vifname="v" * 15, rate="100Mb/s@20ms", mtu=9000)] * 8)
    return {
        "/xenlab.proto.GrantTable/Copy": grants_pb2.GrantCopyRequest(ops=[
            grants_pb2.GrantCopyOp(source=ptr, dest=ptr, len=U32)] * MAX_COPY_OPS),
        "/xenlab.proto.GrantTable/SetupTable": grants_pb2.SetupTableRequest(
            gfns=[U64] * abi.DEFAULT_MAX_GRANT_FRAMES),
        "/xenlab.proto.GrantTable/MapBatch": grants_pb2.MapGrantsRequest(ops=[
            grants_pb2.MapGrantRequest(domid=U32, ref=U32, readonly=True, pte_addr=U64)]
            * MAX_MAP_BATCH),
        "/xenlab.proto.GrantTable/UnmapBatch": grants_pb2.UnmapGrantsRequest(
            handles=[U64] * MAX_MAP_BATCH),
        "/xenlab.proto.Memory/IncreaseReservation": memory_pb2.IncreaseReservationRequest(
            domid=U32, nr_pages=U64, gfns=[U64] * MAX_EXTENTS),
        "/xenlab.proto.Memory/DecreaseReservation": memory_pb2.DecreaseReservationRequest(
            domid=U32, gfns=[U64] * MAX_EXTENTS),
        "/xenlab.proto.Memory/MmuUpdate": memory_pb2.MmuUpdateRequest(updates=[
            memory_pb2.MmuUpdate(ptr=U64, val=U64)] * MAX_MMU_UPDATES),
        "/xenlab.proto.XenStore/Write": xenstore_pb2.WriteRequest(
            path=PATH, value=b"v" * XENSTORE_PAYLOAD_MAX, tx=U32),
        "/xenlab.proto.XenStore/SetPerms": xenstore_pb2.SetPermsRequest(
            path=PATH, perms=[xenstore_pb2.Perm(domid=U32, perm="b")] * 64, tx=U32),
        "/xenlab.proto.XenStore/WatchStream": xenstore_pb2.WatchControl(
            op=1, path=PATH, token="t" * XENSTORE_PAYLOAD_MAX),
        "/xenlab.proto.Domains/Create": domains_pb2.CreateDomainRequest(spec=spec, paused=True),
    }


@pytest.mark.parametrize("method", sorted(largest_requests()))
def test_the_largest_request_a_method_allows_fits_its_limit(method):
    size = largest_requests()[method].ByteSize()
    assert size <= limit_for(method) <= MAX_REQUEST, (method, size)


def test_the_server_takes_nothing_bigger_than_its_largest_method_needs():
    from xenlab.hypervisor.server import SERVER_OPTIONS
    assert dict(SERVER_OPTIONS)["grpc.max_receive_message_length"] == MAX_REQUEST
    assert MAX_REQUEST <= 64 * 1024 and DEFAULT_REQUEST_LIMIT <= 8 * 1024


async def refused(call, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    for word in words:
        assert word in info.value.details()
    return info.value.details()


async def test_calls_without_valid_credentials_are_unauthenticated_before_parsing(hypervisor):
    domid, client = await hypervisor.create_domain("someone")
    async with grpc.aio.insecure_channel(hypervisor.address, options=CHANNEL_OPTIONS) as channel:
        stub = xenstore_pb2_grpc.XenStoreStub(channel)
        # a body past every limit: admission answers before grpc would refuse it
        big = xenstore_pb2.WriteRequest(path="data/x", value=b"x" * (4 * MAX_REQUEST))
        for metadata, words in (((), "missing credentials"),
                                (credentials_metadata(domid, "wrong"), "bad credentials"),
                                ((("xen-domid", "abc"), ("xen-secret", "s")), "domain id")):
            await refused(stub.Write(big, metadata=metadata), grpc.StatusCode.UNAUTHENTICATED,
                          words)
        # streams too: a watch stream is refused before any control is read
        stream = stub.WatchStream(metadata=credentials_metadata(domid, "wrong"))
        await refused(stream.read(), grpc.StatusCode.UNAUTHENTICATED, "bad credentials")
    assert hypervisor.server.admission.in_flight.calls == {}
    await client.xenstore.Read(xenstore_pb2.PathRequest(path="name"))


async def test_health_needs_no_credentials(hypervisor):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    async with grpc.aio.insecure_channel(hypervisor.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_grant_copy_of_500k_ops_is_refused_unparsed(hypervisor):
    domid, client = await hypervisor.create_domain("copier")
    op = grants_pb2.GrantCopyOp(source=grants_pb2.CopyPtr(domid=abi.DOMID_SELF, gfn=100),
                                dest=grants_pb2.CopyPtr(domid=abi.DOMID_SELF, gfn=101), len=8)
    await refused(client.grants.Copy(grants_pb2.GrantCopyRequest(ops=[op] * 500_000)),
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
    # under the size limit but over the op cap: E2BIG from the grant core
    await refused(client.grants.Copy(grants_pb2.GrantCopyRequest(ops=[op] * (MAX_COPY_OPS + 1))),
                  grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_COPY_OPS}")
    reply = await client.grants.Copy(grants_pb2.GrantCopyRequest(ops=[op] * MAX_COPY_OPS))
    assert list(reply.status) == [0] * MAX_COPY_OPS


async def test_a_request_past_its_methods_limit_is_resource_exhausted(hypervisor):
    domid, client = await hypervisor.create_domain("sizer")
    # 8001 gfns: 16 KB of DecreaseReservation, refused before any gfn is looked at
    request = memory_pb2.DecreaseReservationRequest(domid=domid, gfns=range(2000, 10001))
    details = await refused(client.memory.DecreaseReservation(request),
                            grpc.StatusCode.RESOURCE_EXHAUSTED, "Memory/DecreaseReservation",
                            str(request.ByteSize()), str(limit_for(
                                "/xenlab.proto.Memory/DecreaseReservation")))
    assert "at most" in details
    assert hypervisor.hv.memory.reservation(domid)[0] == 16 * 256
    # and one a little too big for XenStore.Write, which takes 8 KiB
    await refused(client.xenstore.Write(xenstore_pb2.WriteRequest(path="data/x", value=b"x" * 9000)),
                  grpc.StatusCode.RESOURCE_EXHAUSTED, "XenStore/Write")
    await client.xenstore.Write(xenstore_pb2.WriteRequest(path="data/x", value=b"x"))


async def test_a_domain_past_its_calls_in_flight_is_refused_and_others_are_served(hypervisor):
    admission = hypervisor.server.admission
    admission.limits = CallLimits(in_flight=4, privileged_in_flight=8)
    domid, client = await hypervisor.create_domain("busy")
    other_id, other = await hypervisor.create_domain("other")
    streams = [client.evtchn.Upcalls(common_pb2.Empty()) for _ in range(4)]
    for stream in streams:
        assert (await stream.read()).vcpu == 0          # each holds a call in flight
    details = await refused(client.xenstore.Read(xenstore_pb2.PathRequest(path="name")),
                            grpc.StatusCode.RESOURCE_EXHAUSTED, f"d{domid} has 4 calls")
    assert "in flight" in details
    await refused(client.evtchn.Upcalls(common_pb2.Empty()).read(),
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
    # Domain-0 and another domain are served meanwhile
    await hypervisor.dom0.xenstore.Read(xenstore_pb2.PathRequest(path="/local/domain/0/name"))
    await other.xenstore.Read(xenstore_pb2.PathRequest(path="name"))
    assert admission.in_flight.refused[domid] == 2
    for stream in streams:
        stream.cancel()
    for _ in range(200):
        if not admission.in_flight.calls[domid]:
            break
        await asyncio.sleep(0.01)
    assert admission.in_flight.calls[domid] == 0
    await client.xenstore.Read(xenstore_pb2.PathRequest(path="name"))


async def test_domain_0_has_a_limit_too(hypervisor):
    hypervisor.server.admission.limits = CallLimits(in_flight=4, privileged_in_flight=6)
    streams = [hypervisor.dom0.evtchn.Upcalls(common_pb2.Empty()) for _ in range(6)]
    for stream in streams:
        await stream.read()
    await refused(hypervisor.dom0.domains.List(common_pb2.Empty()),
                  grpc.StatusCode.RESOURCE_EXHAUSTED, "d0 has 6 calls")
    for stream in streams:
        stream.cancel()


async def test_a_call_given_up_before_its_body_came_gives_its_slot_back(hypervisor):
    admission = hypervisor.server.admission
    domid, client = await hypervisor.create_domain("quitter")
    for _ in range(20):
        call = client.evtchn.BindIpi(evtchn_pb2.BindIpiRequest(vcpu=0))
        call.cancel()
    await asyncio.sleep(0.2)
    assert admission.in_flight.calls[domid] == 0
