"""The vif values that cross xenstore (xl-network-configuration(5)): mac=,
rate= and vlan=."""
from __future__ import annotations

import random
import re

import pytest

from xenlab.xen.errors import ConfigError
from xenlab.xen.netconf import parse_mac, parse_rate, parse_vlan, random_mac


# --------------------------------------------------------------------------
# MACs

def test_parse_mac():
    assert parse_mac("00:16:3e:0A:ff:01") == bytes([0, 0x16, 0x3E, 0x0A, 0xFF, 0x01])
    with pytest.raises(ConfigError):
        parse_mac("00:16:3e:0a:ff")


def test_random_mac_format_prefix_and_mask():
    for seed in range(200):
        mac = random_mac(random.Random(seed))
        assert re.fullmatch(r"00:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}", mac)
        assert parse_mac(mac)[3] & 0x80 == 0


def test_random_mac_masks_the_fourth_octet():
    class AllOnes(random.Random):
        def getrandbits(self, k):
            return (1 << k) - 1
    assert random_mac(AllOnes()) == "00:16:3e:7f:ff:ff"


def test_random_mac_is_deterministic_with_a_seeded_rng_and_random_without():
    assert random_mac(random.Random(7)) == random_mac(random.Random(7))
    assert len({random_mac() for _ in range(20)}) > 1


# --------------------------------------------------------------------------
# Rates (libxlu_vif.c: decimal units, bits divided by 8, default 50 ms)

@pytest.mark.parametrize("text, expected", [
    ("10Mb/s", (62_500, 50_000)),          # 1.25 MB/s * 50 ms
    ("1MB/s@20ms", (20_000, 20_000)),
    ("100KB/s", (5_000, 50_000)),
    ("1GB/s@1s", (1_000_000_000, 1_000_000)),
    ("8Gb/s@500us", (500_000, 500)),
    ("1000B/s@1", (1_000, 1_000_000)),     # an interval without a unit is seconds
    ("1000b/s", (6, 50_000)),              # 125 B/s * 50 ms, rounded down
    ("10Mb", (62_500, 50_000)),            # per second when /TIME is left out
    ("1KB/ms", (50_000, 50_000)),          # 1 KB per ms = 1 MB/s
    ("1KB/us@1ms", (1_000_000, 1_000)),
    (" 10Mb/s ", (62_500, 50_000)),
])
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text, words", [
    ("", "invalid rate"),
    ("fast", "invalid rate"),
    ("10mb/s", "invalid rate"),         # units are upper case, as xl's regex
    ("10Mb/h", "invalid rate"),
    ("10Mb/", "invalid rate"),
    ("10Mbs", "invalid rate"),
    ("10 Mb/s", "invalid rate"),
    ("0Mb/s", "rate overflow"),
    ("4294967296B/s", "rate overflow"),
    ("10Mb/s@", "invalid replenishment interval"),
    ("10Mb/s@20min", "invalid replenishment interval"),
    ("10Mb/s@0ms", "interval overflow"),
    ("10Mb/s@4295s", "interval overflow"),
    ("1b/s", "less than one byte"),
    ("10Mb/s@20ms@5ms", "invalid replenishment interval"),
])
def test_parse_rate_errors(text, words):
    with pytest.raises(ConfigError) as info:
        parse_rate(text)
    assert words in info.value.message


# -- vlan= (xl-network-configuration(5), Xen 4.19) ------------------------------------------
@pytest.mark.parametrize("text,members", [
    ("10", [(10, True, True)]),
    ("10p/20", [(10, True, True), (20, False, False)]),
    ("10p/100+10x4", [(10, True, True)] + [(v, False, False) for v in (100, 110, 120, 130, 140)]),
    ("1p/20-22u", [(1, True, True), (20, False, True), (21, False, True), (22, False, True)]),
    ("5u/7p", [(5, False, True), (7, True, True)]),
    # Both ends of each bound: a one-VLAN range, an offset of 1, the highest VID.
    ("1p/30-30", [(1, True, True), (30, False, False)]),
    ("1p/100+1x2u", [(1, True, True), (100, False, True), (101, False, True), (102, False, True)]),
    ("4094", [(4094, True, True)]),
    ("4093p/4094u", [(4093, True, True), (4094, False, True)]),
])
def test_vlan_takes_xls_syntax(text, members):
    assert [(m.vid, m.pvid, m.untagged) for m in parse_vlan(text)] == members


@pytest.mark.parametrize("text,word", [
    ("10/20", "PVID"), ("10p/20p", "PVID"), ("0", "outside"), ("4095", "outside"), ("20-10", "down"),
    ("10p/10", "twice"), ("10-12p", "single"), ("ten", "not"), ("10+0x3", "offset"), ("10+1x3p", "single"), ("", "not"),
])
def test_bad_vlans_are_refused_saying_why(text, word):
    with pytest.raises(ConfigError, match=word):
        parse_vlan(text)
