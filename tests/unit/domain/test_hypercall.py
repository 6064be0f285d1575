"""The typed hypercall layer (xenlab.domain.hypercall) against the
in-process hypervisor: plain values in and out, a typed error when refused,
a mapped grant as a Page (the page itself for a privileged mapper, a handle
only for an unprivileged one)."""
from __future__ import annotations

import errno

import pytest

from xenlab.domain.hypercall import Hypercalls, Page
from xenlab.xen import abi
from xenlab.xen.abi import EvtchnState
from xenlab.xen.errors import EvtchnError, GrantError, XenError

GFN = 20


@pytest.fixture
async def doms(hypervisor):
    """Domain-0 and two domUs, each with its hypercalls: (dom0, a, b)."""
    out = [Hypercalls(hypervisor.dom0)]
    for name in ("a", "b"):
        _, client = await hypervisor.create_domain(name)
        out.append(Hypercalls(client))
    return out


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
    await a.gnttab.end_access([to_dom0, to_b])


async def test_ending_a_grant_still_mapped_is_ebusy(doms):
    dom0, a, _ = doms
    [ref] = await a.gnttab.grant_access([(0, GFN, False)])
    page = await dom0.gnttab.map(a.domid, ref)
    with pytest.raises(XenError) as err:
        await a.gnttab.end_access([ref])
    assert err.value.errno == errno.EBUSY
    await dom0.gnttab.unmap(page)
    await a.gnttab.end_access([ref])


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
