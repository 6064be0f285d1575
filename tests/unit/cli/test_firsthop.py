"""The accounting `xenlab inject` does one hop on, on plain counters."""
from __future__ import annotations

from xenlab.cli import firsthop
from xenlab.cli.firsthop import Hop, Sample, account


def test_frames_a_hop_dropped_are_named_with_their_reason_and_what_to_do():
    before = Sample(10, {"spoofed_mac": 6})
    after = Sample(10, {"spoofed_mac": 9})
    report = account("vif1.0 (netback in Domain-0)", 3, before, after)
    assert (report.passed, report.drops, report.unaccounted) == (0, {"spoofed_mac": 3}, 0)
    assert report.summary() == "vif1.0 (netback in Domain-0): 0 passed on, 3 dropped (spoofed_mac=3)"
    assert report.hints()[0].startswith("spoofed_mac: the source MAC is not the vif's")
    assert firsthop.settled(report)


def test_passed_is_capped_at_what_was_sent_and_other_traffic_is_not_ours():
    report = account("br", 2, Sample(0, {}, {"vif2.0": 5}), Sample(7, {}, {"vif2.0": 9, "vif3.0": 2}))
    assert report.passed == 2 and report.egress == {"vif2.0": 4, "vif3.0": 2}
    assert report.summary() == "br: 2 passed on, 0 dropped; out of vif2.0 (4), vif3.0 (2)"


def test_frames_not_seen_yet_are_said_and_the_hop_is_not_settled():
    report = account("eth0 of web (netfront)", 5, Sample(0), Sample(2))
    assert report.unaccounted == 3 and not firsthop.settled(report)
    assert report.summary().endswith("; 3 not seen there yet")


async def test_follow_samples_until_every_frame_is_accounted_for():
    samples = iter([Sample(0), Sample(1), Sample(2, {"link_down": 1})])

    async def sample():
        return next(samples)
    report = await firsthop.follow(Hop("h", sample), 3, Sample(0), timeout=10, poll=0)
    assert (report.passed, report.drops) == (2, {"link_down": 1})


async def test_follow_gives_up_at_its_timeout_with_what_it_saw():
    clock = iter(range(100)).__next__

    async def sample():
        return Sample(0)
    report = await firsthop.follow(Hop("h", sample), 3, Sample(0), timeout=3, poll=0, clock=clock)
    assert report.passed == 0 and report.unaccounted == 3
