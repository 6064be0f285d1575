"""A hostile frontend against a real netback (issue "Hostile input and
faults", part 1).

One in-process hypervisor; Domain-0 runs netback with a small switch as its
hotplug; domUs a and b run netfront and exchange frames through it the
whole time; an idle domU has a vif alone on its own bridge; a hostile domU
(xenlab.testing_hostile.HostileFrontend) does the handshake by hand and then
publishes at least XENLAB_FUZZ_REQUESTS (100,000) seeded hostile tx requests
in rounds: well-formed frames, frames netback must answer with errors, one
fatal frame now and then, garbage slots, slots rewritten after publishing,
producer indexes past or behind the ring, floods of notifications, and
garbage rx requests. Each round is either answered as netback documents or
disables the vif, and the toolstack then gives the hostile a new one.

Shown:
* netback never hangs, never crashes a task, and answers the head of every
  round exactly as its rules say (ids echoed, OKAY/ERROR/NULL per slot);
  fatal rounds disable the vif, the others never do;
* every grant map and copy netback made named only refs the hostile had
  granted to Domain-0 (or was refused by the hypervisor), never a foreign
  gfn, and never past a page (GrantAudit); every frame it let out of the
  hostile's vif holds nothing but the hostile's own buffer bytes;
* the memory of every other domain, outside what it grants, is byte for
  byte what it was; the idle domain's is entirely unchanged;
* a and b lose nothing: every frame each sent arrived, in order;
* the hypervisor's invariants hold throughout (check_invariants);
* all of it also with feature-xenlab-persistent=1, where netback maps the hostile's
  buffer pages and copies through them itself: it then maps some of them.

XENLAB_FUZZ_SEED picks the seed (printed; "random" for a fresh one) and
XENLAB_FUZZ_REQUESTS the number of hostile requests.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
import time

import pytest

from fuzz_helpers import Traffic, fuzz_budget
from xenlab.testing import check_invariants, eventually
from xenlab.testing_hostile import HostileFrontend, TxFuzzer, toolstack
from xenlab.testing_invariants import GrantAudit, changed_frames, granted_frames, memory_digest
from xenlab.xen import abi

REQUESTS = fuzz_budget()


def verify_head(front: HostileFrontend, rnd, first: int) -> int:
    """The answers to the round's known head; returns how many were errors."""
    answered = (front.rsp_prod - first) & 0xFFFFFFFF
    assert answered >= rnd.checked, (
        f"{rnd.kind}: netback answered {answered} slots, fewer than the {rnd.checked} "
        "it consumed before anything hostile")
    errors = 0
    clobbered = {k for _, k, _ in rnd.rewrites}     # our rewrite may land on the answer
    for i in range(answered):
        if i in clobbered:
            continue
        rsp = front.response(first + i)
        assert rsp.status in (abi.NETIF_RSP_OKAY, abi.NETIF_RSP_ERROR, abi.NETIF_RSP_NULL), \
            f"{rnd.kind}: slot {i} answered with status {rsp.status}"
        errors += rsp.status == abi.NETIF_RSP_ERROR
        if i < rnd.checked and rnd.expect[i] is not None:
            assert (rsp.id, rsp.status) == rnd.expect[i], (
                f"{rnd.kind}: slot {i} answered (id {rsp.id}, status {rsp.status}), "
                f"expected {rnd.expect[i]}")
    return errors


