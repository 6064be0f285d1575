"""A hostile guest on its store ring (issue 23): xenstored's end of
``xenstore_domain_interface`` against seeded garbage.

One in-process hypervisor. A hostile domU writes into its own store page,
through its own mapping of its memory as a guest would, and kicks its store
port: well-formed requests cut anywhere, requests of every type with random
payloads, messages torn across kicks, bytes rewritten after they were
published, xenstored's own indexes rewound, floods of notifications; and
now and then something fatal: a producer index past the ring, a consumer
index past what xenstored produced, a header announcing more than 4096
bytes. A well-behaved domU (the bystander) talks xenstore over its own ring
every round, and Domain-0 over the socket.

Shown:
* every round is answered as xenstored's rules say (one reply per request,
  in order, carrying its req_id; an error is a name xs_wire.h lists), or,
  for the fatal ones and only those, the hostile's connection ends with the
  ring's error field saying why (RINGIDX or PROTO); xenstored never hangs;
* the bystander's and Domain-0's xenstore answer every round, and the
  bystander gets every watch event its writes fire;
* the hostile never gets past its quotas, and the hypervisor's invariants
  hold throughout; no task or callback dies with an exception.

XENLAB_FUZZ_SEED picks the seed; XENLAB_FUZZ_REQUESTS the number of
hostile messages (100,000 by default).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
import time

import pytest

import xs_client as xs
from fuzz_helpers import fuzz_budget
from xs_client import HDR, XsClient, ring_client, z
from xenlab.domain.memory import GuestMemory
from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.xenstored_ring import STORE_GFN
from xenlab.proto import common_pb2, memory_pb2
from xenlab.testing import check_invariants, eventually

MESSAGES = fuzz_budget()
DOM0 = Caller(0, True)
U32 = 0xFFFFFFFF

# Types a guest may send, the toolstack's, the reply-only ones, and invalid ones.
TYPES = [xs.READ, xs.WRITE, xs.MKDIR, xs.RM, xs.DIRECTORY, xs.DIRECTORY_PART, xs.GET_PERMS,
         xs.SET_PERMS, xs.WATCH, xs.UNWATCH, xs.TRANSACTION_START, xs.TRANSACTION_END,
         xs.GET_DOMAIN_PATH, xs.RESET_WATCHES, xs.INTRODUCE, xs.RELEASE, xs.RESUME,
         xs.SET_TARGET, xs.IS_DOMAIN_INTRODUCED, xs.CONTROL, xs.WATCH_EVENT, xs.ERROR, 20, 23,
         26, 27, 999, xs.INVALID]
WORDS = [b"data", b"data/a", b"data/a/b", b"name", b"/local/domain/0", b"/local/domain",
         b"@releaseDomain", b"@introduceDomain", b"control/shutdown", b"/", b"", b"T", b"F",
         b"0", b"1", b"4096", b"b0", b"r1", b"n7", b"print", b"x" * 40, b"//", b"data/", b"\xff"]


def payload(rng: random.Random) -> bytes:
    """Strings from the vocabulary or random bytes, joined by NULs or not."""
    kind = rng.random()
    if kind < 0.6:
        parts = [rng.choice(WORDS) for _ in range(rng.randint(0, 4))]
        body = b"\0".join(parts)
        return body + b"\0" if rng.random() < 0.8 else body
    if kind < 0.95:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
    return bytes(rng.getrandbits(8) for _ in range(rng.choice((1000, 4095, 4096))))


class Round:
    def __init__(self, kind: str):
        self.kind = kind
        self.messages: list[tuple[int, bytes]] = []   # (req_id, encoded)
        self.fatal: int | None = None                 # the ring error it must end with
        self.pieces = 1                               # kicks the bytes are spread over
        self.rewind = False
        self.rewrite = False        # payload bytes changed after they were published
        self.kicks = 1


class StoreRingFuzzer:
    """Seeded rounds of hostile ring traffic, with what xenstored must do."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.req = 0

    def message(self, type_=None, data=None, length=None, tx=None) -> tuple[int, bytes]:
        rng = self.rng
        self.req = (self.req + 1) & U32
        type_ = rng.choice(TYPES) if type_ is None else type_
        data = payload(rng) if data is None else data
        tx = rng.choice((0, 0, 0, 1, 7, U32)) if tx is None else tx
        n = len(data) if length is None else length
        return self.req, HDR.pack(type_, self.req, tx, n) + data

    def valid(self) -> tuple[int, bytes]:
        """A request a guest may well make, on its own nodes."""
        rng = self.rng
        key = f"data/k{rng.randint(0, 20)}".encode()
        type_, data = rng.choice([
            (xs.READ, z(b"name")), (xs.READ, z(key)), (xs.WRITE, z(key) + rng.randbytes(rng.randint(0, 64))),
            (xs.MKDIR, z(key)), (xs.RM, z(key)), (xs.DIRECTORY, z(b"data")),
            (xs.DIRECTORY_PART, z(b"data", b"0")), (xs.GET_PERMS, z(b"data")),
            (xs.WATCH, z(key, b"t%d" % rng.randint(0, 3))), (xs.UNWATCH, z(key, b"t0")),
            (xs.GET_DOMAIN_PATH, z(b"0")), (xs.TRANSACTION_START, z(b""))])
        return self.message(type_, data, tx=0)

    def round(self) -> Round:
        rng = self.rng
        roll = rng.random()
        if roll < 0.03:
            rnd = Round("req_prod_past_the_ring")
            rnd.fatal = 2
        elif roll < 0.06:
            rnd = Round("rsp_cons_past_rsp_prod")
            rnd.messages.append(self.message(xs.READ, b"name\0"))
            rnd.fatal = 2
        elif roll < 0.09:
            rnd = Round("length_over_4096")
            rnd.messages.append(self.message(length=rng.choice((4097, 65536, U32))))
            rnd.fatal = 3
        elif roll < 0.14:
            rnd = Round("kicks_only")
            rnd.kicks = rng.randint(2, 30)
        else:
            rnd = Round(rng.choice(("garbage", "garbage", "valid", "torn", "rewound",
                                    "rewritten")))
            for _ in range(rng.randint(1, 12)):
                if rnd.kind == "valid" or rng.random() < 0.3:
                    rnd.messages.append(self.valid())
                else:
                    rnd.messages.append(self.message())
            rnd.pieces = rng.randint(2, 8) if rnd.kind == "torn" else 1
            rnd.rewind = rnd.kind == "rewound"
            rnd.rewrite = rnd.kind == "rewritten"
        return rnd


