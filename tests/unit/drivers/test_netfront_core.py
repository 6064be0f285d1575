"""netfront's pure core: transmit accounting and backpressure, and a hostile
backend's rx and tx responses dropped and counted, never raised."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xenlab.drivers.netfront_core import RxPoll
from xenlab.xen import abi
from xenlab.xen.netif import ExtraInfo, RxResponse, TxRequest, TxResponse, make_rx_ring, make_tx_ring
from xenlab.xen.ring import BackRing

from vif_pair import eth_frame, make_vif


# -- transmit -----------------------------------------------------------------------------
def test_frames_outside_the_mtu_are_refused_and_counted(vif):
    out = vif.front_tx.send([eth_frame(1515), b"\0" * 13, eth_frame(1514)])
    assert len(out.sent) == 1
    assert out.drops == {"too_big": 1, "runt": 1}


def test_frames_wait_in_a_bounded_backlog_when_pages_run_out():
    vif = make_vif(nr_tx=4)
    out = vif.front_tx.send([eth_frame(60, seed=i) for i in range(4 + 256 + 3)])
    assert len(out.sent) == 4 and out.drops == {"tx_ring_full": 3}
    assert len(vif.front_tx.backlog) == 256
    assert vif.run_tx()
    poll = vif.front_tx.poll()                    # responses free pages: the backlog moves
    assert poll.completed == 4 and len(poll.sent.sent) == 4
    assert len(vif.front_tx.backlog) == 252


def test_a_jumbo_frame_waits_for_enough_pages():
    vif = make_vif(mtu=9000, nr_tx=4)
    vif.front_tx.send([eth_frame(60), eth_frame(60)])
    out = vif.front_tx.send([eth_frame(9014)])    # needs 3 pages, 2 are free
    assert out.sent == [] and len(vif.front_tx.backlog) == 1


def _tx_outcome(rounds, plain: bool):
    """Each round's frames sent, then netback answering everything: what
    each send and poll returned, and the requests as netback read them.
    ``plain=False``: without send's one-page shortcuts (_put_plain and
    _queue_plain take nothing), the reference they must agree with."""
    vif = make_vif(mtu=9000, nr_tx=6)     # soon out of buffers: frames wait in the backlog
    vif.front_tx.backlog_max = 12         # and past it are dropped as tx_ring_full
    if not plain:
        vif.front_tx._put_plain = vif.front_tx._queue_plain = lambda *args: 0
    seen, outcome = [], []
    back = vif.back_tx.ring
    for sizes in rounds:
        frames = [eth_frame(n, seed=n) if n >= 14 else b"\1" * n for n in sizes]
        out = vif.front_tx.send(frames)
        outcome.append((out.sent, dict(out.drops), out.notify, len(vif.front_tx.backlog)))
        read = [back.get_request() for _ in range(back.unconsumed_requests())]
        seen += read
        for req in read:
            back.put_response(TxResponse(TxRequest.unpack(req).id, 0).pack())
        back.push_responses()
        poll = vif.front_tx.poll()
        outcome.append((poll.completed, poll.sent.sent, len(vif.front_tx.backlog)))
    return outcome, seen


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0, 13, 14, 60, 1514, 4096, 4097, 9014, 9018, 9100])
                         | st.integers(0, 9100), max_size=40), min_size=1, max_size=5))
def test_sending_or_queueing_plain_frames_at_once_changes_nothing(rounds):
    assert _tx_outcome(rounds, plain=True) == _tx_outcome(rounds, plain=False)


def back_tx_ring(vif) -> BackRing:
    return BackRing(make_tx_ring(vif.tx_page))


def test_tx_responses_for_nothing_of_ours_are_counted(vif):
    vif.front_tx.send([eth_frame(60)])
    back = back_tx_ring(vif)
    back.get_request()
    back.put_response(TxResponse(77, 0).pack())   # not the id in flight
    back.push_responses()
    poll = vif.front_tx.poll()
    assert (poll.completed, poll.bad) == (0, 1)
    assert vif.front_tx.in_flight == 1


def test_too_many_tx_responses_mark_the_device_broken(vif):
    vif.tx_page[8:12] = (1000).to_bytes(4, "little")     # rsp_prod far past what was asked
    assert vif.front_tx.poll().completed == 0
    assert vif.front_tx.broken
    assert vif.front_tx.send([eth_frame(60)]).drops == {"broken": 1}


def _answer_all(back: BackRing) -> bool:
    """Answer every tx request OKAY; True: the backend must notify."""
    while back.unconsumed_requests():
        req = back.get_request()
        back.put_response(TxResponse(int.from_bytes(req[8:10], "little"), 0).pack())
    return back.push_responses_and_check_notify()


def test_a_lone_frame_asks_for_no_completion_event_and_the_next_transmit_reaps_it(vif):
    from xenlab.drivers.netfront_core import TX_LAZY_EVENT, more_to_do
    back = back_tx_ring(vif)
    vif.front_tx.send([eth_frame(60)])
    assert not more_to_do(vif.front_tx, vif.front_rx)       # armed: nothing to poll yet
    assert not _answer_all(back)                             # a ping's frame: no kick for it
    assert vif.front_tx.in_flight == 1
    assert vif.front_tx.poll().completed == 1               # reaped when netfront next looks
    # Once TX_LAZY_EVENT completions are outstanding, the backend does kick.
    vif.front_tx.send([eth_frame(60, seed=i) for i in range(TX_LAZY_EVENT)])
    more_to_do(vif.front_tx, vif.front_rx)
    assert _answer_all(back)


def test_with_a_backlog_every_completion_is_asked_for():
    from xenlab.drivers.netfront_core import more_to_do
    vif = make_vif(nr_tx=2)
    back = back_tx_ring(vif)
    vif.front_tx.send([eth_frame(60, seed=i) for i in range(3)])    # one waits for a page
    assert len(vif.front_tx.backlog) == 1
    assert not more_to_do(vif.front_tx, vif.front_rx)
    assert _answer_all(back)


# -- a hostile backend on the rx ring -----------------------------------------------------
def hostile_rx(vif, responses) -> None:
    """Answer the posted rx requests with whatever responses we like."""
    back = BackRing(make_rx_ring(vif.rx_page))
    for rsp in responses:
        back.get_request()
        back.put_response(rsp.pack())
    back.push_responses()


def put_data(vif, bid: int, data: bytes, offset: int = 0) -> None:
    vif.front_rx.buffers[bid].page[offset:offset + len(data)] = data


def test_good_responses_deliver_the_frame(vif):
    vif.front_rx.refill()              # the request at ring slot i posts page i, id i
    frame = eth_frame(100)
    put_data(vif, 0, frame[:60], 10)
    put_data(vif, 1, frame[60:])
    hostile_rx(vif, [RxResponse(0, 10, abi.NETRXF_more_data, 60), RxResponse(1, 0, 0, 40)])
    assert vif.front_rx.poll().frames == [frame]


def test_responses_that_lie_are_dropped_and_counted(vif):
    vif.front_rx.refill()
    hostile_rx(vif, [
        RxResponse(5, 0, 0, 60),                    # id of a page posted elsewhere
        RxResponse(1, 0, 0, abi.PAGE_SIZE + 1),     # more bytes than the page
        RxResponse(2, 4000, 0, 200),                # offset + status past the page
        RxResponse(3, 5000, 0, 0),                  # offset outside the page
        RxResponse(4, 0, 0, abi.NETIF_RSP_ERROR),   # the backend says it failed
        RxResponse(5, 0, 0, 10),                    # shorter than an Ethernet header
    ])
    out = vif.front_rx.poll()
    assert out.frames == []
    assert out.drops == {"rx_bad_id": 1, "rx_bad_response": 3, "rx_error": 1, "rx_runt": 1}
    assert vif.front_rx.posted == abi.NET_RX_RING_SIZE      # every page posted again


def test_a_frame_cut_short_is_dropped(vif):
    vif.front_rx.refill()
    hostile_rx(vif, [RxResponse(0, 0, abi.NETRXF_more_data, 100)])
    assert vif.front_rx.poll().drops == {"rx_bad_response": 1}


def test_too_many_slots_is_dropped(vif):
    vif.front_rx.refill()
    n = abi.XEN_NETIF_NR_SLOTS_MIN + 1
    hostile_rx(vif, [RxResponse(i, 0, abi.NETRXF_more_data if i < n - 1 else 0, 100)
                     for i in range(n)])
    assert vif.front_rx.poll().drops == {"rx_too_many_slots": 1}


def test_extra_info_slots_are_skipped_or_refused(vif):
    vif.front_rx.refill()
    put_data(vif, 0, eth_frame(60))
    hostile_rx(vif, [RxResponse(0, 0, abi.NETRXF_extra_info, 60),
                     ExtraInfo(abi.XEN_NETIF_EXTRA_TYPE_GSO, 0),
                     RxResponse(2, 0, abi.NETRXF_extra_info, 60), ExtraInfo(0, 0)])
    out = vif.front_rx.poll()
    assert out.frames == [eth_frame(60)] and out.drops == {"rx_bad_response": 1}


def test_more_responses_than_requests_marks_rx_broken(vif):
    vif.front_rx.refill()
    vif.rx_page[8:12] = (100_000).to_bytes(4, "little")
    assert vif.front_rx.poll().drops == {"rx_ring_broken": 1}
    assert vif.front_rx.broken and not vif.front_rx.refill()


rx_responses = st.builds(RxResponse, id=st.integers(0, 300), offset=st.integers(0, 0xFFFF),
                         flags=st.integers(0, 0x1F), status=st.integers(-0x8000, 0x7FFF))


@settings(max_examples=200, deadline=None)
@given(st.lists(rx_responses, min_size=1, max_size=256))
def test_any_rx_responses_are_survived(responses):
    vif = make_vif()
    vif.front_rx.refill()
    hostile_rx(vif, responses)
    out = vif.front_rx.poll()
    assert sum(out.drops.values()) + len(out.frames) >= 1
    assert vif.front_rx.posted == abi.NET_RX_RING_SIZE


def _general_poll(rx):
    """poll as _take_frame alone takes responses (every check, slot by slot):
    the reference poll's one-slot shortcut must agree with."""
    out = RxPoll()
    avail = rx.ring.unconsumed_responses()
    rx._first, rx._raws, rx._pos = rx.ring.rsp_cons, rx.ring.get_responses(avail), 0
    while avail:
        avail = rx._take_frame(avail, out)
    rx._raws = []
    out.notify = rx.refill()
    return out


