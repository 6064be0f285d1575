"""netback's pure cores (xenlab.drivers.netback.tx, .rx): every malformed tx
request kind gets netback's documented outcome (error response, or the vif
disabled), every consumed slot exactly one response; guest receive;
anti-spoofing; rate limiting."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlab.drivers.netback.antispoof import AntiSpoof
from xenlab.drivers.netback.ratelimit import CreditScheduler, Rate
from xenlab.xen import abi
from xenlab.testing import ManualClock
from xenlab.xen.netif import ExtraInfo, RxResponse, TxRequest, TxResponse

from vif_pair import eth_frame, make_vif

MORE = abi.NETTXF_more_data


def put_raw(vif, slots) -> int:
    """Write raw tx slots as a (possibly hostile) frontend would; push them."""
    ring = vif.front_tx_ring
    start = ring.req_prod_pvt
    for slot in slots:
        ring.put_request(slot.pack())
    ring.push_requests()
    return start


def answers(vif) -> list[TxResponse]:
    ring = vif.front_tx_ring
    return [TxResponse.unpack(ring.get_response()) for _ in range(ring.unconsumed_responses())]


def grefs(vif, n: int) -> list[int]:
    return [b.gref for b in vif.front_tx.buffers[:n]]


def frame_slots(vif, sizes: list[int], first_id: int = 0, offset: int = 0) -> list[TxRequest]:
    """A frame laid over sizes (each slot's own bytes), as netif.h lays it out."""
    refs = grefs(vif, len(sizes))
    total = sum(sizes)
    out = []
    for i, size in enumerate(sizes):
        flags = MORE if i < len(sizes) - 1 else 0
        out.append(TxRequest(refs[i], offset if i == 0 else 0, flags, first_id + i,
                             total if i == 0 else size))
    return out


# -- good frames --------------------------------------------------------------------
def test_a_frame_from_netfront_arrives_byte_identical(vif):
    frames = [eth_frame(60), eth_frame(1514, seed=7)]
    sent = vif.front_tx.send(frames)
    assert sent.sent == frames and sent.notify
    assert vif.run_tx() == frames
    poll = vif.front_tx.poll()
    assert (poll.completed, poll.errors, poll.bad) == (2, 0, 0)
    assert vif.front_tx.in_flight == 0


def test_a_jumbo_frame_spans_three_slots_and_arrives_whole():
    vif = make_vif(mtu=9000)
    frame = eth_frame(9014, seed=3)
    vif.front_tx.send([frame])
    assert vif.front_tx.in_flight == 3
    assert vif.run_tx() == [frame]
    assert vif.front_tx.poll().completed == 3


def test_nineteen_slots_are_accepted(vif):
    # netback counts the slots after the first against XEN_NETBK_LEGACY_SLOTS_MAX.
    start = put_raw(vif, frame_slots(vif, [14] + [1] * 18))
    assert start == 0
    frames = vif.run_tx()
    assert len(frames) == 1 and len(frames[0]) == 32
    assert all(r.status == abi.NETIF_RSP_OKAY for r in answers(vif))


# -- errors: the frame is dropped, the vif lives on ------------------------------------
def test_too_many_slots_is_an_error_response(vif):
    put_raw(vif, frame_slots(vif, [14] + [1] * 19))
    assert vif.run_tx() == []
    rsps = answers(vif)
    assert len(rsps) == 20 and {r.status for r in rsps} == {abi.NETIF_RSP_ERROR}
    assert [r.id for r in rsps] == list(range(20))
    assert vif.drops["too_many_slots"] == 1 and not vif.back_tx.disabled


def test_first_slot_shorter_than_an_ethernet_header_is_an_error(vif):
    put_raw(vif, frame_slots(vif, [13]))
    assert vif.run_tx() == []
    assert [r.status for r in answers(vif)] == [abi.NETIF_RSP_ERROR]
    assert vif.drops["bad_packet_size"] == 1 and not vif.back_tx.disabled


def test_a_fragment_larger_than_the_frame_is_an_error(vif):
    slots = frame_slots(vif, [100, 50])
    slots[0] = TxRequest(slots[0].gref, 0, MORE, 0, 40)     # total 40 < the 50-byte fragment
    put_raw(vif, slots)
    assert vif.run_tx() == []
    assert [r.status for r in answers(vif)] == [abi.NETIF_RSP_ERROR] * 2
    assert vif.drops["frag_size"] == 1 and not vif.back_tx.disabled


def test_a_bad_gref_is_an_error_response(vif):
    put_raw(vif, [TxRequest(9999, 0, 0, 0, 60)])
    assert vif.run_tx() == []
    assert [r.status for r in answers(vif)] == [abi.NETIF_RSP_ERROR]
    assert vif.drops["grant_copy_error"] == 1 and not vif.back_tx.disabled


def test_a_bad_gref_in_a_fragment_fails_only_that_slot(vif):
    slots = frame_slots(vif, [100, 100, 100])
    slots[1] = TxRequest(9999, 0, MORE, 1, 100)
    put_raw(vif, slots)
    assert vif.run_tx() == []
    assert [r.status for r in answers(vif)] == [0, abi.NETIF_RSP_ERROR, 0]
    assert vif.drops["grant_copy_error"] == 1


def test_a_good_frame_after_an_error_still_goes(vif):
    put_raw(vif, frame_slots(vif, [10]) + frame_slots(vif, [60], first_id=1))
    assert len(vif.run_tx()) == 1
    assert [r.status for r in answers(vif)] == [abi.NETIF_RSP_ERROR, abi.NETIF_RSP_OKAY]


# -- fatal: the vif is disabled ------------------------------------------------------------
def fatal(vif) -> str:
    vif.run_tx()
    assert vif.back_tx.disabled
    return vif.back_tx.disabled


def test_req_prod_more_than_a_ring_ahead_is_fatal(vif):
    vif.front_tx_ring.sring.req_prod = abi.NET_TX_RING_SIZE + 1
    assert "impossible number of requests" in fatal(vif)
    assert vif.front_tx_ring.sring.rsp_prod == 0        # nothing consumed, nothing answered


def test_more_than_fatal_skb_slots_is_fatal(vif):
    put_raw(vif, frame_slots(vif, [14] + [1] * (abi.FATAL_SKB_SLOTS_DEFAULT + 1)))
    assert "malicious frontend" in fatal(vif)


def test_up_to_fatal_skb_slots_is_only_an_error(vif):
    put_raw(vif, frame_slots(vif, [14] + [1] * abi.FATAL_SKB_SLOTS_DEFAULT))
    vif.run_tx()
    assert not vif.back_tx.disabled and vif.drops["too_many_slots"] == 1


@pytest.mark.parametrize("where", ["first", "fragment"])
def test_crossing_a_page_boundary_is_fatal(vif, where):
    if where == "first":
        slots = [TxRequest(grefs(vif, 1)[0], 4000, 0, 0, 200)]
    else:
        slots = frame_slots(vif, [100, 200])
        slots[1] = TxRequest(slots[1].gref, 3990, 0, 1, 200)
    put_raw(vif, slots)
    assert "cross page boundary" in fatal(vif)


def test_a_frame_running_past_the_produced_requests_is_fatal(vif):
    put_raw(vif, frame_slots(vif, [100, 100])[:1])     # more_data, and nothing after it
    assert "more slots than the frontend produced" in fatal(vif)


def test_a_tx_id_out_of_range_is_fatal(vif):
    put_raw(vif, [TxRequest(grefs(vif, 1)[0], 0, 0, abi.NET_TX_RING_SIZE, 60)])
    assert "out of range" in fatal(vif)


def test_a_duplicate_tx_id_in_flight_is_fatal(vif):
    put_raw(vif, frame_slots(vif, [60]) + frame_slots(vif, [60]))    # both id 0
    assert "already in flight" in fatal(vif)


@pytest.mark.parametrize("extra, message", [
    (ExtraInfo(0, 0), "invalid extra type"),
    (ExtraInfo(abi.XEN_NETIF_EXTRA_TYPE_MAX, 0), "invalid extra type"),
    (ExtraInfo(abi.XEN_NETIF_EXTRA_TYPE_GSO, 0, bytes([0, 0, 1])), "GSO size must not be zero"),
    (ExtraInfo(abi.XEN_NETIF_EXTRA_TYPE_GSO, 0, bytes([0x40, 0x05, 9])), "bad GSO type"),
])
def test_bad_extra_info_is_fatal(vif, extra, message):
    first = TxRequest(grefs(vif, 1)[0], 0, abi.NETTXF_extra_info, 0, 60)
    put_raw(vif, [first, extra])
    assert message in fatal(vif)


def test_missing_extra_info_is_fatal(vif):
    put_raw(vif, [TxRequest(grefs(vif, 1)[0], 0, abi.NETTXF_extra_info, 0, 60)])
    assert "missing extra info" in fatal(vif)


def test_fatal_answers_the_slots_it_consumed_and_stops(vif):
    put_raw(vif, frame_slots(vif, [60]) + [TxRequest(grefs(vif, 2)[1], 4000, 0, 1, 200)]
            + frame_slots(vif, [60], first_id=2))
    frames = vif.run_tx()
    assert len(frames) == 1                     # the good frame before the bad one went
    assert [r.status for r in answers(vif)] == [abi.NETIF_RSP_OKAY, abi.NETIF_RSP_ERROR]
    assert vif.back_tx.build().frames == []      # disabled: the third frame is never read


def test_multicast_control_requests_are_answered_without_a_frame(vif):
    first = TxRequest(grefs(vif, 1)[0], 0, abi.NETTXF_extra_info, 0, 0)
    put_raw(vif, [first, ExtraInfo(abi.XEN_NETIF_EXTRA_TYPE_MCAST_ADD, 0, bytes(6))])
    assert vif.run_tx() == []
    assert [r.status for r in answers(vif)] == [abi.NETIF_RSP_OKAY, abi.NETIF_RSP_NULL]


def test_a_valid_gso_frame_goes_through(vif):
    frame = eth_frame(200)
    vif.front_tx.buffers[0].page[:200] = frame
    first = TxRequest(grefs(vif, 1)[0], 0, abi.NETTXF_extra_info, 0, 200)
    gso = ExtraInfo(abi.XEN_NETIF_EXTRA_TYPE_GSO, 0, bytes([0x40, 0x05, 1]))
    put_raw(vif, [first, gso])
    assert vif.run_tx() == [frame]
    assert [r.status for r in answers(vif)] == [abi.NETIF_RSP_OKAY, abi.NETIF_RSP_NULL]


# -- whatever the frontend writes ----------------------------------------------------------
tx_slots = st.one_of(
    st.builds(TxRequest, gref=st.integers(0, 600), offset=st.integers(0, 0xFFFF),
              flags=st.integers(0, 0xF), id=st.integers(0, 300), size=st.integers(0, 0xFFFF)),
    st.builds(TxRequest, gref=st.integers(8, 263), offset=st.integers(0, 4096),
              flags=st.sampled_from([0, MORE]), id=st.integers(0, 255),
              size=st.integers(0, 5000)),
    st.builds(ExtraInfo, type=st.integers(0, 7), flags=st.integers(0, 1),
              data=st.binary(max_size=6)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(tx_slots, min_size=1, max_size=120))
def test_any_request_sequence_is_answered_slot_for_slot(slots):
    vif = make_vif()
    put_raw(vif, slots)
    vif.run_tx()
    ring = vif.back_tx.ring
    assert ring.rsp_prod_pvt == ring.req_cons          # every consumed slot answered once
    assert ring.sring.rsp_prod == ring.rsp_prod_pvt    # and pushed
    if not vif.back_tx.disabled:
        assert ring.req_cons == len(slots)             # and all of them consumed


def _tx_outcome(slots, mapped_refs):
    """What netback makes of raw tx slots: the responses, the frames out,
    whether the vif was disabled; the frontend's pages in ``mapped_refs``
    mapped (persistent grants), the rest copied."""
    vif = make_vif()
    vif.back_tx.direct = {ref: memoryview(page).toreadonly()
                          for ref, (page, ro) in vif.grants.pages.items() if ro and ref in mapped_refs}
    for i, buf in enumerate(vif.front_tx.buffers):
        buf.page[:64] = bytes((i + k) & 0xFF for k in range(64))
    put_raw(vif, slots)
    frames = vif.run_tx()
    return [(r.id, r.status) for r in answers(vif)], frames, vif.back_tx.disabled is not None


# Mostly one-slot frames, with sizes and offsets around the limits
# netback checks, among anything else a frontend may write.
simple_or_any_tx = st.lists(st.one_of(
    st.builds(TxRequest, gref=st.integers(8, 263), offset=st.integers(0, 100) | st.integers(4000, 4100),
              flags=st.just(0), id=st.integers(0, 257), size=st.integers(0, 100)),
    tx_slots), min_size=1, max_size=120)
tx_pages = range(8, 8 + abi.NET_TX_RING_SIZE)       # make_vif grants the tx pages first


@settings(max_examples=300, deadline=None)
@given(simple_or_any_tx, st.just(set(tx_pages)) | st.sets(st.sampled_from(tx_pages)))
def test_mapped_pages_change_nothing_netback_answers_or_sends(slots, mapped_refs):
    """The run of one-slot frames read from mapped pages (NetbackTx's
    direct run) is a shortcut, not a second set of rules: whatever the
    frontend writes, the same responses, frames and verdict as copying."""
    assert _tx_outcome(slots, mapped_refs) == _tx_outcome(slots, set())


# -- guest receive --------------------------------------------------------------------------
def test_frames_for_the_guest_arrive_byte_identical():
    vif = make_vif(mtu=9000)
    assert vif.front_rx.refill()
    frames = [eth_frame(60), eth_frame(1514, seed=1), eth_frame(9014, seed=2)]
    vif.run_rx(frames)
    got = vif.front_rx.poll()
    assert got.frames == frames and not got.drops
    assert vif.front_rx.posted == abi.NET_RX_RING_SIZE    # every page posted again


def test_frames_wait_for_rx_requests_then_drop_past_the_bound():
    vif = make_vif()
    frames = [eth_frame(60, seed=i) for i in range(600)]
    vif.run_rx(frames)                                    # no rx request posted yet
    assert len(vif.back_rx.queue) == 512 and vif.drops["rx_ring_full"] == 88
    vif.front_rx.refill()
    vif.run_rx([])
    assert vif.front_rx.poll().frames == frames[:256]
    vif.run_rx([])
    assert vif.front_rx.poll().frames == frames[256:512]


# -- persistent grants: the frontend's pages mapped ------------------------------------
def mapped(vif, readonly: bool) -> dict[int, memoryview]:
    """Every frontend page of one kind as netback's mapping of it."""
    return {ref: memoryview(page).toreadonly() if ro else memoryview(page)
            for ref, (page, ro) in vif.grants.pages.items() if ro == readonly}


def test_one_slot_frames_are_read_from_a_mapped_page_without_copies():
    vif = make_vif(mtu=9000)
    vif.back_tx.direct = mapped(vif, readonly=True)
    frames = [eth_frame(60), eth_frame(1514, seed=7), eth_frame(9014, seed=3)]
    vif.front_tx.send(frames)
    batch = vif.back_tx.build()
    # the jumbo frame spans three slots: it alone is planned as copies
    assert len(batch.copies) == 3 and vif.back_tx.direct_frames == 2
    result = vif.back_tx.complete(batch, vif.grants.copy(batch.copies, vif.tx_mem))
    assert result.frames == frames
    assert vif.front_tx.poll().completed == 5
    # what was read is netback's own copy: the frontend rewriting its page
    # afterwards changes nothing of the frame netback sent on
    vif.front_tx.send([eth_frame(100, seed=1)])
    batch = vif.back_tx.build()
    gref = next(iter(vif.back_tx.direct))
    for page, _ in vif.grants.pages.values():
        page[:] = b"\xee" * abi.PAGE_SIZE
    assert vif.back_tx.complete(batch, []).frames == [eth_frame(100, seed=1)]
    assert gref in vif.grants.pages


def test_an_unmapped_ref_is_still_copied():
    vif = make_vif()
    vif.back_tx.direct = {}
    vif.front_tx.send([eth_frame(60)])
    batch = vif.back_tx.build()
    assert len(batch.copies) == 1 and vif.back_tx.direct_frames == 0
    assert vif.back_tx.complete(batch, vif.grants.copy(batch.copies, vif.tx_mem)).frames == \
        [eth_frame(60)]


def test_frames_for_the_guest_are_written_into_mapped_pages():
    vif = make_vif(mtu=9000)
    vif.back_rx.direct = mapped(vif, readonly=False)
    assert vif.front_rx.refill()
    frames = [eth_frame(60), eth_frame(1514, seed=1), eth_frame(9014, seed=2)]
    vif.drops.update(vif.back_rx.enqueue(frames))
    batch = vif.back_rx.build()
    assert vif.back_rx.direct_frames == 2
    assert all(c.to_frontend for c in batch.copies) and len(batch.copies) >= 3   # the jumbo's
    result = vif.back_rx.complete(batch, vif.grants.copy(batch.copies, vif.rx_mem))
    assert result.sent == frames
    assert vif.front_rx.poll().frames == frames


def _rx_outcome(sizes, posted, mapped_refs, scratch_pages):
    """What the frontend gets of frames of ``sizes`` with ``posted`` rx
    requests, the pages in ``mapped_refs`` mapped: its responses, in
    order, and the frames it polled."""
    from vif_pair import make_scratch
    vif = make_vif(mtu=9000)
    vif.back_rx.scratch, vif.rx_mem = make_scratch(scratch_pages, first=0x300)
    vif.back_rx.direct = {ref: memoryview(page) for ref, (page, ro) in vif.grants.pages.items()
                          if not ro and ref in mapped_refs}
    ring = vif.front_rx.ring
    from xenlab.xen.netif import RxRequest
    bufs = vif.front_rx.buffers
    for i in range(posted):
        ring.put_request(RxRequest(i, bufs[i].gref).pack())
    ring.push_requests()
    vif.run_rx([eth_frame(n, seed=i) for i, n in enumerate(sizes)])
    got = [RxResponse.unpack(ring.get_response()) for _ in range(ring.unconsumed_responses())]
    data = [bytes(bufs[r.id].page[:r.status]) for r in got if r.status > 0]
    return [(r.id, r.status, r.flags) for r in got], data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(14, 9014), min_size=1, max_size=40), st.integers(0, 64),
       st.sets(st.integers(0, 600)), st.integers(1, 4))
