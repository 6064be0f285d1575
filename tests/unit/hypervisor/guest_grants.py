"""A domain kernel's half of its grant table, for tests of the hypervisor's:
the entries written with xen/grant_table.py into the very frames the
hypervisor reads, through its own mapping of the domain's memory (the same
pages the domain's process maps). The same table as
xenlab.testing.grants.GuestGrantTable, set up on the core directly."""
from __future__ import annotations

from xenlab.testing.grants import GuestGrantTable
from xenlab.xen.grant_table import GrantFrames


class GuestGrants(GuestGrantTable):
    def __init__(self, gt, domid: int, gfns: list[int]):
        self.gt, self.domid = gt, domid
        memory = gt.memory
        missing = [g for g in gfns if not memory.is_populated(domid, g)]
        if missing:
            memory.increase_reservation(domid, gfns=missing)
        gt.setup_table(domid, gfns)
        self.gfns = list(gfns)
        super().__init__(GrantFrames(memory.frame(domid, g) for g in gfns))

    def close(self) -> None:
        self.release()
