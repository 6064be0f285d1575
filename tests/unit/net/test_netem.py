"""netem's queue (net/netem.py) on a clock the test moves, with seeded
randomness: delays, loss, duplication, corruption, reordering, rate and
limit, and the books (in + duplicated = out + loss + limit + backlog)."""
from __future__ import annotations


import pytest

from xenlab.net.netem import (NetemConfig, NetemError, Netem, format_rate, parse_netem,
                              parse_percent, parse_rate, parse_time)
from xenlab.testing import ManualClock


def frames(n: int, size: int = 100) -> list[bytes]:
    return [i.to_bytes(4, "big") + bytes(size - 4) for i in range(n)]


def number(frame: bytes) -> int:
    return int.from_bytes(frame[:4], "big")


def drain(q: Netem, clock: ManualClock, step: float = 0.0005, until: float = 60.0) -> list[tuple[float, bytes]]:
    """(time it left, frame) for everything queued, stepping the clock."""
    out = []
    while q.backlog and clock.now < until:
        due = q.next_due()
        if due is not None and due > clock.now:
            clock.advance(min(step, due - clock.now) if step else due - clock.now)
        out += [(clock.now, f) for f in q.dequeue(clock.now)]
    return out


def books_balance(q: Netem, handed: int) -> bool:
    c = q.counters
    return handed + c["duplicated"] == c["sent"] + c["loss"] + c["limit"] + q.backlog


def test_delay_holds_each_frame_exactly_the_delay():
    clock = ManualClock(100.0)
    q = Netem(parse_netem("delay 20ms".split()))
    q.enqueue(frames(3), clock.now)
    clock.advance(0.010)
    q.enqueue(frames(1), clock.now)
    assert q.dequeue(clock.now) == []
    assert q.next_due() == pytest.approx(100.020)
    clock.advance(0.010 - 1e-9)
    assert q.dequeue(clock.now) == []
    clock.advance(1e-9)
    assert len(q.dequeue(clock.now)) == 3
    assert q.next_due() == pytest.approx(100.030)
    clock.advance(0.010)
    assert len(q.dequeue(clock.now)) == 1
    assert q.next_due() is None and q.backlog == 0


def test_uniform_jitter_stays_within_delay_plus_minus_jitter():
    clock = ManualClock()
    q = Netem(parse_netem("delay 20ms 5ms seed 7 limit 10000".split()))
    q.enqueue(frames(2000), 0.0)
    out = drain(q, clock, step=0)
    delays = [t for t, _ in out]
    assert len(delays) == 2000
    assert min(delays) >= 0.015 and max(delays) <= 0.025
    assert min(delays) < 0.0155 and max(delays) > 0.0245       # it does spread
    # Jitter without rate reorders, as netem's tfifo does.
    assert [number(f) for _, f in out] != list(range(2000))


def test_normal_jitter_has_the_deviation_asked_for():
    clock = ManualClock()
    q = Netem(parse_netem("delay 20ms 5ms distribution normal seed 3 limit 10000".split()))
    q.enqueue(frames(5000), 0.0)
    delays = [t for t, _ in drain(q, clock, step=0)]
    mean = sum(delays) / len(delays)
    sd = (sum((d - mean) ** 2 for d in delays) / len(delays)) ** 0.5
    assert mean == pytest.approx(0.020, abs=0.0005)
    assert sd == pytest.approx(0.005, rel=0.05)
    assert min(delays) >= 0.0 and max(delays) <= 0.020 + 4 * 0.005


def test_loss_drops_the_configured_share_with_a_seeded_rng():
    q = Netem(parse_netem("loss 10% seed 1 limit 10000".split()))
    q.enqueue(frames(10000), 0.0)
    out = q.dequeue(0.0)
    assert q.counters["loss"] == 10000 - len(out)
    assert 900 <= q.counters["loss"] <= 1100
    assert books_balance(q, 10000)
    # The same seed, the same frames lost.
    again = Netem(parse_netem("loss 10% seed 1 limit 10000".split()))
    again.enqueue(frames(10000), 0.0)
    assert [number(f) for f in again.dequeue(0.0)] == [number(f) for f in out]


