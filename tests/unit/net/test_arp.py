"""The ARP neighbour table on its own: expiry and retry deadlines on both
sides of the boundary, the neighbour states (a stale entry in use is probed
by unicast), the bounded table and queue, and what ``learn`` says."""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from xenlab.net.arp import TABLE_MAX, ArpPacket, ArpTable, Learned, Timers
from xenlab.net.errors import PacketError

MAC = bytes.fromhex("00163e000001")
MAC2 = bytes.fromhex("00163e000002")
IP = IPv4Address("10.0.0.2")
IP2 = IPv4Address("10.0.0.3")
IP3 = IPv4Address("10.0.0.4")
# Whole numbers of seconds, so that every deadline below is exact.
TIMEOUT, RETRY = 60.0, 1.0


def table(retries: int = 3, queue_limit: int = 3) -> ArpTable:
    return ArpTable(TIMEOUT, RETRY, retries, queue_limit)


# learning ---------------------------------------------------------------------

def test_learn_says_changed_only_for_a_new_or_moved_address():
    arp = table()
    assert arp.learn(IP, MAC, 0.0) == Learned(changed=True, flushed=[])
    assert arp.learn(IP, MAC, 1.0) == Learned(changed=False, flushed=[])   # a refresh
    assert arp.learn(IP, MAC2, 2.0) == Learned(changed=True, flushed=[])   # it moved
    assert arp.entries(2.0) == {IP: (MAC2, 2.0 + TIMEOUT)}


def test_learning_an_expired_address_again_is_a_change():
    arp = table()
    arp.learn(IP, MAC, 0.0)
    assert arp.learn(IP, MAC, TIMEOUT).changed


def test_learn_flushes_what_waited_in_order_and_ends_the_resolution():
    arp = table()
    arp.enqueue(IP, b"one", 0.0)
    arp.enqueue(IP, b"two", 0.0)
    assert arp.learn(IP, MAC, 0.5) == Learned(changed=True, flushed=[b"one", b"two"])
    assert arp.pending() == {}
    assert arp.poll(RETRY) == Timers(retry=[], failed=[])


# expiry: an entry is gone at exactly its deadline ------------------------------

def test_an_unused_entry_lives_until_just_before_its_deadline():
    arp = table()
    arp.learn(IP, MAC, 0.0)
    just_before = TIMEOUT - 2 ** -10
    assert arp.knows(IP, just_before)
    assert arp.entries(just_before) == {IP: (MAC, TIMEOUT)}
    assert arp.next_deadline() == TIMEOUT
    assert arp.poll(just_before) == Timers(retry=[], failed=[])
    assert arp.lookup(IP, just_before) == MAC     # a use: it is stale, so its check begins


# neighbour states: a stale entry in use is checked by unicast, not dropped ------

def test_an_entry_is_reachable_for_half_its_timeout_then_stale():
    arp = table()
    arp.learn(IP, MAC, 0.0)
    assert arp.states(TIMEOUT / 2 - 0.001) == {IP: "REACHABLE"}
    assert arp.states(TIMEOUT / 2) == {IP: "STALE"}
    assert arp.lookup(IP, 10.0) == MAC and arp.next_deadline() == TIMEOUT   # reachable: no check


def test_using_a_stale_entry_delays_then_probes_by_unicast_and_an_answer_confirms_it():
    arp = table()
    arp.learn(IP, MAC, 0.0)
    assert arp.lookup(IP, 40.0) == MAC                  # stale, used: DELAY
    assert arp.states(40.0) == {IP: "DELAY"} and arp.next_deadline() == 45.0
    assert arp.poll(44.9).probe == []
    assert arp.poll(45.0).probe == [(IP, MAC)]          # the first unicast probe
    assert arp.states(45.0) == {IP: "PROBE"} and arp.next_deadline() == 46.0
    assert arp.lookup(IP, 45.5) == MAC                  # still used meanwhile
    assert arp.learn(IP, MAC, 45.5) == Learned(changed=False, flushed=[])   # the answer
    assert arp.states(45.5) == {IP: "REACHABLE"} and arp.next_deadline() == 45.5 + TIMEOUT


