"""`xenlab perf`'s table and its argument types."""
from __future__ import annotations

import argparse

import pytest

from xenlab import argtypes
from xenlab.cli.perf import format_row, si
from xenlab.proto import agent_pb2


@pytest.mark.parametrize("bits, text", [(999_960, "1.00 Mbits/sec"), (9.96e6, "9.96 Mbits/sec"),
                                        (195e6, "195 Mbits/sec"), (1.5e9, "1.50 Gbits/sec"),
                                        (999.6, "1.00 Kbits/sec"), (0, "0.00 bits/sec")])
def test_rates_as_iperf_prints_them(bits, text):
    assert si(bits) == text


def test_a_row_shows_offered_achieved_loss_and_jitter():
    sent = agent_pb2.PerfInterval(start=1.0, end=2.0, datagrams=850, bytes=850 * 1470)
    got = agent_pb2.PerfInterval(start=1.0, end=2.0, datagrams=848, bytes=848 * 1470, lost=2,
                                 jitter=0.00125, out_of_order=1)
    assert format_row(sent, got).split() == [
        "1.0-", "2.0", "sec", "10.0", "Mbits/sec", "9.97", "Mbits/sec", "2/850", "(0.24%)",
        "1.250", "ms", "1", "out", "of", "order"]
    assert "-" in format_row(None, got).split()          # the sender's report never came


@pytest.mark.parametrize("text, bits", [("10M", 10e6), ("500k", 500e3), ("1G", 1e9), ("2.5m", 2.5e6),
                                        ("64", 64.0)])
def test_bitrates_take_iperfs_suffixes(text, bits):
    assert argtypes.bitrate(text) == bits


@pytest.mark.parametrize("text", ["0", "fast", "10Mbit", "-1M", "200G", ""])
def test_bad_bitrates_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        argtypes.bitrate(text)