class HostileGuest:
    """A domain writing its own store ring by hand, through its own mapping."""

    def __init__(self, lab, domid: int, client):
        self.lab, self.hv, self.domid, self.client = lab, lab.hv, domid, client
        self.memory = self.page = None
        self.port = 0
        self.buf = b""
        self.replies: list[tuple[int, int, int, bytes]] = []
        self.events = 0

    async def map(self) -> None:
        mm = await self.client.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(
            domain=common_pb2.DomainRef(domid=self.domid)))
        self.memory = GuestMemory(mm.shm_path, mm.segment_pages, mm.first_frame_offset)
        self.page = self.memory.frame(STORE_GFN)
        self.port = int(self.hv.xenstore.read(DOM0, f"/local/domain/{self.domid}/store/port"))
        self.buf = b""

    def close(self) -> None:
        self.page.release()
        self.memory.close()

    def kick(self) -> None:
        # EVTCHNOP_send on the store port, as the doorbell delivers it
        self.hv.evtchn.send(self.domid, self.port)

    def error(self) -> int:
        return xs.idx(self.page, xs.RING_ERROR)

    def put(self, data: bytes) -> int:
        """As much of data as the request ring has room for."""
        cons, prod = xs.idx(self.page, xs.REQ_CONS), xs.idx(self.page, xs.REQ_PROD)
        room = max(0, xs.RING_SIZE - ((prod - cons) & U32))
        chunk = data[:room]
        for i, byte in enumerate(chunk):
            self.page[xs.REQ + ((prod + i) & (xs.RING_SIZE - 1))] = byte
        xs.set_idx(self.page, xs.REQ_PROD, prod + len(chunk))
        return len(chunk)

    def take(self) -> None:
        """Whatever replies and events wait on the response ring."""
        cons, prod = xs.idx(self.page, xs.RSP_CONS), xs.idx(self.page, xs.RSP_PROD)
        avail = (prod - cons) & U32
        assert avail <= xs.RING_SIZE, f"xenstored's rsp_prod {prod} is past the ring ({cons})"
        self.buf += bytes(self.page[xs.RSP + ((cons + i) & (xs.RING_SIZE - 1))]
                          for i in range(avail))
        xs.set_idx(self.page, xs.RSP_CONS, prod)
        while len(self.buf) >= HDR.size:
            type_, req_id, tx, n = HDR.unpack_from(self.buf)
            assert n <= xs.PAYLOAD_MAX, f"xenstored sent a {n}-byte payload"
            if len(self.buf) < HDR.size + n:
                break
            body = self.buf[HDR.size:HDR.size + n]
            self.buf = self.buf[HDR.size + n:]
            if type_ == xs.WATCH_EVENT:
                assert req_id == 0 and tx == 0 and body.count(b"\0") == 2 and body.endswith(b"\0")
                self.events += 1
            else:
                self.replies.append((type_, req_id, tx, body))


