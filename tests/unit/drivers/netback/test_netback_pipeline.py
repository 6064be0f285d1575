"""netback's cores with more than one copy batch in flight, each in its own
scratch area (as the adapter runs them), and the rx queue's byte bound."""
from __future__ import annotations

from vif_pair import SCRATCH_GFN0, eth_frame, make_scratch, make_vif

from xenlab.drivers.netback.rx import NetbackRx
from xenlab.xen import abi


def test_two_tx_batches_in_flight_complete_in_order():
    vif = make_vif()
    second, second_mem = make_scratch(pages=2, first=SCRATCH_GFN0 + 0x200)
    frames = [eth_frame(1400, seed=i) for i in range(120)]
    vif.front_tx.send(frames)
    first = vif.back_tx.build()                        # fills the default 32-page area
    rest = vif.back_tx.build(second)                   # the next frames, in the second area
    assert first.frames and rest.frames and first.scratch is not rest.scratch
    assert {c.gfn for c in rest.copies} <= set(second_mem)
    # Both copies run before either batch completes, as with two in flight.
    first_statuses = vif.grants.copy(first.copies, vif.tx_mem)
    rest_statuses = vif.grants.copy(rest.copies, second_mem)
    out = vif.back_tx.complete(first, first_statuses).frames
    out += vif.back_tx.complete(rest, rest_statuses).frames
    out += vif.run_tx()
    assert out == frames
    polled = vif.front_tx.poll()
    assert polled.completed == len(frames) and not polled.errors and not polled.bad
    assert vif.front_tx.in_flight == 0


def test_two_rx_batches_in_flight_reach_the_frontend_in_order():
    vif = make_vif()
    second, second_mem = make_scratch(pages=1, first=SCRATCH_GFN0 + 0x300)
    vif.front_rx.refill()
    frames = [eth_frame(1000, seed=i) for i in range(40)]
    assert not vif.back_rx.enqueue(frames)
    a = vif.back_rx.build(second)                      # 4 frames fit one page
    b = vif.back_rx.build()
    assert len(a.frames) == 4 and len(b.frames) == 36
    sa = vif.grants.copy(a.copies, second_mem)
    sb = vif.grants.copy(b.copies, vif.rx_mem)
    vif.back_rx.complete(a, sa)
    vif.back_rx.complete(b, sb)
    got = vif.front_rx.poll()
    assert got.frames == frames and not got.drops


def test_a_failed_copy_fails_only_its_own_batch():
    vif = make_vif()
    second, second_mem = make_scratch(pages=1, first=SCRATCH_GFN0 + 0x400)
    frames = [eth_frame(1500, seed=i) for i in range(4)]
    vif.front_tx.send(frames)
    first = vif.back_tx.build(second)                  # two frames fill one page's worth
    rest = vif.back_tx.build()
    assert len(first.frames) == 2 and len(rest.frames) == 2
    failed = vif.back_tx.complete(first, [abi.GNTST_bad_gntref] * len(first.copies))
    good = vif.back_tx.complete(rest, vif.grants.copy(rest.copies, vif.tx_mem))
    assert failed.frames == [] and failed.drops["grant_copy_error"] == 2
    assert good.frames == frames[2:]
    polled = vif.front_tx.poll()
    assert (polled.completed, polled.errors) == (4, 2)


def test_rx_queue_is_bounded_in_bytes_when_asked():
    vif = make_vif()
    rx = NetbackRx(vif.back_rx.ring, vif.back_rx.scratch, max_queue=10_000, max_bytes=10_000)
    drops = rx.enqueue([eth_frame(1000, seed=i) for i in range(15)])
    assert len(rx.queue) == 10 and drops["rx_ring_full"] == 5
    assert rx.queued_bytes == 10_000
    vif.front_rx.refill()
    batch = rx.build()
    rx.complete(batch, vif.grants.copy(batch.copies, vif.rx_mem))
    assert rx.queued_bytes == 0 and not rx.queue
    assert not rx.enqueue([eth_frame(1000)])           # room again