def test_a_stale_entry_in_use_outlives_its_deadline_while_probed_and_goes_unanswered():
    arp = table(retries=3)
    arp.learn(IP, MAC, 0.0)
    assert arp.lookup(IP, 59.0) == MAC                  # DELAY until 64, past the deadline
    assert arp.poll(TIMEOUT).probe == [] and arp.knows(IP, TIMEOUT)
    assert arp.lookup(IP, 62.0) == MAC
    assert [arp.poll(t).probe for t in (64.0, 65.0, 66.0)] == [[(IP, MAC)]] * 3
    assert arp.poll(67.0) == Timers(retry=[], failed=[])   # no answer to 3 probes: gone
    assert arp.lookup(IP, 67.0) is None and not arp.knows(IP, 67.0)
    assert arp.next_deadline() is None


def test_at_its_deadline_an_entry_is_gone_from_lookup():
    arp = table()
    arp.learn(IP, MAC, 0.0)
    assert arp.lookup(IP, TIMEOUT) is None
    assert not arp.knows(IP, TIMEOUT)
    assert arp.next_deadline() is None          # lookup dropped it


def test_at_its_deadline_an_entry_is_gone_from_entries_and_poll():
    arp = table()
    arp.learn(IP, MAC, 0.0)
    assert arp.entries(TIMEOUT) == {}
    assert arp.poll(TIMEOUT) == Timers(retry=[], failed=[])
    assert arp.next_deadline() is None


# the bounded table -------------------------------------------------------------

def full_table(expiry_of) -> tuple[ArpTable, list[IPv4Address]]:
    """TABLE_MAX entries; entry i is learned so that it expires at expiry_of(i)."""
    arp = table()
    ips = [IPv4Address("10.1.0.0") + i for i in range(TABLE_MAX)]
    for i, ip in enumerate(ips):
        arp.learn(ip, MAC, expiry_of(i) - TIMEOUT)
    return arp, ips


def test_a_full_table_forgets_the_entry_closest_to_expiry_not_the_lowest_address():
    # The highest address expires first: a choice by address would drop 10.1.0.0.
    arp, ips = full_table(lambda i: 2000.0 - i)
    now = 900.0
    newcomer = IPv4Address("10.2.0.0")
    assert arp.learn(newcomer, MAC2, now).changed
    entries = arp.entries(now)
    assert len(entries) == TABLE_MAX
    assert ips[-1] not in entries
    assert ips[0] in entries and newcomer in entries


def test_refreshing_a_known_address_in_a_full_table_forgets_nobody():
    arp, ips = full_table(lambda i: 1000.0 + i)
    now = 900.0
    assert arp.learn(ips[500], MAC, now) == Learned(changed=False, flushed=[])
    entries = arp.entries(now)
    assert set(entries) == set(ips)
    assert entries[ips[500]] == (MAC, now + TIMEOUT)


def test_a_full_table_first_forgets_every_expired_entry():
    # Entries 0 and 1 expire at exactly ``now``: both go, and nobody alive does.
    arp, ips = full_table(lambda i: 1000.0 + i)
    now = 1001.0
    arp.learn(IPv4Address("10.2.0.0"), MAC2, now)
    assert set(arp.entries(now)) == set(ips[2:]) | {IPv4Address("10.2.0.0")}
    assert arp.next_deadline() == 1002.0        # nothing expired is left to wake for


# resolution queue --------------------------------------------------------------

def test_enqueue_asks_once_and_holds_up_to_the_limit_dropping_the_oldest():
    arp = table(queue_limit=2)
    assert arp.enqueue(IP, b"1", 0.0) == (True, 0)
    assert arp.enqueue(IP, b"2", 0.0) == (False, 0)
    assert arp.pending() == {IP: 2}
    assert arp.enqueue(IP, b"3", 0.0) == (False, 1)
    assert arp.pending() == {IP: 2}
    assert arp.learn(IP, MAC, 0.5).flushed == [b"2", b"3"]


def test_a_queue_limit_of_one_keeps_the_newest_packet():
    arp = table(queue_limit=1)
    assert arp.enqueue(IP, b"1", 0.0) == (True, 0)
    assert arp.pending() == {IP: 1}
    assert arp.enqueue(IP, b"2", 0.0) == (False, 1)
    assert arp.learn(IP, MAC, 0.5).flushed == [b"2"]


