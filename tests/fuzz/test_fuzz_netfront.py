"""A hostile backend against a real netfront (issue "Hostile input and
faults", part 1: "a frontend must not trust rx responses").

The victim domU runs netfront with two vifs: eth0 through Domain-0's
netback to domU b (traffic flows both ways the whole time), and one served
by an unprivileged driver domain that is hostile
(xenlab.testing_hostile.HostileBackend). The hostile backend answers at
least XENLAB_FUZZ_REQUESTS (100,000) of the victim's rx requests with
seeded lies (wrong ids, error statuses, offsets and sizes past the page,
runts, too many slots, bad extras, chains cut short, now and then a
producer index past every request) among well-formed frames, and answers
the victim's tx requests with lies of their own (ids never sent, ids
answered twice, NETIF_RSP_NULL).

Shown:
* netfront hands up exactly the well-formed frames, byte for byte and in
  order, and counts every lying frame under the reason its rules give;
* tx lies are counted as bad responses and never free a buffer that is
  still in flight (a lie takes its request's slot, so that buffer stays in
  flight for good: the lie costs the liar's own interface);
* a producer index past every request marks only that interface broken,
  and a new vif from the toolstack works again;
* no handler ever raises; eth0 loses nothing; the hypervisor's invariants hold.
"""
from __future__ import annotations

import collections
import logging
import random
import time

import pytest

from fuzz_helpers import Traffic, fuzz_budget, make_frame
from xenlab.testing import check_invariants, eventually
from xenlab.testing_hostile import HostileBackend, RxFuzzer, toolstack
from xenlab.xen.netif import RxRequest, TxRequest

RESPONSES = fuzz_budget()
VICTIM_MAC = "00:16:3e:5a:00:02"


class Victim:
    """The victim's interface on the hostile backend, and what it handed up."""

    def __init__(self, kernel, back: HostileBackend):
        self.kernel, self.back = kernel, back
        self.dev = None
        self.frames: list[bytes] = []

    async def connect(self) -> None:
        name = f"eth{self.back.vif.devid}"
        self.dev = await eventually(lambda: self.kernel.netifs.get(name), f"the victim's {name}")
        await eventually(lambda: self.dev.state == "connected", f"{name} to connect")
        self.dev.receiver = self.frames.extend
        self.outstanding: list[RxRequest] = []
        self.leaked_tx = 0      # tx requests answered with a lie: in flight for good


@pytest.mark.timeout(600)
async def test_hostile_backend_costs_only_that_interface(netlab, seed, caplog):
    caplog.set_level(logging.WARNING)
    print(f"netfront fuzz: {RESPONSES} hostile responses")
    rng = random.Random(seed)
    hv = netlab.hv
    victim = await netlab.boot("victim", netfront=True)
    b = await netlab.boot("b", netfront=True)
    eth0 = await netlab.attach(victim, "00:16:3e:5a:00:01")
    eth_b = await netlab.attach(b, "00:16:3e:0b:00:01")
    traffic = Traffic(eth0, eth_b)
    evil = await netlab.boot("evil")
    back = HostileBackend(evil, toolstack(netlab.lab), victim.domid, mac=VICTIM_MAC)
    await back.attach()
    target = Victim(victim, back)
    await target.connect()
    fuzzer = RxFuzzer(rng, dst_mac=bytes.fromhex(VICTIM_MAC.replace(":", "")))

    counts = collections.Counter()
    kinds = collections.Counter()
    started = time.monotonic()
    rounds = 0
    while counts["responses"] < RESPONSES:
        rounds += 1
        where = f"round {rounds} (seed {seed})"
        dev = target.dev
        traffic.send(rng, broadcast=rounds % 8 == 0)
        # The victim transmits through the hostile backend too.
        sent = [make_frame(b"\xff" * 6, dev.mac, rounds * 8 + i, rng.choice((60, 1514)))
                for i in range(rng.randrange(4))]
        if sent:
            dev.transmit(sent)
        waiting = await back.wait_requests(back.rx, 1)
        assert waiting or target.outstanding, f"{where}: the victim posted no rx buffer"
        target.outstanding += [RxRequest.unpack(raw) for _, raw in await back.rx.take()]
        tx_ids = [TxRequest.unpack(raw).id for _, raw in await back.tx.take()]
        rnd = fuzzer.round(target.outstanding)
        kinds.update(rnd.kind.split("+"))
        statuses = await back.fill(rnd.writes)
        assert set(statuses) <= {0}, f"{where}: copying into the victim's rx pages: {statuses}"
        answers = fuzzer.tx_answers(tx_ids)
        before_frames, before = len(target.frames), collections.Counter(dev.drops)
        tx_before = collections.Counter(dev.counters)
        first = back.rx.rsp_prod
        back.rx.put(rnd.responses)
        back.tx.put(answers.responses)
        await back.publish_tx()
        await back.publish_rx(None if rnd.rsp_prod is None else (first + rnd.rsp_prod) & 0xFFFFFFFF)
        back.kick(rng.choice((1, 1, 1, rng.randrange(1, 64))))
        counts["responses"] += len(rnd.responses) + len(answers.responses)
        target.outstanding = target.outstanding[len(rnd.responses):]
        target.leaked_tx += len(answers.leaked)
        if rnd.broken:
            await eventually(lambda: dev.state == "broken", f"{where}: the victim to give up")
        else:
            # Every answered page comes back as a new request once netfront took it.
            got = await back.wait_requests(back.rx, len(rnd.responses))
            assert got >= len(rnd.responses), (
                f"{where} ({rnd.kind}): the victim took {got} of {len(rnd.responses)} responses")
            await eventually(lambda: dev.tx_core.in_flight == target.leaked_tx,
                             lambda: f"{where}: tx in flight {dev.tx_core.in_flight}, "
                                     f"expected {target.leaked_tx}")
        handed = target.frames[before_frames:]
        drops = collections.Counter(dev.drops) - before
        assert handed == rnd.frames, (
            f"{where} ({rnd.kind}): handed up {len(handed)} frames, expected {len(rnd.frames)}")
        assert drops == rnd.drops, f"{where} ({rnd.kind}): drops {dict(drops)}, expected " \
                                   f"{dict(rnd.drops)}"
        counts["frames"] += len(handed)
        counts["dropped"] += sum(drops.values())
        if not rnd.broken:
            tx = collections.Counter(dev.counters) - tx_before
            assert tx["tx_bad_responses"] == answers.bad, (where, dict(tx), answers.bad)
            assert tx["tx_errors"] == answers.errors, (where, dict(tx), answers.errors)
        else:
            counts["broken"] += 1
            assert eth0.state == "connected", f"{where}: eth0 went {eth0.state}"
            await back.reconnect()
            await target.connect()
        if rounds % 100 == 0:
            check_invariants(hv)
    await traffic.settle()
    elapsed = time.monotonic() - started
    await back.detach()
    check_invariants(hv)
    print(f"netfront fuzz: {rounds} rounds, {counts['responses']} hostile responses, "
          f"{counts['frames']} frames handed up, {counts['dropped']} dropped, {counts['broken']} "
          f"rings given up, {elapsed:.1f}s; kinds: {dict(sorted(kinds.items()))}")
    print(f"netfront fuzz: eth0<->b {traffic.frames()} frames, none lost")
    assert counts["responses"] >= RESPONSES
    assert victim.evtchn.stats["handler_error"] == 0
    crashes = [r for r in caplog.records if r.exc_info or "task failed" in r.getMessage()
               or "handler for port" in r.getMessage()]
    assert not crashes, [r.getMessage() for r in crashes[:5]]
