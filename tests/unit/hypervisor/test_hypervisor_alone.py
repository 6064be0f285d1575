"""The hypervisor without a toolstack: the interface the toolstack drives
(allocate, populate, launch, run, halt, destroy), and what Xen does when no
toolstack answers a domain's shutdown: the domain stays shut down."""
from __future__ import annotations

import shutil

import pytest

from xenlab.hypervisor.config import HypervisorConfig
from xenlab.hypervisor.core import PAGES_PER_MB, Hypervisor
from xenlab.hypervisor.domains import RunState
from xenlab.testing import short_tempdir
from xenlab.xen.errors import AuthError


@pytest.fixture
def rundir():
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def started(rundir) -> Hypervisor:
    hv = Hypervisor(HypervisorConfig(address=f"unix:{rundir}/hv.sock", rundir=rundir,
                                     total_memory_mb=512, launcher="none"))
    await hv.start()
    return hv


@pytest.fixture
async def hv(rundir):
    hv = await started(rundir)
    try:
        yield hv
    finally:
        await hv.close()


async def make(hv: Hypervisor, name: str):
    dom = hv.domains.allocate(name, 16 * PAGES_PER_MB, 1)
    secret = hv.populate(dom, 8 * PAGES_PER_MB)
    agent = await hv.launch(dom, hv.launcher_for(""), secret, "a-token")
    hv.run(dom)
    return dom, secret, agent


async def test_a_domain_is_made_through_the_narrow_interface(hv):
    dom, secret, agent = await make(hv, "web")
    assert hv.identity.check(str(dom.domid), secret).domid == dom.domid
    assert hv.memory.reservation(dom.domid)[:2] == (8 * PAGES_PER_MB, 16 * PAGES_PER_MB)
    assert agent.endswith(f"/d{dom.domid}/agent.sock")
    assert dom.state is RunState.RUNNING and hv.process(dom.domid) is None


@pytest.mark.parametrize("reason, state", [("poweroff", RunState.SHUTDOWN),
                                           ("crash", RunState.CRASHED)])
async def test_with_no_toolstack_a_domain_that_shut_down_stays_shut_down(hv, reason, state):
    dom, _, _ = await make(hv, "lonely")
    hv.sched_shutdown(dom.domid, reason)
    await hv.wait_gone_or_stopped(dom, 10.0)
    assert hv.domains.get(dom.domid) is dom
    assert (dom.state, dom.shutdown_reason) == (state, reason)
    assert dom.domid in hv.memory.domains()        # kept until someone destroys it


async def test_halt_and_destroy_undo_everything_populate_did(hv):
    before = (hv.memory.free_pages, hv.memory.shm_files())
    dom, secret, _ = await make(hv, "brief")
    await hv.halt(dom)
    assert dom.state is RunState.DYING and dom.domid in hv.domains
    hv.destroy(dom)
    assert dom.domid not in hv.domains
    assert dom.domid not in hv.memory.domains() + hv.grants.domains() + hv.evtchn.domains()
    assert (hv.memory.free_pages, hv.memory.shm_files()) == before
    with pytest.raises(AuthError):
        hv.identity.check(str(dom.domid), secret)


async def test_closing_the_hypervisor_destroys_what_no_toolstack_destroyed(rundir):
    hv = await started(rundir)
    await make(hv, "left")
    await hv.close()
    assert [d.domid for d in hv.domains] == [0]
    assert hv.memory.shm_files() == []