def _rx_outcome(responses, poll):
    vif = make_vif()
    vif.front_rx.refill()
    for bid, buf in enumerate(vif.front_rx.buffers):
        buf.page[:] = bytes([bid & 0xFF]) * abi.PAGE_SIZE
    hostile_rx(vif, responses)
    out = poll(vif.front_rx)
    return out.frames, dict(out.drops), out.notify, sorted(vif.front_rx._posted.values())


# Mostly the common response (one slot, the id posted at its index, no
# flags), with hostile ones among them.
good_or_hostile_rx = st.lists(st.one_of(
    st.tuples(st.just("good"), st.integers(0, 200), st.integers(0, 1600)),
    rx_responses), min_size=1, max_size=200)


@settings(max_examples=200, deadline=None)
@given(good_or_hostile_rx)
def test_polling_the_common_response_at_once_changes_nothing(items):
    responses = []
    for i, item in enumerate(items):
        if isinstance(item, tuple):
            _good, offset, size = item
            responses.append(RxResponse(i, offset, 0, size))    # id i: the page posted at slot i
        else:
            responses.append(item)
    assert _rx_outcome(responses, lambda rx: rx.poll()) == _rx_outcome(responses, _general_poll)


# -- both cores back to back ---------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(14, 9014), min_size=1, max_size=40))
def test_frames_cross_both_rings_byte_identical(sizes):
    vif = make_vif(mtu=9000)
    frames = [eth_frame(n, seed=i) for i, n in enumerate(sizes)]
    vif.front_tx.send(frames)
    through = []
    for _ in range(10):
        through += vif.run_tx()
        vif.front_tx.poll()
        if len(through) == len(frames):
            break
    assert through == frames
    vif.front_rx.refill()
    got = []
    vif.run_rx(through)
    for _ in range(10):
        got += vif.front_rx.poll().frames
        vif.run_rx([])
        if len(got) == len(frames):
            break
    assert got == frames
