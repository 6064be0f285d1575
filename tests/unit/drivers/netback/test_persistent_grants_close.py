"""PersistentGrants.close: every buffer grant it holds is unmapped in
batches, and a handle the hypervisor refuses to unmap is reported, not
passed over in silence."""
from __future__ import annotations

import asyncio
import logging

from xenlab.drivers.netback.datapath import PageBudget, PersistentGrants
from xenlab.xen import abi


class FakePage:
    def __init__(self, handle: int):
        self.handle = handle
        self.view = memoryview(bytearray(abi.PAGE_SIZE))
        self.address = 0x1000 * handle
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeGnttab:
    """map_batch maps every ref (handle = ref + 100); unmap_batch answers
    with ``refuse`` for the handles in it, okay for the rest."""

    def __init__(self, refuse: dict[int, int]):
        self.refuse = refuse
        self.unmapped: list[int] = []

    async def map_batch(self, ops):
        return [FakePage(ref + 100) for _domid, ref, _readonly in ops]

    async def unmap_batch(self, handles):
        self.unmapped += handles
        return [self.refuse.get(handle, abi.GNTST_okay) for handle in handles]


async def mapped(gnttab: FakeGnttab, refs) -> PersistentGrants:
    grants = PersistentGrants(gnttab, frontend_id=3, label="vif3.0", budget=PageBudget())
    grants.prefetch(refs, writable=True)
    for _ in range(100):                  # mapped in the background
        if len(grants.addresses) == len(refs):
            break
        await asyncio.sleep(0)
    assert len(grants.addresses) == len(refs)
    return grants


async def test_close_unmaps_every_page_and_reports_none_when_all_go(caplog):
    gnttab = FakeGnttab(refuse={})
    grants = await mapped(gnttab, range(8))
    with caplog.at_level(logging.WARNING):
        await grants.close()
    assert sorted(gnttab.unmapped) == [100 + ref for ref in range(8)]
    assert "not unmapped" not in caplog.text
    assert grants.mappings == 0


async def test_a_refused_unmap_is_reported_with_its_status(caplog):
    gnttab = FakeGnttab(refuse={103: abi.GNTST_bad_handle, 105: abi.GNTST_general_error})
    grants = await mapped(gnttab, range(8))
    with caplog.at_level(logging.WARNING):
        await grants.close()
    assert "vif3.0: 2 of 8 buffer grants not unmapped (handle 103: invalid mapping handle)" \
        in caplog.text
    assert grants.mappings == 0
