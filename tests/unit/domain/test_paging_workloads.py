"""The paging workloads over a guest kernel's paging joined to the
hypervisor's cores (testing.paging_machine): the guest sees the same thing in
every mode, and what it costs differs as each mode's design says it must."""
from __future__ import annotations

import hashlib

import pytest

from xenlab.bench.paging import SLACK_FRAMES, run_mode, summarize
from xenlab.domain.paging_workloads import (WORKLOADS, WorkloadError, page_va, pattern,
                                            run_workloads)
from xenlab.testing.paging_machine import PagingMachine
from xenlab.xen.paging import (PFEC_PRESENT, PFEC_USER, PFEC_WRITE, USER_BASE, WALK_REFS_1D,
                               PagingMode)

PAGES = 24
REMAP = 6
SEED = 7


def run(mode: PagingMode, pages: int = PAGES, remap: int = REMAP, seed: int = SEED):
    return run_mode(mode, pages, remap, seed)


@pytest.fixture(scope="module")
def runs():
    return {mode: run(mode) for mode in PagingMode}


def expected_digest(*chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def test_every_mode_reads_back_what_was_written(runs):
    gen0 = [pattern(SEED, 0, i) for i in range(PAGES)]
    gen1 = [pattern(SEED, 1, i) for i in range(PAGES)]
    child_view = [gen1[i] if i % 2 == 0 else gen0[i] for i in range(PAGES)]
    for mode, results in runs.items():
        build, fork, remap, _ = results
        assert [r.name for r in results] == list(WORKLOADS)
        assert build.digest == expected_digest(*gen0), mode
        # The child wrote the even pages (read back from its writes), then
        # read every page; the parent still reads what it wrote before the fork.
        assert fork.digest == expected_digest(*[gen1[i] for i in range(0, PAGES, 2)],
                                              *child_view, *gen0), mode
        # The moved pages are the parent's (gen0) at their new place; the
        # old place faults at its address.
        assert remap.digest == expected_digest(*gen0[:REMAP], USER_BASE.to_bytes(8, "little")), mode


def test_the_same_workload_gives_the_same_guest_visible_results_in_every_mode(runs):
    visible = {mode: [r.visible() for r in results] for mode, results in runs.items()}
    assert visible[PagingMode.DIRECT] == visible[PagingMode.SHADOW] == visible[PagingMode.HAP]
    build, fork, remap, teardown = runs[PagingMode.DIRECT]
    assert build.faults == teardown.faults == ()
    # One COW fault (a user write to a present, read-only page) and one copy
    # per page the child wrote; none when the parent reads its pages back.
    written = range(0, PAGES, 2)
    assert fork.faults == tuple((page_va(USER_BASE, i), PFEC_PRESENT | PFEC_WRITE | PFEC_USER)
                                for i in written)
    assert fork.guest == {"page_faults": len(written), "cow_copies": len(written)}
    # The old place of a moved page is gone: a user read of a not-present page.
    assert remap.faults == ((page_va(USER_BASE, 0), PFEC_USER),)


def test_the_costs_differ_by_mode_as_each_design_says(runs):
    direct, shadow, hap = (summarize(m.value, runs[m]) for m in PagingMode)
    # Direct: every table change is a validated hypercall; nothing traps.
    assert direct.hypercalls > 0 and direct.traps == 0
    assert direct.refs_per_miss == WALK_REFS_1D
    # Shadow: no page-table hypercall; the guest's table writes and the
    # lazily filled shadows trap; the shadows take pool pages.
    assert shadow.hypercalls == 0 and shadow.traps > 0 and shadow.bookkeeping_pages > 0
    # 1-D walks; a hidden fault (a shadow not filled yet) ends one early
    assert shadow.refs_per_miss <= WALK_REFS_1D
    # HAP: no page-table hypercall, no trap for a table write, and each TLB
    # miss walks two dimensions: more references per miss than a 1-D walk.
    assert hap.hypercalls == 0 and hap.refs_per_miss > WALK_REFS_1D
    assert hap.bookkeeping_pages > 0
    assert hap.traps < shadow.traps
    for row in (direct, shadow, hap):
        assert row.tlb_misses > 0 and row.pt_updates > 0


def test_a_different_seed_changes_the_digests_not_the_faults():
    one, other = run(PagingMode.DIRECT, 8, 2, seed=1), run(PagingMode.DIRECT, 8, 2, seed=2)
    assert one[0].digest != other[0].digest
    assert [r.faults for r in one] == [r.faults for r in other]


@pytest.mark.parametrize("pages, remap", [(0, 0), (4, 5), (4, -1)])
def test_impossible_parameters_are_refused_before_anything_is_mapped(pages, remap):
    machine = PagingMachine(PagingMode.DIRECT, pages=SLACK_FRAMES)
    with pytest.raises(WorkloadError):
        run_workloads(machine.kernel, machine.alloc_frame, machine.free_frame, pages, remap)
