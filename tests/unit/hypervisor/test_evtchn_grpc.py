"""The EventChannel service over real gRPC (the in-process hypervisor fixture):
each refusal is a specific status with a message, and the server keeps serving."""
from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from xenlab.proto import common_pb2, domains_pb2, evtchn_pb2
from xenlab.testing import call_each
from xenlab.xen import abi

pb = evtchn_pb2
Code = grpc.StatusCode
State = pb.ChannelStatus


async def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.details(), "a refusal must say why"
    return exc.value.code(), exc.value.details()


async def still_serving(client) -> None:
    port = (await client.evtchn.BindIpi(pb.BindIpiRequest(vcpu=0))).port
    await client.evtchn.Close(pb.Port(port=port))


@pytest.fixture
async def two(hypervisor):
    a, ca = await hypervisor.create_domain("alpha")
    b, cb = await hypervisor.create_domain("beta")
    return hypervisor, (a, ca), (b, cb)


async def test_interdomain_lifecycle(two):
    lab, (a, ca), (b, cb) = two
    pa = (await ca.evtchn.AllocUnbound(pb.AllocUnboundRequest(dom=a, remote_dom=b))).port
    st = await ca.evtchn.Status(pb.StatusRequest(dom=a, port=pa))
    assert (st.state, st.remote_dom) == (State.UNBOUND, b)
    pbp = (await cb.evtchn.BindInterdomain(pb.BindInterdomainRequest(remote_dom=a, remote_port=pa))).port
    st = await cb.evtchn.Status(pb.StatusRequest(dom=b, port=pbp))
    assert (st.state, st.remote_dom, st.remote_port) == (State.INTERDOMAIN, a, pa)
    await cb.evtchn.Send(pb.Port(port=pbp))
    st = await ca.evtchn.Status(pb.StatusRequest(dom=a, port=pa))
    assert st.pending and not st.masked
    await cb.evtchn.Close(pb.Port(port=pbp))
    st = await lab.dom0.evtchn.Status(pb.StatusRequest(dom=a, port=pa))
    assert (st.state, st.remote_dom) == (State.UNBOUND, b)


async def test_refusals_have_specific_codes(two):
    lab, (a, ca), (b, cb) = two
    c, cc = await lab.create_domain("gamma")
    offered_to_c = (await ca.evtchn.AllocUnbound(pb.AllocUnboundRequest(dom=a, remote_dom=c))).port
    cases = [
        (ca.evtchn.AllocUnbound(pb.AllocUnboundRequest(dom=b, remote_dom=a)),
         Code.PERMISSION_DENIED),
        (cb.evtchn.BindInterdomain(pb.BindInterdomainRequest(remote_dom=a, remote_port=offered_to_c)),
         Code.PERMISSION_DENIED),
        (ca.evtchn.BindPirq(pb.BindPirqRequest(pirq=3)), Code.PERMISSION_DENIED),
        (ca.evtchn.BindVirq(pb.BindVirqRequest(virq=abi.VIRQ_DOM_EXC)), Code.PERMISSION_DENIED),
        (ca.evtchn.Status(pb.StatusRequest(dom=b, port=1)), Code.PERMISSION_DENIED),
        (ca.evtchn.Reset(pb.ResetRequest(dom=b)), Code.PERMISSION_DENIED),
        (lab.dom0.evtchn.Status(pb.StatusRequest(dom=999, port=1)), Code.NOT_FOUND),
        (ca.evtchn.AllocUnbound(pb.AllocUnboundRequest(dom=a, remote_dom=999)), Code.NOT_FOUND),
        (ca.evtchn.Send(pb.Port(port=77)), Code.INVALID_ARGUMENT),
        (ca.evtchn.Close(pb.Port(port=77)), Code.INVALID_ARGUMENT),
        (ca.evtchn.Unmask(pb.Port(port=100_000)), Code.INVALID_ARGUMENT),
        (ca.evtchn.BindVcpu(pb.BindVcpuRequest(port=offered_to_c, vcpu=5)), Code.INVALID_ARGUMENT),
        (ca.evtchn.BindVirq(pb.BindVirqRequest(virq=abi.VIRQ_TIMER, vcpu=3)), Code.INVALID_ARGUMENT),
        (ca.evtchn.BindVirq(pb.BindVirqRequest(virq=abi.NR_VIRQS)), Code.INVALID_ARGUMENT),
        (ca.evtchn.SetTimer(pb.SetTimerRequest(vcpu=0, timeout=-1)), Code.INVALID_ARGUMENT),
        (ca.evtchn.SetTimer(pb.SetTimerRequest(vcpu=0, timeout=3601)), Code.INVALID_ARGUMENT),
        (ca.evtchn.SetTimer(pb.SetTimerRequest(vcpu=0, timeout=float("nan"))), Code.INVALID_ARGUMENT),
        (ca.evtchn.SetTimer(pb.SetTimerRequest(vcpu=4, timeout=1)), Code.INVALID_ARGUMENT),
    ]
    for call, expected in cases:
        code, details = await code_of(call)
        assert code == expected, details
    await still_serving(ca)


