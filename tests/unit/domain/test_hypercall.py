"""The typed hypercall layer (xenlab.domain.hypercall) against the
in-process hypervisor: plain values in and out, a typed error when refused,
a mapped grant as a Page (the page itself for a privileged mapper, a handle
only for an unprivileged one)."""
from __future__ import annotations

import errno

import pytest

from xenlab.domain.hypercall import Hypercalls, Page
from xenlab.domain.memory import GuestMemory
from xenlab.xen import abi
from xenlab.xen.abi import EvtchnState
from xenlab.xen.errors import EvtchnError, GrantError, XenError

GFN = 20


async def with_grant_table(calls: Hypercalls) -> GuestMemory:
    """The domain's memory mapped as its kernel maps it, and its grant
    table set up there (DomainKernel.boot does the same)."""
    mm = await calls.memory.memory_map(with_populated=True)
    memory = GuestMemory(mm.shm_path, mm.segment_pages, mm.first_frame_offset)
    memory.set_populated(mm.populated)
    await calls.gnttab.setup(memory)
    return memory


@pytest.fixture
async def doms(hypervisor):
    """Domain-0 and two domUs, each with its hypercalls and its grant
    table: (dom0, a, b)."""
    out = [Hypercalls(hypervisor.dom0)]
    for name in ("a", "b"):
        _, client = await hypervisor.create_domain(name)
        out.append(Hypercalls(client))
    memories = [await with_grant_table(calls) for calls in out]
    yield out
    for calls, memory in zip(out, memories):
        await calls.gnttab.close()
        memory.close()


async def test_a_privileged_mapper_gets_the_page_an_unprivileged_one_a_handle(hypervisor, doms):
    dom0, a, b = doms
    hypervisor.hv.memory.frame(a.domid, GFN)[:5] = b"hello"
    to_dom0, to_b = await a.gnttab.grant_access([(0, GFN, True), (b.domid, GFN, False)])
    page = await dom0.gnttab.map(a.domid, to_dom0, readonly=True)
    assert isinstance(page, Page) and bytes(page.view[:5]) == b"hello" and page.view.readonly
    handle_only = await b.gnttab.map(a.domid, to_b)
    assert handle_only.view is None          # the hypervisor never hands it a's memory
    await dom0.gnttab.unmap(page)
    assert page.view is None
    await b.gnttab.unmap(handle_only)
    assert a.gnttab.end_access([to_dom0, to_b]) == []


async def test_granting_is_a_write_to_our_own_frame_not_a_call(hypervisor, doms):
    dom0, a, _ = doms
    calls_before = sum(hypervisor.hv.ops.values())
    [ref] = await a.gnttab.grant_access([(0, GFN, False)])
    assert a.gnttab.entry(ref) == (abi.GTF_permit_access, 0, GFN)
    entry = hypervisor.hv.grants.entry(a.domid, ref)
    assert (entry.flags, entry.domid, entry.frame) == (abi.GTF_permit_access, 0, GFN)
    assert sum(hypervisor.hv.ops.values()) == calls_before
    assert a.gnttab.end_access([ref]) == []
    assert hypervisor.hv.grants.entry(a.domid, ref).flags == 0
    assert sum(hypervisor.hv.ops.values()) == calls_before
    await a.gnttab.unmap_batch([])                  # a hypercall: counted
    assert sum(hypervisor.hv.ops.values()) == calls_before + 1


async def test_ending_a_grant_still_mapped_leaves_it_granted(doms):
    """gnttab_end_foreign_access_ref fails while the backend maps the page:
    the ref comes back, still granted, for the caller to retry."""
    dom0, a, _ = doms
    [ref] = await a.gnttab.grant_access([(0, GFN, False)])
    page = await dom0.gnttab.map(a.domid, ref)
    assert a.gnttab.end_access([ref]) == [ref]
    assert a.gnttab.entry(ref)[0] & abi.GTF_writing
    await dom0.gnttab.unmap(page)
    assert a.gnttab.end_access([ref]) == []
    with pytest.raises(GrantError) as err:            # not ours any more
        a.gnttab.end_access([ref])
    assert err.value.status == abi.GNTST_bad_gntref


