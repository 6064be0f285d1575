"""A domain kernel's half of its grant table, for tests of the hypervisor's:
the entries written with xen/grant_table.py into the very frames the
hypervisor reads, through its own mapping of the domain's memory (the same
pages the domain's process maps)."""
from __future__ import annotations

from xenlab.xen.grant_table import GrantFrames, GrantRefs


class GuestGrants:
    def __init__(self, gt, domid: int, gfns: list[int]):
        self.gt, self.domid = gt, domid
        memory = gt.memory
        missing = [g for g in gfns if not memory.is_populated(domid, g)]
        if missing:
            memory.increase_reservation(domid, gfns=missing)
        gt.setup_table(domid, gfns)
        self.gfns = list(gfns)
        self.frames = GrantFrames(memory.frame(domid, g) for g in gfns)
        self.refs = GrantRefs(self.frames.nr_entries)

    def grant(self, peer: int, gfn: int, readonly: bool = False) -> int:
        [ref] = self.refs.alloc(1)
        self.frames.grant(ref, peer, gfn, readonly)
        return ref

    def end(self, ref: int) -> bool:
        """gnttab_end_foreign_access_ref: False while the entry is pinned."""
        if self.frames.end_access(ref):
            self.refs.release([ref])
            return True
        return False

    def close(self) -> None:
        self.frames.release()