@pytest.mark.timeout(600)
@pytest.mark.parametrize("persistent", [False, True], ids=["copy", "persistent-grants"])
async def test_hostile_frontend_costs_only_its_own_vif(netlab, seed, caplog, persistent):
    caplog.set_level(logging.WARNING)
    print(f"netback fuzz: {REQUESTS} hostile requests; feature-xenlab-persistent={int(persistent)}")
    rng = random.Random(seed)
    hv, dom0, switch = netlab.hv, netlab.dom0, netlab.switch
    a, b, idle = [await netlab.boot(name, netfront=True) for name in ("a", "b", "idle")]
    eth_a = await netlab.attach(a, "00:16:3e:0a:00:01")
    eth_b = await netlab.attach(b, "00:16:3e:0b:00:01")
    eth_idle = await netlab.attach(idle, "00:16:3e:1d:00:01", bridge="idlebr")
    hostile = await netlab.boot("hostile")
    front = HostileFrontend(hostile, toolstack(netlab.lab), mac="00:16:3e:66:00:01",
                            bridge="xenbr0", foreign_domid=a.domid, persistent=persistent)
    traffic = Traffic(eth_a, eth_b)

    with GrantAudit(hv, auditee=0) as audit:
        await front.attach()
        switch.only_byte[front.vif.vifname] = front.pattern
        await asyncio.sleep(0.05)
        bystanders = {k.domid: k.name for k in (a, b)}
        before = {d: memory_digest(hv, d, granted_frames(hv, d)) for d in bystanders}
        idle_before = memory_digest(hv, idle.domid)
        hostile_before = memory_digest(hv, hostile.domid, front.used_gfns)

        fuzzer = TxFuzzer(rng, front.refs)
        counts = collections.Counter()
        kinds = collections.Counter()
        started = time.monotonic()
        rounds = 0
        while counts["requests"] < REQUESTS:
            rounds += 1
            rnd = fuzzer.round()
            kinds.update(rnd.kind.split("+"))
            traffic.send(rng, broadcast=rounds % 8 == 0)
            vif = dom0.vifs[front.vif.vifname]
            if rnd.rx_slots:
                front.put_rx(rnd.rx_slots, rnd.rx_req_prod)
                counts["rx_requests"] += len(rnd.rx_slots)
            first = front.put(rnd.slots)
            front.publish(None if rnd.req_prod is None else (first + rnd.req_prod) & 0xFFFFFFFF)
            front.arm()
            front.kick(rnd.kicks)
            counts["kicks"] += rnd.kicks
            for yields in range(8):
                for when, k, data in rnd.rewrites:
                    if when == yields:
                        front.rewrite(first + k, data)
                await asyncio.sleep(0)
            counts["requests"] += len(rnd.slots)
            until = "disabled" if rnd.fatal else "either"
            outcome = await front.wait(first + len(rnd.slots), until=until,
                                       disabled=lambda: vif.disabled is not None)
            where = f"round {rounds} ({rnd.kind}, seed {seed})"
            assert outcome != "hung", f"{where}: netback neither answered nor disabled the vif"
            if rnd.kind == "kicks_only":
                assert outcome == "answered" and front.rsp_prod == first
            counts["errors"] += verify_head(front, rnd, first)
            if rnd.fatal is False:
                assert outcome == "answered", (
                    f"{where}: a round with no fatal request disabled the vif: {vif.disabled}")
            if rnd.fatal is True:
                assert outcome == "disabled", f"{where}: a fatal round was answered"
            if outcome == "disabled":
                counts["disables"] += 1
                await eventually(lambda: front.other_state != abi.XenbusState.Connected,
                                 "the backend to leave Connected")
                assert await front.backend_error(), f"{where}: disabled without an error node"
                for eth in (eth_a, eth_b, eth_idle):
                    assert eth.state == "connected", f"{where}: another vif went {eth.state}"
                await front.reconnect()
                fuzzer.refs = front.refs
                switch.only_byte[front.vif.vifname] = front.pattern
            if rounds % 100 == 0:
                check_invariants(hv)
        await traffic.settle()
        elapsed = time.monotonic() - started
        await front.detach()
        await asyncio.sleep(0.05)

    check_invariants(hv)
    print(f"netback fuzz: {rounds} rounds, {counts['requests']} hostile requests "
          f"({counts['errors']} answered with errors), {counts['disables']} disables, "
          f"{counts['kicks']} notifications, {counts['rx_requests']} hostile rx requests, "
          f"{elapsed:.1f}s; round kinds: {dict(sorted(kinds.items()))}")
    hostile_ops = {k[1]: n for k, n in audit.statuses.items() if k[0] == hostile.domid}
    print(f"netback fuzz: {audit.ops} grant copy ops audited; on the hostile's refs: {hostile_ops}")
    print(f"netback fuzz: a<->b {traffic.frames()} frames, none lost; "
          f"{sum(switch.from_vif[n] for n in switch.only_byte)} hostile frames netback sent on")

    assert counts["requests"] >= REQUESTS
    assert not audit.violations, "\n".join(audit.violations[:20])
    assert audit.refused(hostile.domid) > 0          # the audit saw the hostile refs refused
    if persistent:
        assert audit.statuses[(hostile.domid, "map:okay")] > 2, audit.statuses
    assert not switch.foreign_bytes, switch.foreign_bytes[:5]
    for domid in (a.domid, b.domid):
        assert not dom0.vifs[f"vif{domid}.0"].drops, dom0.vifs[f"vif{domid}.0"].drops
    for domid, name in bystanders.items():
        after = memory_digest(hv, domid, granted_frames(hv, domid))
        assert not changed_frames(before[domid], after), f"{name}'s ungranted memory changed"
    assert not changed_frames(idle_before, memory_digest(hv, idle.domid)), \
        "the idle domain's memory changed"
    # its grant frames are its kernel's to write
    shared = set(front.used_gfns) | set(hv.grants.grant_frames(hostile.domid))
    assert not changed_frames({g: h for g, h in hostile_before.items() if g not in shared},
                              memory_digest(hv, hostile.domid, shared)), \
        "the hostile's own unshared memory changed"
    crashes = [r for r in caplog.records if r.exc_info or "task failed" in r.getMessage()
               or "handler for port" in r.getMessage()]
    assert not crashes, [r.getMessage() for r in crashes[:5]]
    assert dom0.evtchn.stats["handler_error"] == 0
