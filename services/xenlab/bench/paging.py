"""Paging: the same guest workloads (xenlab.domain.paging_workloads) in the
three paging modes, side by side: what each mode costs in hypercalls, VM
exits, page-table updates, TLB misses and the memory references of their
walks, and the hypervisor's bookkeeping memory (shadow pages, nested P2M
pages), with the time per operation.

The in-process run joins a guest kernel's paging to the hypervisor's cores
directly (xenlab.testing.paging_machine): no process, no gRPC, so its times
are the paging code's own. Every mode must give the same guest-visible
results (digests of the bytes read back, the faults taken); a run where they
differ is an error, not a figure.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from xenlab.domain.paging_workloads import (DEFAULT_PAGES, DEFAULT_REMAP, MAX_PAGES, WORKLOADS,
                                             WorkloadResult, run_workloads)
from xenlab.testing.paging_machine import PagingMachine
from xenlab.xen.paging import PagingMode

# Frames for the kernel's own tables and the fork's COW copies, beyond the
# workloads' data pages.
SLACK_FRAMES = 256


class PagingBenchError(RuntimeError):
    """The modes disagreed on what the guest sees."""


@dataclass(frozen=True)
class ModeSummary:
    """One row of the table: a mode's costs, summed over the workloads."""

    mode: str
    hypercalls: int          # mmu_update / mmuext_op calls (direct)
    traps: int               # VM exits: shadow page faults and CR3 loads; EPT violations
    pt_updates: int          # page-table entries changed (validated, emulated or in place)
    tlb_misses: int
    walk_refs: int           # memory references of the walks those misses cost
    bookkeeping_pages: int   # shadow pages / nested P2M pages in use, at most
    us_per_op: dict          # workload -> microseconds per page operation

    @property
    def refs_per_miss(self) -> float:
        return self.walk_refs / self.tlb_misses if self.tlb_misses else 0.0


def _sum(results: list[WorkloadResult], *keys: str) -> int:
    return sum(r.counters.get(k, 0) for r in results for k in keys)


def summarize(mode: str, results: list[WorkloadResult]) -> ModeSummary:
    gauges = [v for r in results for k, v in r.gauges.items() if k in BOOKKEEPING]
    return ModeSummary(
        mode=mode,
        hypercalls=_sum(results, *HYPERCALLS),
        traps=_sum(results, *TRAPS),
        pt_updates=_sum(results, *PT_UPDATES),
        tlb_misses=_sum(results, "mmu.tlb_misses"),
        walk_refs=_sum(results, "mmu.walk_refs"),
        bookkeeping_pages=max(gauges, default=0),
        us_per_op={r.name: r.per_op_us() for r in results})


# Where each column comes from: the guest kernel's own counts of what it
# asked of the hypervisor ("guest.": the same in the harness and in a real
# domain), and the MMU's ("mmu.").
HYPERCALLS = ("guest.hypercalls",)                  # mmu_update and mmuext_op calls
TRAPS = ("guest.shadow_exits", "guest.cr3_exits", "guest.nested_exits")
PT_UPDATES = ("guest.mmu_update_entries", "guest.pt_writes")   # validated; written in place
BOOKKEEPING = ("pool_used",)                        # shadow or nested P2M pages in use


def run_in_process(pages: int = DEFAULT_PAGES, remap: int = DEFAULT_REMAP, seed: int = 0,
                   modes=tuple(PagingMode)) -> dict[str, list[WorkloadResult]]:
    runs = {PagingMode(mode).value: run_mode(mode, pages, remap, seed) for mode in modes}
    check_same_visible(runs)
    return runs


def run_mode(mode: PagingMode, pages: int, remap: int, seed: int = 0) -> list[WorkloadResult]:
    """The workloads in a fresh harness of ``mode``, big enough for them."""
    machine = PagingMachine(mode, pages=2 * pages + SLACK_FRAMES, cores="xen")
    return run_workloads(machine.kernel, machine.alloc_frame, machine.free_frame, pages, remap,
                         seed, hypervisor_counters=lambda: hypervisor_counters(machine),
                         gauges=lambda: {"pool_used": pool_used(machine)},
                         clock=time.perf_counter)


def hypervisor_counters(machine: PagingMachine) -> dict[str, int]:
    """The hypervisor side's counters in the harness (its cores and backend)."""
    return {k: v for k, v in machine.counters().items() if not k.startswith(("mmu.", "kernel."))}


def pool_used(machine: PagingMachine) -> int:
    """Pool pages holding shadows or nested P2M tables now."""
    return machine.pool_used


def check_same_visible(runs: dict[str, list[WorkloadResult]]) -> None:
    """Every mode saw the same bytes and the same faults, or this raises."""
    modes = list(runs)
    first = [r.visible() for r in runs[modes[0]]]
    for mode in modes[1:]:
        other = [r.visible() for r in runs[mode]]
        for mine, theirs in zip(first, other):
            if mine != theirs:
                raise PagingBenchError(f"{mode} and {modes[0]} differ in what the guest sees in "
                                       f"{mine[0]}: {theirs} != {mine}")


def figures(runs: dict[str, list[WorkloadResult]], pages: int, remap: int) -> dict:
    """What goes into the bench's JSON."""
    return {"pages": pages, "remap": remap,
            "summary": {m: {**asdict(summarize(m, rs)), "refs_per_miss": summarize(m, rs).refs_per_miss}
                        for m, rs in runs.items()},
            "workloads": {m: [asdict(r) for r in rs] for m, rs in runs.items()}}


def tables(section: dict) -> str:
    """The paging section of the bench's JSON as tables: one per place it ran."""
    titles = {"in_process": "in-process: the guest's paging joined to the hypervisor's cores",
              "domains": "three domains, one per mode, through the agent and the Paging service"}
    return "\n\n".join(table(section[key], title) for key, title in titles.items() if key in section)


def table(fig: dict, title: str) -> str:
    rows = list(fig["summary"].values())
    header = ["mode", "hypercalls", "traps", "PT updates", "TLB misses", "walk refs", "refs/miss",
              "bookkeeping pages"] + [f"{w} us/op" for w in WORKLOADS]
    body = [[r["mode"], f"{r['hypercalls']:,}", f"{r['traps']:,}", f"{r['pt_updates']:,}",
             f"{r['tlb_misses']:,}", f"{r['walk_refs']:,}", f"{r['refs_per_miss']:.1f}",
             f"{r['bookkeeping_pages']:,}"]
            + [f"{r['us_per_op'].get(w, 0.0):.1f}" for w in WORKLOADS] for r in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = [f"Paging, {title}: {fig['pages']} pages, {fig['remap']} remapped; "
             f"the same guest-visible results in every mode",
             "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
              for line in body]
    return "\n".join(lines)