async def play(guest: HostileGuest, rnd: Round, rng: random.Random) -> str:
    """Put the round on the ring; "answered" or "fatal"."""
    page = guest.page
    guest.replies.clear()
    if rnd.kind == "req_prod_past_the_ring":
        cons = xs.idx(page, xs.REQ_CONS)
        xs.set_idx(page, xs.REQ_PROD, cons + rng.choice((xs.RING_SIZE + 1, 5000, 0x80000000, U32)))
    if rnd.kind == "rsp_cons_past_rsp_prod":
        prod = xs.idx(page, xs.RSP_PROD)
        xs.set_idx(page, xs.RSP_CONS, prod + rng.choice((1, 100, 0x7FFFFFFF)))
    if rnd.rewind:
        # xenstored's own indexes rewritten under it while it runs; it must
        # neither read a request twice nor write a reply where it said it
        # had not. The guest puts them back to go on using the ring itself.
        # (Unless xenstored wrote them meanwhile: then they are its own again.)
        for offset in (xs.REQ_CONS, xs.RSP_PROD):
            saved, junk = xs.idx(page, offset), rng.getrandbits(32)
            xs.set_idx(page, offset, junk)
            for _ in range(3):
                guest.kick()
                await asyncio.sleep(0)
            assert not guest.error(), "xenstored took its own index back from the page"
            if xs.idx(page, offset) == junk:
                xs.set_idx(page, offset, saved)
    data = b"".join(m for _, m in rnd.messages)
    headers, at = set(), 0
    for _, m in rnd.messages:
        headers.update(range(at, at + HDR.size))
        at += len(m)
    cuts = sorted(rng.sample(range(1, len(data)), min(rnd.pieces - 1, len(data) - 1))) if data else []
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        piece, pos = data[start:end], start
        while piece:
            prod = xs.idx(page, xs.REQ_PROD)
            n = guest.put(piece)
            if n and rnd.rewrite:
                # change published payload bytes before xenstored reads them
                # (it reads only once kicked); the headers stay, so the
                # stream stays in step and every request is still answered
                for k in rng.sample(range(pos, pos + n), min(n, 3)):
                    if k not in headers:
                        page[xs.REQ + ((prod + k - pos) & (xs.RING_SIZE - 1))] = rng.getrandbits(8)
            piece, pos = piece[n:], pos + n
            guest.kick()
            await asyncio.sleep(0)
            if guest.error():
                break
            if rnd.kind != "rsp_cons_past_rsp_prod":
                guest.take()
            if n == 0:
                await asyncio.sleep(0.001)
        if guest.error():
            break
    for _ in range(rnd.kicks):
        guest.kick()
    if rnd.fatal is not None:
        await eventually(guest.error, f"{rnd.kind}: a ring error", every=0.001)
        return "fatal"
    expected = len(rnd.messages)

    def answered() -> bool:
        if guest.error():
            return True
        guest.take()
        if len(guest.replies) < expected:
            guest.kick()            # the replies may be waiting for room
        return len(guest.replies) >= expected
    await eventually(answered, lambda: f"{rnd.kind}: {expected} answers (got {len(guest.replies)})",
                     every=0.001)
    return "fatal" if guest.error() else "answered"


def check_answers(rnd: Round, guest: HostileGuest, where: str) -> collections.Counter:
    """One reply per request, in order, carrying its req_id and tx_id; an
    error is a name xs_wire.h lists."""
    names = collections.Counter()
    assert len(guest.replies) == len(rnd.messages), f"{where}: {len(guest.replies)} replies"
    for (req_id, data), (type_, rid, tx, body) in zip(rnd.messages, guest.replies):
        sent_type, _, sent_tx, _ = HDR.unpack_from(data)
        assert rid == req_id, f"{where}: reply to {rid} where {req_id} was due"
        assert tx == sent_tx, f"{where}: reply tx_id {tx}, request's {sent_tx}"
        if type_ == xs.ERROR:
            assert body.endswith(b"\0") and body[:-1].decode() in xs.ERROR_NAMES, body
            names[body[:-1].decode()] += 1
        else:
            assert type_ == sent_type, f"{where}: a type {sent_type} request answered as {type_}"
            names["ok"] += 1
    return names


