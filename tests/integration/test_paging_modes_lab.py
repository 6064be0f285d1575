"""Three domain processes, one per paging mode as xl.cfg chooses it (type="pv";
type="hvm", hap=0; type="hvm", hap=1): the same paging workloads, run by
each kernel on its own MMU through the guest agent, give the same
guest-visible results with each mode's costs; and xl mem-set moves each
one's memory through its balloon, after which its kernel still runs them."""
from __future__ import annotations

import pytest

from xenlab.agent_client import agent_for
from xenlab.bench.labs import running_lab
from xenlab.bench.paging import (DOMAIN_MEMORY_MB, DOMAIN_MODES, check_same_visible, from_reply,
                                 paging_lab_spec, summarize)
from xenlab.proto import agent_pb2, common_pb2, memory_pb2
from xenlab.testing import eventually
from xenlab.xen.paging import WALK_REFS_1D, PagingMode

pytestmark = pytest.mark.integration

PAGES, REMAP = 16, 4


async def run(lab, name: str):
    async with await agent_for(lab.hv, lab.domids[name]) as agent:
        reply = await agent.RunPagingWorkload(
            agent_pb2.PagingWorkloadRequest(pages=PAGES, remap=REMAP, seed=3), timeout=300)
    return reply.mode, [from_reply(r) for r in reply.results]


async def pages_of(lab, name: str) -> int:
    res = await lab.hv.memory.GetReservation(common_pb2.DomainRef(name=name))
    return res.current_pages


async def test_each_paging_mode_in_its_own_domain(tmp_path):
    async with running_lab(paging_lab_spec()) as lab:
        runs = {}
        for mode, name, _ in DOMAIN_MODES:
            got_mode, runs[mode] = await run(lab, name)
            assert got_mode == mode.value
        check_same_visible({m.value: r for m, r in runs.items()})
        direct, shadow, hap = (summarize(m.value, runs[m]) for m in PagingMode)
        assert direct.hypercalls > 0 and direct.traps == 0
        assert shadow.hypercalls == 0 and shadow.traps > 0
        assert hap.hypercalls == 0 and hap.refs_per_miss > WALK_REFS_1D
        assert direct.refs_per_miss == WALK_REFS_1D >= shadow.refs_per_miss

        # xl mem-set down then up, in each mode: the balloon gives frames back
        # (out of the kernel's direct map first) and takes new ones.
        full = DOMAIN_MEMORY_MB * 256
        for _, name, _ in DOMAIN_MODES:
            for mb in (DOMAIN_MEMORY_MB - 8, DOMAIN_MEMORY_MB):
                await lab.hv.memory.SetTarget(memory_pb2.MemSetRequest(
                    domain=common_pb2.DomainRef(name=name), kb=mb * 1024))

                async def reached(name=name, mb=mb) -> bool:
                    return await pages_of(lab, name) == mb * 256
                await eventually(reached, f"{name} ballooned to {mb} MiB", timeout=60)
            assert await pages_of(lab, name) == full
            mode, again = await run(lab, name)
            assert [r.visible() for r in again] == [r.visible() for r in runs[PagingMode(mode)]]