def test_duplicate_sends_copies_and_counts_them():
    q = Netem(parse_netem("duplicate 30% seed 5 limit 2000".split()))
    q.enqueue(frames(1000), 0.0)
    out = q.dequeue(0.0)
    assert len(out) == 1000 + q.counters["duplicated"]
    assert 250 <= q.counters["duplicated"] <= 350
    seen = [number(f) for f in out]
    assert sorted(set(seen)) == list(range(1000))
    assert sum(seen.count(n) == 2 for n in set(seen)) == q.counters["duplicated"]
    assert books_balance(q, 1000)


def test_duplicated_and_lost_goes_out_once_counted_under_neither():
    q = Netem(NetemConfig(duplicate=1.0, loss=1.0))
    q.enqueue(frames(10), 0.0)
    # netem_enqueue: two copies, less the lost one: one, and no clone.
    assert [number(f) for f in q.dequeue(0.0)] == list(range(10))
    assert q.counters["loss"] == 0 and q.counters["duplicated"] == 0
    assert books_balance(q, 10)


def test_corrupt_flips_exactly_one_bit(pair):
    a, b, _ = pair
    q = Netem(parse_netem("corrupt 100% seed 11".split()))
    originals = frames(200, 64)
    q.enqueue(originals, 0.0)
    out = q.dequeue(0.0)
    assert q.counters["corrupted"] == 200
    for before, after in zip(originals, out):
        diff = [x ^ y for x, y in zip(before, after)]
        assert sum(bin(d).count("1") for d in diff) == 1


def test_a_corrupted_ping_fails_its_checksum_at_the_receiver(pair):
    a, b, wire = pair
    # ARP first, so that the ping goes out as one IPv4 frame.
    wire.carry(a, a.ping("10.0.0.3", 1, 1, b"x" * 32))
    [echo] = a.ping("10.0.0.3", 1, 2, b"x" * 32)
    rejected = 0
    for seed in range(60):
        q = Netem(NetemConfig(corrupt=1.0, seed=seed))
        q.enqueue([echo], 0.0)
        [bad] = q.dequeue(0.0)
        byte = next(i for i, (x, y) in enumerate(zip(echo, bad)) if x != y)
        before = sum(b.drops().values())
        answer = b.receive(bad)
        if byte >= 14:          # past the Ethernet header: in the IPv4 packet
            assert answer == []
            assert sum(b.drops().values()) == before + 1
            rejected += 1
    assert rejected > 40
    assert b.receive(echo) != []        # the frame itself is answered


def test_reorder_sends_some_frames_at_once_ahead_of_the_delayed():
    clock = ManualClock()
    q = Netem(parse_netem("delay 10ms reorder 25% seed 2".split()))
    assert q.config.gap == 1            # tc: reorder with no gap is gap 1
    q.enqueue(frames(1000), 0.0)
    at_once = q.dequeue(0.0)
    assert len(at_once) == q.counters["reordered"]
    assert 200 <= len(at_once) <= 300
    clock.advance(0.010)
    later = q.dequeue(clock.now)
    assert len(at_once) + len(later) == 1000
    assert [number(f) for f in at_once + later] != list(range(1000))


def test_reorder_with_a_gap_delays_the_first_gap_minus_one_of_each_run():
    q = Netem(parse_netem("delay 10ms reorder 100% gap 5".split()))
    q.enqueue(frames(20), 0.0)
    # Frames 1-4 delayed, the 5th at once, and again.
    assert [number(f) for f in q.dequeue(0.0)] == [4, 9, 14, 19]
    assert [number(f) for f in q.dequeue(0.010)] == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13,
                                                      15, 16, 17, 18]


def test_rate_paces_frames_at_their_serialisation_time():
    clock = ManualClock()
    q = Netem(parse_netem("rate 1mbit".split()))
    q.enqueue(frames(10, 1250), clock.now)      # 10 kbit each: 10 ms apart at 1 Mbit/s
    times = [t for t, _ in drain(q, clock, step=0)]
    assert times == pytest.approx([0.010 * (i + 1) for i in range(10)])


def test_rate_with_delay_adds_the_delay_once():
    clock = ManualClock()
    q = Netem(parse_netem("delay 50ms rate 1mbit".split()))
    q.enqueue(frames(4, 1250), clock.now)
    times = [t for t, _ in drain(q, clock, step=0)]
    assert times == pytest.approx([0.060, 0.070, 0.080, 0.090])