async def test_bind_virq_twice_is_already_exists(two):
    _, (a, ca), _ = two
    await ca.evtchn.BindVirq(pb.BindVirqRequest(virq=abi.VIRQ_TIMER))
    code, _ = await code_of(ca.evtchn.BindVirq(pb.BindVirqRequest(virq=abi.VIRQ_TIMER)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    await still_serving(ca)


async def test_port_limit_is_resource_exhausted(two):
    lab, (a, ca), (b, _) = two
    max_ports = (await ca.evtchn.GetDoorbell(common_pb2.Empty())).max_ports
    taken = len(lab.hv.evtchn.ports(a))         # the store port, from creation
    await call_each(lambda _: ca.evtchn.BindIpi(pb.BindIpiRequest()), range(max_ports - 1 - taken))
    code, details = await code_of(ca.evtchn.BindIpi(pb.BindIpiRequest()))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    await ca.evtchn.Reset(pb.ResetRequest(dom=a))
    await still_serving(ca)


async def test_bad_credentials_are_unauthenticated(two):
    lab, (a, _), _ = two
    impostor = lab.client_as(a, "not-the-secret")
    code, _ = await code_of(impostor.evtchn.BindIpi(pb.BindIpiRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_dom0_binds_pirq_and_allocates_for_others(two):
    lab, (a, ca), (b, _) = two
    port = (await lab.dom0.evtchn.BindPirq(pb.BindPirqRequest(pirq=9))).port
    st = await lab.dom0.evtchn.Status(pb.StatusRequest(dom=0, port=port))
    assert (st.state, st.pirq) == (State.PIRQ, 9)
    port = (await lab.dom0.evtchn.AllocUnbound(pb.AllocUnboundRequest(dom=a, remote_dom=0))).port
    st = await ca.evtchn.Status(pb.StatusRequest(dom=a, port=port))
    assert (st.state, st.remote_dom) == (State.UNBOUND, 0)
    await lab.dom0.evtchn.Reset(pb.ResetRequest(dom=a))
    st = await ca.evtchn.Status(pb.StatusRequest(dom=a, port=port))
    assert st.state == State.CLOSED


async def test_get_doorbell_points_at_the_socket_and_shared_info(two):
    lab, (a, ca), _ = two
    info = await ca.evtchn.GetDoorbell(common_pb2.Empty())
    assert info.path == str(lab.hv.rundir.doorbell) and os.path.exists(info.path)
    assert info.shared_info_shm == lab.hv.memory.segment_path(a)
    assert info.shared_info_offset == 0
    assert info.max_ports == lab.hv.evtchn.max_ports(a)


async def next_upcall(stream) -> int:
    msg = await asyncio.wait_for(stream.read(), 5)
    assert msg is not grpc.aio.EOF
    return msg.vcpu


async def test_upcalls_stream_and_timer(two):
    _, (a, ca), (b, cb) = two
    stream = ca.evtchn.Upcalls(common_pb2.Empty())
    assert await next_upcall(stream) == 0       # the resync upcall once subscribed
    port = (await ca.evtchn.BindVirq(pb.BindVirqRequest(virq=abi.VIRQ_TIMER))).port
    await ca.evtchn.SetTimer(pb.SetTimerRequest(vcpu=0, timeout=0.01))
    assert await next_upcall(stream) == 0
    st = await ca.evtchn.Status(pb.StatusRequest(dom=a, port=port))
    assert st.pending
    stream.cancel()


async def test_cancelled_timer_does_not_fire(two):
    lab, (a, ca), _ = two
    port = (await ca.evtchn.BindVirq(pb.BindVirqRequest(virq=abi.VIRQ_TIMER))).port
    await ca.evtchn.SetTimer(pb.SetTimerRequest(vcpu=0, timeout=0.05))
    await ca.evtchn.SetTimer(pb.SetTimerRequest(vcpu=0, timeout=0))
    # The server shares this event loop, so a callback due later than the
    # cancelled deadline runs after it would have fired: ordering, not timing.
    later = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, later.set)
    await later.wait()
    st = await ca.evtchn.Status(pb.StatusRequest(dom=a, port=port))
    assert not st.pending


async def test_destroy_ends_the_upcall_stream(two):
    lab, (a, ca), _ = two
    stream = ca.evtchn.Upcalls(common_pb2.Empty())
    assert await next_upcall(stream) == 0
    await lab.dom0.domains.Destroy(common_pb2.DomainRef(domid=a))
    msg = await asyncio.wait_for(stream.read(), 5)
    assert msg is grpc.aio.EOF
    code, _ = await code_of(lab.dom0.evtchn.Status(pb.StatusRequest(dom=a, port=1)))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_domain_with_two_vcpus_gets_a_resync_per_vcpu(hypervisor):
    reply = await hypervisor.dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name="duo", memory_mb=16, vcpus=2, launcher="none")))
    client = hypervisor.client_as(reply.info.domid, reply.secret)
    stream = client.evtchn.Upcalls(common_pb2.Empty())
    assert [await next_upcall(stream), await next_upcall(stream)] == [0, 1]
    await client.evtchn.BindVirq(pb.BindVirqRequest(virq=abi.VIRQ_TIMER, vcpu=1))
    await client.evtchn.SetTimer(pb.SetTimerRequest(vcpu=1, timeout=0.01))
    assert await next_upcall(stream) == 1
    stream.cancel()


async def test_host_info_counts_every_call_by_operation(two):
    lab, (a, ca), (b, cb) = two
    pa = (await ca.evtchn.AllocUnbound(pb.AllocUnboundRequest(dom=a, remote_dom=b))).port
    pbp = (await cb.evtchn.BindInterdomain(pb.BindInterdomainRequest(remote_dom=a, remote_port=pa))).port
    before = (await lab.dom0.domains.GetHostInfo(common_pb2.Empty())).ops
    for _ in range(3):
        await cb.evtchn.Send(pb.Port(port=pbp))
    with pytest.raises(grpc.aio.AioRpcError):
        await cb.evtchn.Send(pb.Port(port=pbp + 100))     # a refusal is a message handled too
    after = (await lab.dom0.domains.GetHostInfo(common_pb2.Empty())).ops
    assert after["EventChannel/Send"] - before["EventChannel/Send"] == 4
    assert after["Domains/GetHostInfo"] - before["Domains/GetHostInfo"] == 1
    assert sum(after.values()) - sum(before.values()) == 5