@pytest.mark.timeout(900)
async def test_a_hostile_store_ring_costs_only_its_own_connection(hypervisor, seed, caplog):
    caplog.set_level(logging.WARNING)
    print(f"store ring fuzz: {MESSAGES} hostile messages")
    rng = random.Random(seed)
    hv = hypervisor.hv
    sock = await XsClient.connect(hv.rundir.xenstored_socket)
    by_id, by_client = await hypervisor.create_domain("bystander")
    bystander = ring_client(hv.memory.frame(by_id, STORE_GFN), lambda: hv.evtchn.send(
        by_id, int(hv.xenstore.read(DOM0, f"/local/domain/{by_id}/store/port"))))
    await bystander.watch("data", "mine")
    assert await bystander.next_event() == ("data", "mine")

    async def new_hostile() -> HostileGuest:
        domid, client = await hypervisor.create_domain("hostile")
        guest = HostileGuest(hypervisor, domid, client)
        await guest.map()
        return guest

    async def reconnect(guest: HostileGuest, rounds: int) -> HostileGuest:
        """The toolstack gives the hostile xenstore back: alternately
        RELEASE and INTRODUCE it again on a clear ring (its nodes given back
        to it), or destroy it and create a new one."""
        if rounds % 2:
            await sock.release(guest.domid)
            guest.page[:2080] = bytes(2080)
            await sock.introduce(guest.domid, STORE_GFN, guest.port)
            home = f"/local/domain/{guest.domid}"
            await sock.set_perms(home, "n0", f"r{guest.domid}")
            await sock.mkdir(f"{home}/data")        # the hostile may have removed it
            await sock.set_perms(f"{home}/data", f"n{guest.domid}")
            await sock.set_perms(f"{home}/name", "n0", f"r{guest.domid}")
            guest.buf = b""
            return guest
        guest.close()
        await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=guest.domid))
        return await new_hostile()

    hostile = await new_hostile()
    fuzzer = StoreRingFuzzer(rng)
    counts, kinds, answers = collections.Counter(), collections.Counter(), collections.Counter()
    started = time.monotonic()
    rounds = 0
    try:
        while counts["messages"] < MESSAGES:
            rounds += 1
            rnd = fuzzer.round()
            kinds[rnd.kind] += 1
            where = f"round {rounds} ({rnd.kind}, seed {seed}, d{hostile.domid})"
            outcome = await play(hostile, rnd, rng)
            counts["messages"] += len(rnd.messages)
            counts["kicks"] += rnd.kicks
            if rnd.fatal is not None:
                assert outcome == "fatal" and hostile.error() == rnd.fatal, \
                    f"{where}: ring error {hostile.error()}, expected {rnd.fatal}"
            else:
                assert outcome == "answered", f"{where}: a round with nothing fatal broke the ring"
                answers.update(check_answers(rnd, hostile, where))
            if outcome == "fatal":
                counts["fatal"] += 1
                assert hv.xenstore.watch_count(hostile.domid) == 0, f"{where}: watches outlived it"
                hostile = await reconnect(hostile, counts["fatal"])
            # every other domain's xenstore keeps answering
            await bystander.write("data/seq", str(rounds))
            assert await bystander.read("data/seq") == str(rounds).encode(), where
            if rounds % 10 == 0:
                assert await sock.read(f"/local/domain/{by_id}/data/seq") == str(rounds).encode()
                reply = await by_client.xenstore.Read(__import__(
                    "xenlab.proto.xenstore_pb2", fromlist=["PathRequest"]).PathRequest(path="name"))
                assert reply.value == b"bystander"
            quotas = hv.xenstore.quotas
            assert hv.xenstore.watch_count(hostile.domid) <= quotas.watches
            assert hv.xenstore.open_transactions(hostile.domid) <= quotas.transactions
            assert hv.xenstore.node_count(hostile.domid) <= quotas.nodes
            if rounds % 100 == 0:
                check_invariants(hv)
    finally:
        hostile.close()
        await sock.close()
    elapsed = time.monotonic() - started
    while bystander.events and bystander.events[-1] != ("data/seq", "mine"):
        bystander.events.pop()
    check_invariants(hv)
    print(f"store ring fuzz: {rounds} rounds, {counts['messages']} hostile messages, "
          f"{counts['fatal']} fatal, {counts['kicks']} kicks, {elapsed:.1f}s; "
          f"round kinds {dict(sorted(kinds.items()))}; answers {dict(sorted(answers.items()))}")
    assert counts["fatal"] > 0 and answers["ok"] > 0 and len(answers) > 4
    # the bystander got an event for every one of its writes
    assert bystander.events.count(("data/seq", "mine")) == rounds
    crashes = [r for r in caplog.records if r.exc_info or "Exception in callback" in r.getMessage()
               or "Task exception" in r.getMessage()]
    assert not crashes, [r.getMessage() for r in crashes[:5]]
