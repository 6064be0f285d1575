"""The GrantTable service over real gRPC: a frontend sets up its grant frame
and grants by writing it, a backend maps and copies; each refusal has its
status code and the server keeps serving."""
from __future__ import annotations

import mmap

import grpc
import pytest

from xenlab.proto import common_pb2, grants_pb2
from xenlab.xen import abi
from xenlab.xen.grant_table import GrantFrames, GrantRefs

PAGE = abi.PAGE_SIZE


async def refused(call, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() == code, e.value.details()
    details = e.value.details()
    assert details
    for word in words:
        assert word in details
    return details


class FrontTable:
    """The front's kernel: its grant frame (its highest frame) named with
    SetupTable over gRPC, its entries written in its own memory, which the
    in-process hypervisor maps too."""

    def __init__(self, lab, domid: int, gfn: int):
        self.frames = GrantFrames([lab.hv.memory.frame(domid, gfn)])
        self.refs = GrantRefs(self.frames.nr_entries)

    @classmethod
    async def setup(cls, lab, client, domid: int) -> "FrontTable":
        gfn = lab.hv.memory.reservation(domid)[0] - 1
        size = await client.grants.SetupTable(grants_pb2.SetupTableRequest(gfns=[gfn]))
        assert (size.nr_frames, size.max_nr_frames) == (1, abi.DEFAULT_MAX_GRANT_FRAMES)
        return cls(lab, domid, gfn)

    def grant(self, peer: int, gfn: int, readonly: bool = False) -> int:
        [ref] = self.refs.alloc(1)
        self.frames.grant(ref, peer, gfn, readonly)
        return ref

    def end(self, ref: int) -> bool:
        return self.frames.end_access(ref)


@pytest.fixture
async def pair(hypervisor):
    """d1 "front" and d2 "back", with clients acting as each; the front's
    grant table set up."""
    d1, front = await hypervisor.create_domain("front")
    d2, back = await hypervisor.create_domain("back")
    table = await FrontTable.setup(hypervisor, front, d1)
    yield hypervisor, (d1, front, table), (d2, back)
    table.frames.release()


async def still_serving(client, domid: int) -> None:
    info = await client.grants.Query(common_pb2.DomainRef(domid=domid))
    assert info.domid == domid


async def test_map_write_unmap_end(pair):
    lab, (d1, front, table), (d2, back) = pair
    ref = table.grant(d2, 5)
    m = await back.grants.Map(grants_pb2.MapGrantRequest(domid=d1, ref=ref))
    assert m.length == PAGE and not m.readonly
    assert m.offset == lab.hv.memory.frame_offset(d1, 5)
    # An unprivileged backend is not told where the page lives: it writes
    # through the hypervisor, with a copy on the ref it mapped.
    assert m.shm_path == ""
    lab.hv.memory.frame(d2, 9)[:4] = b"ring"
    reply = await back.grants.Copy(grants_pb2.GrantCopyRequest(ops=[grants_pb2.GrantCopyOp(
        source=grants_pb2.CopyPtr(domid=abi.DOMID_SELF, gfn=9),
        dest=grants_pb2.CopyPtr(domid=d1, ref=ref, use_gref=True), len=4)]))
    assert list(reply.status) == [abi.GNTST_okay]
    assert bytes(lab.hv.memory.frame(d1, 5)[:4]) == b"ring"
    info = await front.grants.Query(common_pb2.DomainRef(domid=d1))
    assert (info.entries_in_use, info.active_maps) == (1, 1)
    assert not table.end(ref)                   # GTF_writing: the granter's CAS fails
    await back.grants.Unmap(grants_pb2.UnmapGrantRequest(handle=m.handle))
    assert table.end(ref)
    assert lab.hv.grants.entries(d1) == [] and lab.hv.grants.mappings() == []


async def test_map_refusals(pair):
    lab, (d1, front, table), (d2, back) = pair
    d3, third = await lab.create_domain("third")
    ro = table.grant(d2, 5, readonly=True)
    # GNTST_general_error, as Xen's map_grant_ref ("Bad flags or dom")
    E = grpc.StatusCode.INVALID_ARGUMENT
    await refused(back.grants.Map(grants_pb2.MapGrantRequest(domid=d1, ref=ro)), E, "read-only")
    await refused(third.grants.Map(grants_pb2.MapGrantRequest(domid=d1, ref=ro, readonly=True)),
                  E, f"not granted to d{d3}")
    await refused(lab.dom0.grants.Map(grants_pb2.MapGrantRequest(domid=d1, ref=ro,
                                                                 readonly=True)), E)
    await refused(back.grants.Map(grants_pb2.MapGrantRequest(domid=d1, ref=ro + 1)),
                  E, "not granted to")
    await refused(back.grants.Map(grants_pb2.MapGrantRequest(domid=d1, ref=1 << 20)),
                  grpc.StatusCode.NOT_FOUND, "past")
    await refused(back.grants.Map(grants_pb2.MapGrantRequest(domid=999, ref=ro)),
                  grpc.StatusCode.NOT_FOUND)
    await refused(back.grants.Unmap(grants_pb2.UnmapGrantRequest(handle=3)),
                  grpc.StatusCode.NOT_FOUND, "handle")
    m = await back.grants.Map(grants_pb2.MapGrantRequest(domid=d1, ref=ro, readonly=True))
    assert m.readonly
    await refused(third.grants.Unmap(grants_pb2.UnmapGrantRequest(handle=m.handle)),
                  grpc.StatusCode.NOT_FOUND)
    await still_serving(back, d2)


async def test_setup_table_refusals(pair):
    lab, (d1, front, table), (d2, back) = pair
    gfn = lab.hv.grants.grant_frames(d1)[0]
    E = grpc.StatusCode.INVALID_ARGUMENT
    await refused(front.grants.SetupTable(grants_pb2.SetupTableRequest(gfns=[gfn + 1])),
                  E, "cannot move")
    await refused(front.grants.SetupTable(grants_pb2.SetupTableRequest(gfns=[gfn, 10**6])),
                  E, "cannot be a grant frame")
    await refused(front.grants.SetupTable(grants_pb2.SetupTableRequest(
        gfns=list(range(abi.DEFAULT_MAX_GRANT_FRAMES + 1)))), E, "at most")
    size = await front.grants.QuerySize(common_pb2.Empty())
    assert (size.nr_frames, size.max_nr_frames) == (1, abi.DEFAULT_MAX_GRANT_FRAMES)
    await refused(back.grants.Query(common_pb2.DomainRef(domid=d1)),
                  grpc.StatusCode.PERMISSION_DENIED)
    assert (await lab.dom0.grants.Query(common_pb2.DomainRef(name="front"))).domid == d1
    await still_serving(front, d1)


async def test_copy_statuses(pair):
    lab, (d1, front, table), (d2, back) = pair
    rx, ro = table.grant(d2, 3), table.grant(d2, 4, readonly=True)
    lab.hv.memory.frame(d2, 0)[:5] = b"frame"
    own = grants_pb2.CopyPtr(domid=abi.DOMID_SELF, gfn=0)

    def gref(r, offset=0):
        return grants_pb2.CopyPtr(domid=d1, ref=r, use_gref=True, offset=offset)

    ops = [grants_pb2.GrantCopyOp(source=own, dest=gref(rx, 100), len=5),
           grants_pb2.GrantCopyOp(source=own, dest=gref(ro), len=5),
           grants_pb2.GrantCopyOp(source=own, dest=gref(rx, PAGE - 2), len=5),
           grants_pb2.GrantCopyOp(source=own, dest=gref(rx + 50), len=5),
           grants_pb2.GrantCopyOp(source=own, dest=grants_pb2.CopyPtr(domid=d1, gfn=3), len=5),
           grants_pb2.GrantCopyOp(source=gref(ro), dest=own, len=5)]
    result = await back.grants.Copy(grants_pb2.GrantCopyRequest(ops=ops))
    assert list(result.status) == [abi.GNTST_okay, abi.GNTST_general_error,
                                   abi.GNTST_bad_copy_arg, abi.GNTST_general_error,
                                   abi.GNTST_permission_denied, abi.GNTST_okay]
    assert bytes(lab.hv.memory.frame(d1, 3)[100:105]) == b"frame"
    assert bytes(lab.hv.memory.frame(d1, 4)[:5]) == bytes(5)


async def test_destroying_a_mapper_releases_its_mappings(pair):
    lab, (d1, front, table), (d2, back) = pair
    ref = table.grant(d2, 5)
    await back.grants.Map(grants_pb2.MapGrantRequest(domid=d1, ref=ref))
    await lab.dom0.domains.Destroy(common_pb2.DomainRef(domid=d2))
    assert table.end(ref)
    assert lab.hv.grants.mappings() == []


async def test_map_batch_and_unmap_batch(pair):
    lab, (d1, front, table), (d2, back) = pair
    # Domain-0 this time: a privileged mapper is told where the page lives.
    back, d2 = lab.dom0, 0
    refs = [table.grant(d2, 5 + i, readonly=i == 0) for i in range(3)]
    reply = await back.grants.MapBatch(grants_pb2.MapGrantsRequest(ops=[
        grants_pb2.MapGrantRequest(domid=d1, ref=refs[0], readonly=True),
        grants_pb2.MapGrantRequest(domid=d1, ref=refs[0], readonly=False),   # a read-only grant
        grants_pb2.MapGrantRequest(domid=d1, ref=refs[2]),
        grants_pb2.MapGrantRequest(domid=d1, ref=400)]))
    assert [r.status for r in reply.results] == [
        abi.GNTST_okay, abi.GNTST_general_error, abi.GNTST_okay, abi.GNTST_general_error]
    assert "read-only" in reply.results[1].error and not reply.results[1].HasField("mapping")
    m = reply.results[2].mapping
    with open(m.shm_path, "r+b") as f:
        page = mmap.mmap(f.fileno(), m.length, offset=m.offset)
    page[:5] = b"batch"
    page.close()
    assert bytes(lab.hv.memory.frame(d1, 7)[:5]) == b"batch"
    handles = [reply.results[0].mapping.handle, m.handle]
    assert (await front.grants.Query(common_pb2.DomainRef(domid=d1))).active_maps == 2
    unmapped = await back.grants.UnmapBatch(grants_pb2.UnmapGrantsRequest(handles=handles + [99]))
    assert list(unmapped.status) == [abi.GNTST_okay, abi.GNTST_okay, abi.GNTST_bad_handle]
    assert all(table.end(ref) for ref in refs)
    await refused(back.grants.MapBatch(grants_pb2.MapGrantsRequest(
        ops=[grants_pb2.MapGrantRequest(domid=d1, ref=refs[0])] * 1025)),
        grpc.StatusCode.INVALID_ARGUMENT, "1024")
    await still_serving(back, d2)


async def test_map_with_a_pte_address_and_map_batch_refusing_a_bad_one(pair):
    """GNTMAP_contains_pte over gRPC: the PTE appears in the backend's
    pinned L1 and goes at unmap; a bad PTE address fails only its own op."""
    from xenlab.xen import paging as pg
    lab, (d1, front, table), (d2, back) = pair
    mem = lab.hv.memory
    l1 = mem.gfn_to_mfn(d2, 3)
    assert mem.mmuext(d2, [(pg.MMUEXT_PIN_L1_TABLE, l1)]) == (1, [0])
    good, bad = table.grant(d2, 5), table.grant(d2, 6)
    reply = await back.grants.MapBatch(grants_pb2.MapGrantsRequest(ops=[
        grants_pb2.MapGrantRequest(domid=d1, ref=good, pte_addr=l1 << 12 | 16),
        grants_pb2.MapGrantRequest(domid=d1, ref=bad, pte_addr=mem.gfn_to_mfn(d2, 4) << 12)]))
    ok, refused = reply.results
    assert ok.status == abi.GNTST_okay and refused.status == abi.GNTST_general_error
    assert pg.pte_frame(mem.pinned_ptes(l1)[2]) == mem.gfn_to_mfn(d1, 5)
    await back.grants.Unmap(grants_pb2.UnmapGrantRequest(handle=ok.mapping.handle))
    assert mem.pinned_ptes(l1) == {} and table.end(good) and table.end(bad)
