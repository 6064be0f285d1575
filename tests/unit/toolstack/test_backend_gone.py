"""Domains.BackendGone: Domain-0's kernel died; the hypervisor releases what
it held and the toolstack closes the backends it served."""
import grpc
import pytest

from xenlab.testing.grants import GuestGrantTable

from xenlab.proto import common_pb2, domains_pb2, evtchn_pb2, grants_pb2, memory_pb2, xenstore_pb2


async def read(client, path):
    return (await client.xenstore.Read(xenstore_pb2.PathRequest(path=path))).value.decode()


async def write(client, path, value):
    await client.xenstore.Write(xenstore_pb2.WriteRequest(path=path, value=value.encode()))


async def backend_gone(client, timeout=0.2):
    return await client.domains.BackendGone(domains_pb2.BackendGoneRequest(
        domain=common_pb2.DomainRef(domid=0), timeout=timeout))


async def test_backend_gone_releases_mappings_and_ports_and_closes_backends(hypervisor):
    dom0 = hypervisor.dom0
    domid, guest = await hypervisor.create_domain("web", vif=[domains_pb2.VifSpec(mac="00:16:3e:00:00:01")])
    back = f"/local/domain/0/backend/vif/{domid}/0"
    front = f"/local/domain/{domid}/device/vif/0"
    # What a connected vif holds: a ring page granted to and mapped by dom0,
    # an interdomain event channel, both ends Connected and hotplugged.
    mm = await guest.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(
        domain=common_pb2.DomainRef(domid=domid), with_populated=True))
    gfn = list(mm.populated)[20]
    table = await GuestGrantTable.setup(hypervisor.hv, guest)
    ref = table.grant(0, gfn)
    await dom0.grants.Map(grants_pb2.MapGrantRequest(domid=domid, ref=ref))
    guest_port = (await guest.evtchn.AllocUnbound(evtchn_pb2.AllocUnboundRequest(
        dom=domid, remote_dom=0))).port
    await dom0.evtchn.BindInterdomain(evtchn_pb2.BindInterdomainRequest(
        remote_dom=domid, remote_port=guest_port))
    await write(dom0, f"{back}/state", "4")
    await write(dom0, f"{back}/hotplug-status", "connected")
    await write(guest, f"{front}/state", "4")
    assert not table.end(ref)                    # mapped: GTF_writing

    reply = await backend_gone(dom0)
    assert list(reply.closed) == [back] and reply.unmapped == 1 and reply.ports == 1
    assert list(reply.stuck) == [front]          # nobody runs the frontend here
    assert await read(dom0, f"{back}/state") == "6"
    with pytest.raises(grpc.aio.AioRpcError):
        await read(dom0, f"{back}/hotplug-status")
    # The frontend may end its grant now, and its port waits for a new backend.
    assert table.end(ref)
    table.release()
    status = await guest.evtchn.Status(evtchn_pb2.StatusRequest(dom=domid, port=guest_port))
    assert status.state == evtchn_pb2.ChannelStatus.UNBOUND and status.remote_dom == 0

    # Once the frontend is Closed nothing is stuck, and a second call changes nothing.
    await write(guest, f"{front}/state", "6")
    again = await backend_gone(dom0)
    assert list(again.closed) == [] and list(again.stuck) == [] and again.unmapped == 0


async def test_only_the_toolstack_may_say_a_backend_is_gone(hypervisor):
    _, guest = await hypervisor.create_domain("web")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await backend_gone(guest)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_backend_gone_lets_a_new_kernel_pin_its_page_tables_again(hypervisor):
    """A restarted Domain-0 kernel builds its page tables anew, in the same
    frames: the dead kernel's pins and base pointer go with it, so that its
    tables are plain frames again and the same tree pins once more."""
    from xenlab.domain.hypercall.memory import MemoryOps
    from xenlab.xen import paging as pg
    from xenlab.xen.errors import MemoryError_
    mem = hypervisor.hv.memory
    rw = pg.PTE_PRESENT | pg.PTE_RW
    l4, l3, l2, l1 = (mem.gfn_to_mfn(0, gfn) for gfn in range(4))
    for gfn, entry in ((0, pg.pte(l3, rw)), (1, pg.pte(l2, rw)), (2, pg.pte(l1, rw))):
        mem.frame(0, gfn)[:8] = entry.to_bytes(8, "little")
    ops = MemoryOps(hypervisor.dom0.memory, 0)
    tree = [(pg.MMUEXT_PIN_L4_TABLE, l4), (pg.MMUEXT_NEW_BASEPTR, l4)]
    await ops.mmuext(tree)
    with pytest.raises(MemoryError_):            # what a restarted kernel met
        await ops.mmuext(tree[:1])
    await backend_gone(hypervisor.dom0)
    assert mem.pagetables.baseptr(0) is None and not mem.pagetables.pinned(0)
    assert not any(mem.pagetables.is_table(mfn) for mfn in (l4, l3, l2, l1))
    await ops.mmuext(tree)
    assert mem.pagetables.baseptr(0) == l4 and set(mem.pagetables.pinned(0)) == {l4}
