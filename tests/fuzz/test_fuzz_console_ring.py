"""A hostile guest on its console ring: xenconsoled's end of
``xencons_interface`` against seeded garbage.

One in-process hypervisor. A hostile domU scribbles on its own console
page, through the hypervisor's view of its frame as its own mapping would:
output of any length produced honestly, producer indexes anywhere (past the
ring, behind the consumer, wrapping past 2**32), its consumer index of the
input ring anywhere, bytes rewritten after they were published, floods of
notifications; Domain-0 types into it meanwhile. A well-behaved domU (the
bystander) writes a line every round.

Shown:
* the bystander's every line reaches its console log, in order, every round;
* the hostile's log only ever grows by bytes it produced while its ring was
  sound, and never by more than it produced;
* Console.Write into the hostile never queues more than the limit;
* no callback dies with an exception, and the hypervisor's invariants hold.

XENLAB_FUZZ_SEED picks the seed; XENLAB_FUZZ_REQUESTS / 50 the rounds.
"""
from __future__ import annotations

import asyncio
import logging
import random

import pytest

from fuzz_helpers import fuzz_budget
from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.xenconsoled import CONSOLE_GFN, INPUT_LIMIT
from xenlab.testing import check_invariants, eventually
from xenlab.xen import console as cons
from xenlab.xen.errors import XenError

ROUNDS = max(200, fuzz_budget() // 50)
DOM0 = Caller(0, True)
U32 = 0xFFFFFFFF

pytestmark = pytest.mark.timeout(600)


class Domain:
    def __init__(self, hv, domid: int):
        self.hv, self.domid = hv, domid
        self.port = int(hv.xenstore.read(DOM0, f"/local/domain/{domid}/console/port"))
        self.frame = hv.memory.frame(domid, CONSOLE_GFN)
        self.page = cons.ConsolePage(self.frame)
        self.log_path = hv.console_log(hv.domains.get(domid))

    def kick(self) -> None:
        self.hv.evtchn.send(self.domid, self.port)

    def log(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def release(self) -> None:
        self.page.release()
        self.frame.release()


async def test_a_hostile_console_ring_costs_no_one_else(hypervisor, seed, caplog):
    rng = random.Random(seed)
    hv = hypervisor.hv
    hostile = Domain(hv, (await hypervisor.create_domain("hostile"))[0])
    bystander = Domain(hv, (await hypervisor.create_domain("bystander"))[0])
    honest = cons.ConsoleRingEnd(bystander.page, backend=False)
    expected = bytearray()
    produced = 0              # bytes the hostile produced while its indexes were sound
    caplog.set_level(logging.WARNING)
    try:
        for n in range(ROUNDS):
            page = hostile.page
            kind = rng.random()
            if kind < 0.5:
                # Honest output, however long, then maybe a rewrite of what was published.
                room = cons.OUT_SIZE - ((page.out_prod - page.out_cons) & U32)
                if 0 <= room <= cons.OUT_SIZE:
                    data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, room)))
                    start = page.out_prod
                    for i, byte in enumerate(data):
                        page.out[(start + i) & (cons.OUT_SIZE - 1)] = byte
                    page.out_prod = start + len(data)
                    produced += len(data)
                    if data and rng.random() < 0.2:
                        page.out[start & (cons.OUT_SIZE - 1)] ^= 0xFF
            elif kind < 0.7:
                page.out_prod = rng.choice([page.out_cons + cons.OUT_SIZE + rng.randint(1, 1 << 20),
                                            page.out_cons - rng.randint(1, 100),
                                            rng.getrandbits(32)])
            elif kind < 0.8:
                page.in_cons = rng.getrandbits(32)
            elif kind < 0.9:
                # Mended: the consumer's view again.
                page.out_prod = page.out_cons
                page.in_cons = page.in_prod
            else:
                page.out_cons = rng.getrandbits(32)      # the backend's index, rewound or not
            for _ in range(rng.choice((1, 1, 2, 10))):
                hostile.kick()
            if rng.random() < 0.3:
                try:
                    hv.consoles.write(hostile.domid, bytes(rng.getrandbits(8)
                                                           for _ in range(rng.randint(1, 3000))))
                except XenError as err:
                    assert err.errno == 11          # EAGAIN: full, never unbounded
                assert len(hv.consoles.get(hostile.domid)._input) <= INPUT_LIMIT
            line = f"bystander round {n}\r\n".encode()
            assert honest.write(line) == len(line)
            expected += line
            bystander.kick()
            await asyncio.sleep(0)
            await eventually(lambda: bystander.log() == bytes(expected),
                             lambda: f"round {n}: the bystander's line in its log")
            # Each pass copies what the hostile produced at most once: its log
            # can only have grown by bytes that were on its ring.
            assert len(hostile.log()) <= produced + cons.OUT_SIZE * (n + 1)
        check_invariants(hv)
    finally:
        hostile.release()
        bystander.release()
    crashed = [r for r in caplog.records if r.exc_info]
    assert not crashed, crashed[0].getMessage()