def test_mapped_rx_pages_change_nothing_the_guest_gets(sizes, posted, mapped_refs, scratch_pages):
    """Frames written straight into mapped pages (NetbackRx's direct run)
    take the same requests, in the same order, with the same answers and
    bytes as copied ones, however the mapped pages, the frame sizes, the
    posted requests and a small scratch area (frames left for the next
    batch) fall."""
    assert _rx_outcome(sizes, posted, mapped_refs, scratch_pages) == \
        _rx_outcome(sizes, posted, set(), scratch_pages)


def test_a_frame_too_big_for_the_guest_is_dropped(vif):
    vif.run_rx([eth_frame(abi.XEN_NETIF_MAX_TX_SIZE + 1), b""])
    assert vif.drops["too_big"] == 1 and vif.drops["empty"] == 1


def test_a_bad_rx_gref_is_an_error_response(vif):
    ring = vif.front_rx.ring
    from xenlab.xen.netif import RxRequest
    ring.put_request(RxRequest(7, 9999).pack())
    ring.push_requests()
    vif.run_rx([eth_frame(60)])
    assert vif.drops["grant_copy_error"] == 1
    rsp = RxResponse.unpack(ring.get_response())
    assert (rsp.id, rsp.status) == (7, abi.NETIF_RSP_ERROR)