def test_limit_overflow_is_counted_and_the_books_balance():
    q = Netem(parse_netem("delay 1s limit 10".split()))
    q.enqueue(frames(25), 0.0)
    assert q.backlog == 10 and q.counters["limit"] == 15
    assert books_balance(q, 25)
    assert len(q.dequeue(1.0)) == 10
    assert books_balance(q, 25)


def test_change_keeps_what_is_queued():
    q = Netem(parse_netem("delay 1s".split()))
    q.enqueue(frames(3), 0.0)
    q.change(parse_netem("delay 10ms".split()))
    q.enqueue(frames(1), 0.0)
    assert len(q.dequeue(0.010)) == 1
    assert len(q.dequeue(1.0)) == 3


# -- tc's syntax ---------------------------------------------------------------------
def test_the_issue_example_parses_and_shows_as_tc_does():
    cfg = parse_netem("delay 20ms 5ms distribution normal loss 1% duplicate 0.1% corrupt 0.1% "
                      "reorder 25% rate 10mbit limit 1000".split())
    assert cfg == NetemConfig(limit=1000, delay=0.020, jitter=0.005, distribution="normal",
                              loss=0.01, duplicate=0.001, corrupt=0.001, reorder=0.25, gap=1,
                              rate=10_000_000)
    assert cfg.format() == ("limit 1000 delay 20ms  5ms loss 1% duplicate 0.1% reorder 25% "
                            "corrupt 0.1% rate 10Mbit gap 1")
    assert parse_netem(cfg.args()) == cfg


@pytest.mark.parametrize("text,seconds", [
    ("20ms", 0.020), ("1.5s", 1.5), ("250us", 250e-6), ("100", 100e-6), ("3msec", 0.003),
    ("2secs", 2.0), ("500ns", 500e-9), ("20MS", 0.020)])
def test_times_take_tcs_units(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text,bits", [
    ("10mbit", 10_000_000), ("10Mbit", 10_000_000), ("1500kbit", 1_500_000), ("1gbit", 10 ** 9),
    ("1mibit", 1 << 20), ("100kbps", 800_000), ("1000", 1000), ("1mbps", 8_000_000)])
def test_rates_take_tcs_units(text, bits):
    assert parse_rate(text) == bits


@pytest.mark.parametrize("bits,text", [(10_000_000, "10Mbit"), (1_500_000, "1500Kbit"),
                                       (999, "999bit"), (10 ** 9, "1Gbit")])
def test_rates_print_as_tc_prints_them(bits, text):
    assert format_rate(bits) == text


def test_percent_takes_a_bare_number_as_a_percentage():
    assert parse_percent("1%") == parse_percent("1") == 0.01


@pytest.mark.parametrize("args,message", [
    ("delay 20ms 5ms 25%", "correlation is not supported"),
    ("loss 1% 25%", "correlation is not supported"),
    ("loss state 1 2", "loss state"),
    ("loss gemodel 1%", "gemodel"),
    ("slot 1ms", "slot"),
    ("ecn", "ecn"),
    ("delay 20ms 5ms distribution pareto", "pareto is not supported"),
    ("delay 20ms 5ms distribution zipf", 'no distribution "zipf"'),
    ("rate 10mbit 20", "overhead"),
    ("rate 10%", "share of the device"),
    ("reorder 25%", "reordering not possible without specifying some delay"),
    ("distribution normal", "no latency and jitter"),
    ("delay 20parsecs", 'illegal time "20parsecs"'),
    ("rate 10furlongs", 'illegal rate'),
    ("loss 101%", "not between"),
    ("loss -1%", "not between"),
    ("limit 0", "limit must be"),
    ("limit many", 'illegal "limit"'),
    ("delay", '"delay" needs a time'),
    ("frobnicate", 'what is "frobnicate"?'),
    ("delay nan", "illegal"),
])
def test_bad_or_unsupported_options_get_one_line_naming_them(args, message):
    with pytest.raises(NetemError) as err:
        parse_netem(args.split())
    assert message in str(err.value)
    assert "\n" not in str(err.value)
