"""Paging: the same guest workloads (xenlab.domain.paging_workloads) in the
three paging modes, side by side: what each mode costs in hypercalls, VM
exits, page-table updates, TLB misses and the memory references of their
walks, and the hypervisor's bookkeeping memory (shadow pages, nested P2M
pages), with the time per operation.

The in-process run joins a guest kernel's paging to the hypervisor's cores
directly (xenlab.testing.paging_machine): no process, no gRPC, so its times
are the paging code's own. The domains run boots a lab of three domUs, one
per mode (xl.cfg type="pv"; type="hvm", hap=0; type="hvm", hap=1), and asks
each one's kernel to run the workloads on its own MMU (the guest agent's
RunPagingWorkload): its exits and hypercalls are real gRPC calls to the
hypervisor's cores, so its times include them. Every mode must give the same guest-visible
results (digests of the bytes read back, the faults taken); a run where they
differ is an error, not a figure.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from xenlab.agent_client import agent_for
from xenlab.bench.labs import running_lab
from xenlab.lab.spec import LabSpec, parse_lab
from xenlab.proto import agent_pb2

from xenlab.domain.paging_workloads import (DEFAULT_PAGES, DEFAULT_REMAP, WORKLOADS, WorkloadResult,
                                             run_workloads)
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
    machine = PagingMachine(mode, pages=2 * pages + SLACK_FRAMES)
    return run_workloads(machine.kernel, machine.alloc_frame, machine.free_frame, pages, remap,
                         seed, hypervisor_counters=lambda: hypervisor_counters(machine),
                         gauges=lambda: {"pool_used": pool_used(machine)},
                         clock=time.perf_counter)


def hypervisor_counters(machine: PagingMachine) -> dict[str, int]:
    """The hypervisor side's counters in the harness (its cores and backend)."""
    return {k: v for k, v in machine.counters().items() if not k.startswith(("mmu.", "kernel."))}


def pool_used(machine: PagingMachine) -> int:
    """Pool pages holding shadows or nested P2M tables now."""
    if machine.pool is not None:
        return machine.pool.used
    shadow = machine.shadow
    if shadow is not None:
        pages = shadow.counters.get("shadow_pages")
        return pages if pages is not None else len(shadow._used) + (shadow.root is not None)
    return 0


# The domains run: one domU per mode, as xl.cfg chooses it.
DOMAIN_MODES = ((PagingMode.DIRECT, "pv-direct", 'type = "pv"'),
                (PagingMode.SHADOW, "hvm-shadow", 'type = "hvm"\nhap = 0'),
                (PagingMode.HAP, "hvm-hap", 'type = "hvm"\nhap = 1'))
DOMAIN_MEMORY_MB = 32
WORKLOAD_TIMEOUT = 600.0


def paging_lab_spec() -> LabSpec:
    lines = ['[lab]\nname = "paging"\n', "[hypervisor]",
             f"memory = {256 + 64 + 3 * (DOMAIN_MEMORY_MB + 8)}\n"]
    for _, name, keys in DOMAIN_MODES:
        lines.append(f'[[domain]]\nname = "{name}"\nmemory = {DOMAIN_MEMORY_MB}\n{keys}\n')
    return parse_lab("\n".join(lines), "<paging bench lab>")


async def run_in_domains(pages: int, remap: int, seed: int = 0, log_level: str = "WARNING",
                         keep: Path | None = None) -> dict[str, list[WorkloadResult]]:
    """The workloads in three real domains, one per mode."""
    runs = {}
    async with running_lab(paging_lab_spec(), log_level=log_level, keep=keep) as lab:
        for mode, name, _ in DOMAIN_MODES:
            async with await agent_for(lab.hv, lab.domids[name]) as agent:
                reply = await agent.RunPagingWorkload(agent_pb2.PagingWorkloadRequest(
                    pages=pages, remap=remap, seed=seed), timeout=WORKLOAD_TIMEOUT)
            if reply.mode != mode.value:
                raise PagingBenchError(f"{name} runs on {reply.mode} paging, not {mode.value}")
            runs[reply.mode] = [from_reply(r) for r in reply.results]
    check_same_visible(runs)
    return runs


def from_reply(r) -> WorkloadResult:
    return WorkloadResult(r.name, r.ops, r.digest, tuple((f.va, f.code) for f in r.faults),
                          dict(r.guest), dict(r.counters), r.seconds, dict(r.gauges))


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
    out = [table(section[key], title) for key, title in titles.items() if key in section]
    if section.get("domains_error"):
        out.append(f"paging in domains stopped: {section['domains_error']}")
    return "\n\n".join(out)


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