def test_rx_asks_for_a_kick_when_requests_run_out(vif):
    vif.run_rx([eth_frame(60)])
    sring = vif.back_rx.ring.sring
    assert sring.req_event == sring.req_prod + 1       # xenvif_rx_ring_slots_available


# -- anti-spoofing ------------------------------------------------------------------------------
MAC = bytes.fromhex("00163e000001")
IP = ipaddress.IPv4Address("10.0.0.1")


def ipv4(src: str, proto: int = 17, sport: int = 1000, dport: int = 2000, mac: bytes = MAC) -> bytes:
    header = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, proto, 0, 0]) \
        + ipaddress.IPv4Address(src).packed + bytes(4)
    udp = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(4)
    return b"\xff" * 6 + mac + b"\x08\x00" + header + udp


def arp(spa: str, mac: bytes = MAC) -> bytes:
    body = bytes.fromhex("0001080006040001") + mac + ipaddress.IPv4Address(spa).packed \
        + bytes(6) + bytes(4)
    return b"\xff" * 6 + mac + b"\x08\x06" + body


@pytest.mark.parametrize("frame, verdict", [
    (ipv4("10.0.0.1"), None),
    (ipv4("10.0.0.2"), "spoofed_ip"),
    (ipv4("10.0.0.1", mac=bytes.fromhex("00163e0000ff")), "spoofed_mac"),
    (arp("10.0.0.1"), None),
    (arp("10.0.0.9"), "spoofed_ip"),
    (ipv4("0.0.0.0", sport=68, dport=67), None),       # DHCP discover
    (ipv4("0.0.0.0", sport=68, dport=53), "spoofed_ip"),
    (eth_frame(60, src=MAC, ethertype=0x86DD), None),
    (eth_frame(60, src=bytes(6), ethertype=0x86DD), "spoofed_mac"),
])
def test_antispoof(frame, verdict):
    assert AntiSpoof(MAC, [IP]).check(frame) == verdict