async def test_the_table_grows_a_frame_at_a_time_up_to_its_maximum(hypervisor, doms):
    """gnttab_expand: a frame of our own memory more when the refs run out;
    past max_grant_frames, GNTST_no_space and nothing granted."""
    _, a, _ = doms
    assert a.gnttab.nr_frames == 1
    refs = await a.gnttab.grant_access([(0, GFN, True)] * 600)
    assert a.gnttab.nr_frames == 2 and len(set(refs)) == 600
    assert min(refs) == abi.GNTTAB_NR_RESERVED_ENTRIES
    assert hypervisor.hv.grants.query_size(a.domid) == (2, a.gnttab.max_frames)
    assert a.gnttab.end_access(refs) == []
    a.gnttab.max_frames = 2                      # as if Xen's limit were 2
    with pytest.raises(GrantError) as err:
        await a.gnttab.grant_access([(0, GFN, True)] * (2 * 512))
    assert err.value.status == abi.GNTST_no_space
    assert hypervisor.hv.grants.query(a.domid)["entries_in_use"] == 0


async def test_a_refused_map_keeps_its_gntst_status(doms):
    dom0, a, _ = doms
    with pytest.raises(GrantError) as err:
        await dom0.gnttab.map(a.domid, 99999)
    assert err.value.status == abi.GNTST_bad_gntref


async def test_map_batch_answers_each_op(doms):
    dom0, a, _ = doms
    [ref] = await a.gnttab.grant_access([(0, GFN, False)])
    good, bad = await dom0.gnttab.map_batch([(a.domid, ref, False), (a.domid, 99999, False)])
    assert isinstance(good, Page) and good.view is not None
    assert isinstance(bad, GrantError) and bad.status == abi.GNTST_bad_gntref
    assert await dom0.gnttab.unmap_batch([good.handle]) == [abi.GNTST_okay]
    good.close()


async def test_event_channel_ops_take_and_give_ports(doms):
    _, a, b = doms
    port = await a.evtchn.alloc_unbound(b.domid)
    assert (await a.evtchn.status(port)).state == EvtchnState.unbound
    theirs = await b.evtchn.bind_interdomain(a.domid, port)
    status = await b.evtchn.status(theirs)
    assert (status.state, status.remote_dom, status.remote_port) == \
        (EvtchnState.interdomain, a.domid, port)
    await b.evtchn.close(theirs)
    with pytest.raises(EvtchnError):
        await b.evtchn.close(theirs)


async def test_memory_ops_follow_the_reservation(doms):
    _, a, _ = doms
    before = await a.memory.reservation()
    mm = await a.memory.memory_map(with_populated=True)
    assert mm.segment_pages and len(mm.populated) == before.current_pages
    gfn = max(mm.populated)
    await a.memory.decrease_reservation([gfn])
    assert (await a.memory.reservation()).current_pages == before.current_pages - 1
    assert await a.memory.increase_reservation(1)
    assert (await a.memory.reservation()).current_pages == before.current_pages


async def test_a_domain_reads_its_p2m_and_anyones_m2p(doms):
    _, a, b = doms
    mm = await a.memory.memory_map(with_populated=True)
    assert len(mm.mfns) == len(mm.populated) == len(set(mm.mfns))
    last = dict(zip(mm.populated, mm.mfns))
    gfn = max(mm.populated)
    assert await b.memory.machine_to_phys([last[gfn]]) == [gfn]
    await a.memory.decrease_reservation([gfn])
    assert await b.memory.machine_to_phys([last[gfn]]) == [abi.INVALID_M2P_ENTRY]
    assert await a.memory.increase_reservation(1) == [gfn]
    again = await a.memory.memory_map(with_populated=True)
    new = dict(zip(again.populated, again.mfns))[gfn]
    assert new != last[gfn] and await b.memory.machine_to_phys([new]) == [gfn]
