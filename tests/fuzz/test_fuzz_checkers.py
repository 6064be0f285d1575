"""The fuzzers' own checkers fail when they should: GrantAudit catches a
backend that uses its privilege or skips its checks, check_invariants
catches broken cores, memory digests catch a write."""
from __future__ import annotations

import pytest

from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.grants import CopyOp, CopyPtr
from xenlab.testing.grants import GuestGrantTable
from xenlab.testing_invariants import (GrantAudit, InvariantError, changed_frames,
                                       check_invariants, memory_digest)
from xenlab.xen import abi

DOM0 = Caller(0, privileged=True)


async def test_grant_audit_flags_privileged_gfn_copies_and_unchecked_offsets(hypervisor):
    hv = hypervisor.hv
    domid, client = await hypervisor.create_domain("guest")
    table = await GuestGrantTable.setup(hv, client)
    ref = table.grant(0, 100)
    with GrantAudit(hv, auditee=0) as audit:
        ok = hv.grants.copy(DOM0, [CopyOp(CopyPtr(domid, ref=ref, use_gref=True),
                                          CopyPtr(abi.DOMID_SELF, gfn=20), 60)])
        assert ok == [abi.GNTST_okay] and not audit.violations
        hv.grants.copy(DOM0, [CopyOp(CopyPtr(domid, gfn=100), CopyPtr(abi.DOMID_SELF, gfn=20), 60)])
        assert "used its privilege" in audit.violations[-1]
        hv.grants.copy(DOM0, [CopyOp(CopyPtr(domid, ref=ref, use_gref=True, offset=4000),
                                     CopyPtr(abi.DOMID_SELF, gfn=20), 200)])
        assert "refused as" in audit.violations[-1]
        hv.grants.copy(DOM0, [CopyOp(CopyPtr(domid, ref=ref + 1, use_gref=True),
                                     CopyPtr(abi.DOMID_SELF, gfn=20), 60)])
        assert audit.refused(domid) == 2           # past the page, and no such ref
    assert "copy_gnttab" not in vars(hv.grants)        # the audit put everything back
    table.release()


async def test_check_invariants_catches_broken_cores(hypervisor):
    hv = hypervisor.hv
    a, _ = await hypervisor.create_domain("a")
    check_invariants(hv)
    channel = hv.evtchn._domains[a].channels
    port = hv.evtchn.alloc_unbound(Caller(a), a, 0)
    channel[port].state = abi.EvtchnState.interdomain       # a peer that does not exist
    channel[port].remote_port = 77
    with pytest.raises(InvariantError, match="not bound"):
        check_invariants(hv)
    del channel[port]
    hv.xenstore._live.owned[a] += 5                          # a miscounted quota
    with pytest.raises(InvariantError, match="counted as owning"):
        check_invariants(hv)


async def test_check_invariants_catches_a_direct_path_that_outlives_its_channel(hypervisor):
    hv = hypervisor.hv
    a, _ = await hypervisor.create_domain("a")
    b, _ = await hypervisor.create_domain("b")
    pa = hv.evtchn.alloc_unbound(Caller(a), a, b)
    pb = hv.evtchn.bind_interdomain(Caller(b), a, pa)
    assert hv.doorbell.links() and check_invariants(hv) is None
    hv.evtchn._links = None                                  # a core that forgets to revoke
    hv.evtchn.close(b, pb)
    with pytest.raises(InvariantError, match="outlives its channel"):
        check_invariants(hv)


async def test_memory_digest_sees_one_changed_byte(hypervisor):
    hv = hypervisor.hv
    a, _ = await hypervisor.create_domain("a")
    before = memory_digest(hv, a)
    with hv.memory.frame(a, 123) as page:
        page[7] ^= 1
    assert changed_frames(before, memory_digest(hv, a)) == [123]