def test_spoofed_frames_are_dropped_and_counted():
    vif = make_vif(antispoof=AntiSpoof(MAC, [IP]))
    good, bad_ip, bad_mac = ipv4("10.0.0.1"), ipv4("10.6.6.6"), eth_frame(60, src=bytes(6))
    vif.front_tx.send([good, bad_ip, bad_mac])
    assert vif.run_tx() == [good]
    assert vif.drops["spoofed_ip"] == 1 and vif.drops["spoofed_mac"] == 1


# -- rate limiting ---------------------------------------------------------------------------------
def test_a_rate_limited_vif_holds_frames_until_the_credit_timer():
    clock = ManualClock(100.0)
    vif = make_vif(limiter=CreditScheduler(Rate(1000, 10_000), clock))
    frames = [eth_frame(800, seed=i) for i in range(3)]
    vif.front_tx.send(frames)
    assert vif.run_tx() == frames[:1]                  # 1000 bytes of credit: one frame
    batch = vif.back_tx.build()
    assert batch.frames == [] and batch.wait_until == pytest.approx(100.01)
    vif.back_tx.complete(batch, [])
    assert not vif.back_tx.more_to_do()                # waiting for the timer
    clock.now = batch.wait_until
    vif.back_tx.replenish()
    assert vif.run_tx() == frames[1:2]
    clock.now += 0.01
    vif.back_tx.replenish()
    assert vif.run_tx() == frames[2:]
    assert vif.front_tx.poll().completed == 3


def test_the_posted_rx_buffers_are_known_before_any_frame_takes_them():
    """What netback maps at connect (persistent grants): every rx request's
    grant ref, read without consuming the request."""
    vif = make_vif(mtu=9000)
    assert vif.back_rx.posted_grefs() == []
    assert vif.front_rx.refill()
    posted = vif.back_rx.posted_grefs()
    assert sorted(posted) == sorted(buf.gref for buf in vif.front_rx.buffers)
    assert vif.back_rx.ring.unconsumed_requests() == len(posted)
    vif.drops.update(vif.back_rx.enqueue([eth_frame(60)]))
    vif.back_rx.build()                                 # takes one request
    assert vif.back_rx.posted_grefs() == posted[1:]