def test_a_queue_limit_of_zero_still_resolves_but_holds_nothing():
    arp = table(queue_limit=0)
    assert arp.enqueue(IP, b"1", 0.0) == (True, 1)
    assert arp.enqueue(IP, b"2", 0.0) == (False, 1)
    assert arp.pending() == {IP: 0}
    assert arp.knows(IP, 0.0)
    assert arp.learn(IP, MAC, 0.5) == Learned(changed=True, flushed=[])


# retries -----------------------------------------------------------------------

def test_a_retry_is_due_at_exactly_its_deadline_and_the_next_one_a_retry_later():
    arp = table()
    arp.enqueue(IP, b"p", 0.0)
    assert arp.next_deadline() == RETRY
    assert arp.poll(RETRY - 2 ** -10) == Timers(retry=[], failed=[])
    assert arp.poll(RETRY) == Timers(retry=[IP], failed=[])
    assert arp.next_deadline() == 2 * RETRY
    assert arp.poll(2 * RETRY - 2 ** -10) == Timers(retry=[], failed=[])
    assert arp.poll(2 * RETRY) == Timers(retry=[IP], failed=[])


def test_retries_counts_every_request_then_gives_up_with_the_queued_packets():
    arp = table(retries=2)
    arp.enqueue(IP, b"p", 0.0)                  # request 1
    arp.enqueue(IP, b"q", 0.0)
    assert arp.poll(1.0) == Timers(retry=[IP], failed=[])          # request 2
    assert arp.poll(2.0) == Timers(retry=[], failed=[(IP, 2)], dropped=[b"p", b"q"])
    assert arp.pending() == {} and not arp.knows(IP, 2.0)
    assert arp.next_deadline() is None


def test_poll_looks_past_an_address_that_is_not_due():
    arp = table()
    arp.enqueue(IP, b"p", 0.0)
    assert arp.poll(1.0).retry == [IP]           # IP's next retry: 2.0
    arp.enqueue(IP2, b"p", 0.5)                   # IP2's first retry: 1.5
    assert arp.poll(1.5) == Timers(retry=[IP2], failed=[])
    assert arp.poll(2.0) == Timers(retry=[IP], failed=[])


def test_next_deadline_is_the_earliest_of_retries_and_expiries():
    arp = table()
    assert arp.next_deadline() is None
    arp.learn(IP, MAC, 0.0)                       # expires at 60
    arp.enqueue(IP2, b"p", 10.0)                  # retry at 11
    assert arp.next_deadline() == 11.0
    arp.learn(IP2, MAC2, 10.5)                    # resolved: expires at 70.5
    assert arp.next_deadline() == TIMEOUT
    assert arp.knows(IP2, 10.5) and not arp.knows(IP3, 10.5)


# the packet codec's refusals, with what they say -------------------------------

SHA = bytes.fromhex("00163e010203")


def patched(offset: int, value: bytes) -> bytes:
    raw = bytearray(ArpPacket.request(SHA, IP, IP2).build())
    raw[offset:offset + len(value)] = value
    return bytes(raw)


@pytest.mark.parametrize("raw, reason, says", [
    (ArpPacket.request(SHA, IP, IP2).build()[:27], "truncated", "ARP needs 28 bytes, got 27"),
    (patched(2, b"\x86\xdd"), "bad_arp", r"not Ethernet/IPv4 ARP \(htype 1, ptype 0x86dd\)"),
    (patched(0, b"\x00\x06"), "bad_arp", r"not Ethernet/IPv4 ARP \(htype 6, ptype 0x0800\)"),
    (patched(6, b"\x00\x03"), "bad_arp", "unknown ARP op 3"),
    (patched(8, b"\x01" + SHA[1:]), "bad_arp", "sender is not a station address"),
    # Linux's arp_process: neither a multicast nor the limited broadcast sender IP.
    (patched(14, IPv4Address("224.0.0.1").packed), "bad_arp", "sender is not a station address"),
    (patched(14, IPv4Address("255.255.255.255").packed), "bad_arp",
     "sender is not a station address"),
])
def test_a_refused_arp_packet_names_its_counter_and_why(raw, reason, says):
    with pytest.raises(PacketError, match=f"^{reason}: {says}$") as info:
        ArpPacket.parse(raw)
    assert info.value.reason == reason

