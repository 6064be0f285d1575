"""The UDP perf test's core: pacing, the datagram header, and the
receiver's loss, reordering, duplicates and RFC 3550 jitter, on the test's
clock."""
from __future__ import annotations

import pytest

from xenlab.net.perf import (HEADER, MIN_LENGTH, Pacer, PerfReceiver, SenderStats, decode,
                             encode)


def test_header_is_iperf2s_and_round_trips():
    payload = encode(7, 1234.5678905, 100)
    assert len(payload) == 100 and payload[:MIN_LENGTH] == HEADER.pack(7, 1234, 567890)
    seq, sent = decode(payload)
    assert seq == 7 and sent == pytest.approx(1234.56789, abs=1e-6)
    with pytest.raises(ValueError, match="cannot carry"):
        encode(1, 0.0, MIN_LENGTH - 1)


def test_pacer_spreads_datagrams_evenly_over_the_duration():
    pacer = Pacer(rate=1_000_000, length=1250, duration=2.0, start=100.0)   # 100 datagrams/s
    assert pacer.count == 200 and pacer.gap == pytest.approx(0.01)
    assert pacer.due(99.0) == 0
    assert pacer.due(100.0) == 1
    pacer.took(1)
    assert pacer.due(100.5) == 50
    assert pacer.next_at() == pytest.approx(100.01)
    pacer.took(50)
    assert pacer.due(200.0) == 149                      # never past the count
    pacer.took(149)
    assert pacer.next_at() is None
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate"):
            Pacer(bad, 100, 1.0, 0.0)


def feed(receiver, seqs, start=10.0, gap=0.01, transit=0.001, jitter=()):
    for i, seq in enumerate(seqs):
        extra = jitter[i] if i < len(jitter) else 0.0
        sent = start + i * gap
        receiver.receive(encode(seq, sent, 100), sent + transit + extra)


def test_steady_stream_no_loss_no_jitter():
    rx = PerfReceiver(interval=1.0)
    feed(rx, range(384), start=16.0, gap=1 / 128, transit=1 / 1024)   # exact in binary
    closed = rx.reports(16.0 + 3.0 + 1 / 1024)
    assert [(r.start, r.end, r.datagrams, r.lost) for r in closed] == [
        (0.0, 1.0, 128, 0), (1.0, 2.0, 128, 0), (2.0, 3.0, 128, 0)]
    assert closed[0].rate == pytest.approx(128 * 100 * 8)
    assert rx.reports(16.5 + 3.0) == []             # each interval once
    silent = rx.reports(16.0 + 5.0 + 1 / 1024)      # silence is reported as it passes, as iperf
    assert [(r.start, r.datagrams) for r in silent] == [(3.0, 0), (4.0, 0)]
    total = rx.finish()[-1]
    assert (total.total, total.datagrams, total.bytes, total.lost) == (True, 384, 38400, 0)
    assert total.jitter < 1e-6                      # the header's microseconds round 1/128 s


def test_gaps_are_lost_until_the_late_one_comes_out_of_order():
    rx = PerfReceiver()
    feed(rx, [0, 1, 4, 5, 2, 6])
    total = rx.finish()[-1]
    assert (total.datagrams, total.lost, total.out_of_order, total.duplicates) == (6, 1, 1, 0)
    assert total.loss == pytest.approx(1 / 7)


def test_duplicates_are_counted_apart():
    rx = PerfReceiver()
    feed(rx, [0, 1, 1, 2])
    total = rx.finish()[-1]
    assert (total.datagrams, total.lost, total.duplicates) == (4, 0, 1)


def test_end_of_test_counts_the_lost_tail():
    rx = PerfReceiver()
    feed(rx, [0, 1, 2])
    rx.receive(encode(-10, 11.0, 100), 11.0)        # 10 were sent
    assert rx.ended
    total = rx.finish()[-1]
    assert (total.datagrams, total.lost) == (3, 7)


def test_jitter_follows_rfc3550():
    rx = PerfReceiver()
    feed(rx, [0, 1, 2], jitter=[0.0, 0.016, 0.0])
    # D1 = 0.016: J = 0.016/16 = 0.001; D2 = 0.016: J += (0.016 - 0.001)/16
    assert rx.jitter == pytest.approx(0.001 + 0.015 / 16)


def test_a_datagram_too_short_to_be_ours_is_an_error_not_a_crash():
    rx = PerfReceiver()
    rx.receive(b"hi", 1.0)
    feed(rx, [0])
    total = rx.finish()[-1]
    assert (total.errors, total.datagrams) == (1, 1)


def test_a_huge_sequence_jump_does_not_grow_memory():
    rx = PerfReceiver()
    feed(rx, [0, 0x7FFFFFF0, 1])
    total = rx.finish()[-1]
    assert total.lost == 0x7FFFFFF0 - 1 - 1 and total.out_of_order == 1
    assert len(rx._seen) <= 3


def test_sender_intervals_and_total():
    tx = SenderStats(start=0.0, interval=1.0)
    assert tx.sent(0.5, 10, 1000) == []
    closed = tx.sent(1.2, 5, 500, errors=1)
    assert [(r.start, r.end, r.datagrams) for r in closed] == [(0.0, 1.0, 10)]
    last, total = tx.finish(1.5)
    assert (last.start, last.end, last.datagrams, last.errors) == (1.0, 1.5, 5, 1)
    assert (total.datagrams, total.bytes, total.end, total.rate) == (15, 1500, 1.5, 8000.0)


def test_sender_finish_at_an_interval_boundary_adds_no_empty_interval():
    tx = SenderStats(start=0.0, interval=0.5)
    reports = tx.sent(0.1, 1, 100) + tx.sent(0.9, 1, 100) + tx.finish(1.0)
    assert [(r.start, r.end, r.total) for r in reports] == [(0.0, 0.5, False), (0.5, 1.0, False),
                                                            (0.0, 1.0, True)]
