"""The FDB alone: learning, moving, ageing on a test clock, static entries,
the size limit and its eviction rule, flush and events."""
import errno

import pytest

from xenlab.bridge.fdb import DEFAULT_AGEING, DEFAULT_MAX_LEARNED, Fdb, FdbEvent
from xenlab.testing import ManualClock
from xenlab.xen.errors import XenError


def mac(n: int) -> bytes:
    return bytes.fromhex("00163e") + n.to_bytes(3, "big")


@pytest.fixture
def clock():
    return ManualClock(1000.0)


@pytest.fixture
def fdb(clock):
    return Fdb("xenbr0", clock=clock)


def kinds(events):
    return [(e.kind, e.port) for e in events]


def test_defaults_are_documented_values():
    assert DEFAULT_AGEING == 300.0 and DEFAULT_MAX_LEARNED == 8192


def test_learns_a_unicast_source_with_an_event(fdb):
    assert fdb.learn(mac(1), "vif1.0")
    entry = fdb.lookup(mac(1))
    assert entry.port == "vif1.0" and not entry.static
    events = fdb.pop_events()
    assert kinds(events) == [("learn", "vif1.0")]
    assert events[0].bridge == "xenbr0" and events[0].mac == mac(1)
    assert fdb.pop_events() == []
    assert fdb.counters["learned"] == 1


@pytest.mark.parametrize("bad", [b"\xff" * 6, bytes.fromhex("01005e000001"), bytes(6),
                                 bytes.fromhex("333300000001")])
def test_group_and_zero_sources_are_not_learned(fdb, bad):
    assert not fdb.learn(bad, "vif1.0")
    assert len(fdb) == 0 and fdb.counters["learned"] == 0


def test_a_mac_seen_on_another_port_moves(fdb):
    fdb.learn(mac(1), "vif1.0")
    fdb.pop_events()
    fdb.learn(mac(1), "vif2.0")
    assert fdb.lookup(mac(1)).port == "vif2.0"
    events = fdb.pop_events()
    assert kinds(events) == [("move", "vif2.0")] and events[0].old_port == "vif1.0"
    assert fdb.counters["moved"] == 1 and fdb.counters["learned"] == 1


def test_ageing_counts_from_the_last_refresh(fdb, clock):
    fdb.learn(mac(1), "vif1.0")
    clock.now += 200
    fdb.learn(mac(1), "vif1.0")           # refreshed
    clock.now += 200
    assert fdb.expire() == 0 and fdb.lookup(mac(1)) is not None
    clock.now += 100                      # 300 s since the refresh: has_expired()
    assert fdb.lookup(mac(1)) is None
    assert fdb.counters["aged"] == 1
    assert kinds(fdb.pop_events())[-1] == ("age", "vif1.0")


def test_expire_removes_only_what_is_due_oldest_first(fdb, clock):
    for n in range(5):
        fdb.learn(mac(n), "p")
        clock.now += 10
    clock.now = 1000 + 300 + 25           # entries learned at 1000, 1010, 1020 are due
    assert fdb.expire() == 3
    assert [e.mac for e in fdb] == [mac(3), mac(4)]
    assert fdb.next_expiry() == 1030 + 300


def test_a_new_ageing_applies_to_the_entries_there(fdb, clock):
    fdb.learn(mac(1), "p")
    clock.now += 60
    fdb.set_ageing(30)                    # entries keep their updated time
    assert fdb.get(mac(1)) is None and fdb.counters["aged"] == 1


@pytest.mark.parametrize("bad", [-1, float("nan"), 10 ** 7])
def test_bad_ageing_is_refused(fdb, bad):
    with pytest.raises(XenError) as err:
        fdb.set_ageing(bad)
    assert err.value.errno == errno.EINVAL


def test_expires_in_reports_the_time_left(fdb, clock):
    fdb.learn(mac(1), "p")
    clock.now += 120
    assert fdb.expires_in(fdb.get(mac(1))) == 180


def test_a_learned_entry_past_its_time_is_relearned_not_moved(fdb, clock):
    fdb.learn(mac(1), "vif1.0")
    clock.now += 301
    fdb.learn(mac(1), "vif2.0")
    assert fdb.get(mac(1)).port == "vif2.0"
    assert fdb.counters["moved"] == 0 and fdb.counters["aged"] == 1 and fdb.counters["learned"] == 2


def test_static_entries_never_age_but_follow_a_moved_station(fdb, clock):
    fdb.add_static(mac(1), "vif1.0")
    fdb.learn(mac(1), "vif2.0")
    clock.now += 10 ** 5
    fdb.expire()
    entry = fdb.lookup(mac(1))
    assert entry.static and entry.port == "vif2.0"
    assert fdb.counters["moved"] == 1 and fdb.n_learned == 0


def test_a_static_entry_replaces_a_learned_one(fdb, clock):
    fdb.learn(mac(1), "vif2.0")
    fdb.add_static(mac(1), "vif1.0")
    assert fdb.get(mac(1)).static and fdb.get(mac(1)).port == "vif1.0"
    assert len(fdb) == 1
    clock.now += 10 ** 5
    assert fdb.expire() == 0               # no stale LRU entry left behind
    fdb.delete_static(mac(1))
    assert len(fdb) == 0
    with pytest.raises(XenError) as err:
        fdb.delete_static(mac(1))
    assert err.value.errno == errno.ENOENT


def test_an_administered_entry_is_refused_over_an_existing_one_unless_replaced(fdb):
    fdb.learn(mac(1), "p")
    with pytest.raises(XenError) as err:
        fdb.add(mac(1), "q", "static")
    assert err.value.errno == errno.EEXIST
    entry = fdb.add(mac(1), "q", "static", sticky=True, replace=True)
    assert entry.static and entry.sticky and fdb.n_learned == 0 and len(fdb) == 1
    with pytest.raises(XenError) as err:
        fdb.add(mac(2), "q", "permanent", sticky=True)
    assert err.value.errno == errno.EINVAL


def test_delete_takes_any_entry_but_only_on_its_port(fdb):
    fdb.learn(mac(1), "p")
    with pytest.raises(XenError) as err:
        fdb.delete(mac(1), "q")
    assert err.value.errno == errno.ENOENT
    fdb.delete(mac(1), "p")
    assert len(fdb) == 0 and fdb.n_learned == 0


def test_entries_are_per_vlan(fdb):
    fdb.learn(mac(1), "p", vid=10)
    fdb.learn(mac(1), "q", vid=20)
    assert fdb.get(mac(1), 10).port == "p" and fdb.get(mac(1), 20).port == "q"
    assert fdb.get(mac(1)) is None and fdb.counters["moved"] == 0 and len(fdb) == 2


def test_delete_static_does_not_remove_a_learned_entry(fdb):
    fdb.learn(mac(1), "p")
    with pytest.raises(XenError) as err:
        fdb.delete_static(mac(1))
    assert err.value.errno == errno.ENOENT and fdb.get(mac(1)) is not None


def test_static_needs_a_unicast_address(fdb):
    with pytest.raises(XenError) as err:
        fdb.add_static(b"\xff" * 6, "p")
    assert err.value.errno == errno.EINVAL


def test_ovs_policy_evicts_the_least_recently_seen_entry_of_the_busiest_port(clock):
    fdb = Fdb("br", max_learned=4, clock=clock, policy="ovs")
    fdb.learn(mac(0), "q")
    clock.now += 1
    for n in range(1, 4):
        fdb.learn(mac(n), "p")
        clock.now += 1
    fdb.learn(mac(1), "p")                # mac(1) is now p's most recently seen
    fdb.pop_events()
    fdb.learn(mac(9), "q")                # q's own entry is older, but p has the most
    assert {e.mac for e in fdb} == {mac(0), mac(1), mac(3), mac(9)}
    assert kinds(fdb.pop_events()) == [("evict", "p"), ("learn", "q")]
    assert fdb.counters["evicted"] == 1 and len(fdb) == 4


def test_ovs_eviction_never_takes_an_administered_entry(clock):
    fdb = Fdb("br", max_learned=1, clock=clock, policy="ovs")
    fdb.add_static(mac(0), "p")
    fdb.add(mac(1), "p", "dynamic")
    fdb.learn(mac(2), "p")
    fdb.learn(mac(3), "p")
    assert {e.mac for e in fdb} == {mac(0), mac(1), mac(3)}
    assert fdb.counters["evicted"] == 1 and fdb.n_learned == 1


def test_full_table_ages_out_due_entries_before_evicting(clock):
    fdb = Fdb("br", max_learned=2, clock=clock, policy="ovs")
    fdb.learn(mac(0), "p")
    clock.now += 100
    fdb.learn(mac(1), "p")
    clock.now += 250                      # mac(0) is due, mac(1) is not
    fdb.learn(mac(2), "p")
    assert fdb.counters["aged"] == 1 and fdb.counters["evicted"] == 0
    assert {e.mac for e in fdb} == {mac(1), mac(2)}


def test_flush_keeps_static_entries_unless_asked(fdb):
    fdb.learn(mac(1), "a")
    fdb.learn(mac(2), "b")
    fdb.add_static(mac(3), "a")
    assert fdb.flush("a") == 1
    assert {e.mac for e in fdb} == {mac(2), mac(3)}
    assert fdb.flush() == 1
    assert [e.mac for e in fdb] == [mac(3)]
    assert fdb.flush(include_static=True) == 1 and len(fdb) == 0
    assert [e.kind for e in fdb.pop_events()][-3:] == ["flush", "flush", "flush"]
    assert fdb.counters["flushed"] == 3


def test_the_event_backlog_is_bounded(fdb, monkeypatch):
    from xenlab.bridge import fdb as fdb_module
    monkeypatch.setattr(fdb_module, "EVENT_BACKLOG", 4)
    for n in range(6):
        fdb.learn(mac(n), "p")
    events = fdb.pop_events()
    assert [e.mac for e in events] == [mac(n) for n in range(2, 6)]
    assert fdb.counters["events_lost"] == 2


def test_a_size_limit_below_one_is_refused(clock):
    with pytest.raises(XenError):
        Fdb("br", max_learned=0, clock=clock)
    with pytest.raises(XenError):
        Fdb("br", policy="lru", clock=clock)


def test_lookups_are_dict_based_and_ageing_looks_only_at_the_head(clock):
    """Not timed: the structures are what keep per-frame cost flat."""
    fdb = Fdb("br", max_learned=200_000, clock=clock)
    for n in range(100_000):
        fdb.learn(mac(n), "p")
    assert isinstance(fdb._entries, dict) and len(fdb._entries) == 100_000

    class CountingDict(dict):
        reads = 0

        def get(self, key, default=None):
            CountingDict.reads += 1
            return super().get(key, default)

        def __getitem__(self, key):
            CountingDict.reads += 1
            return super().__getitem__(key)

    fdb._entries = CountingDict(fdb._entries)
    clock.now += 1
    fdb.learn(mac(5), "p")
    fdb.lookup(mac(7))
    fdb.expire()
    fdb.learn(mac(100_001), "p")
    assert CountingDict.reads < 10


# -- the contract, field by field and on both sides of each bound ------------

def test_an_administered_entry_leaves_a_static_event_field_by_field(fdb, clock):
    fdb.add(mac(1), "vif1.0", "static", sticky=True, vid=7)
    fdb.add(mac(2), "vif2.0", "permanent")
    fdb.add(mac(3), "vif3.0", "dynamic", now=2000.0)
    assert fdb.pop_events() == [
        FdbEvent("static", "xenbr0", mac(1), "vif1.0", "", True, 1000.0, 7, True, False),
        FdbEvent("static", "xenbr0", mac(2), "vif2.0", "", True, 1000.0, 0, False, True),
        FdbEvent("static", "xenbr0", mac(3), "vif3.0", "", False, 2000.0, 0, False, False),
    ]
    assert [fdb.get(mac(n)).state for n in (2, 3)] == ["permanent", ""]
    assert fdb.get(mac(1), 7).state == "static" and fdb.get(mac(1), 7).learned is False


def test_a_deleted_entry_leaves_a_delete_event_field_by_field(fdb, clock):
    fdb.add(mac(1), "vif1.0", "permanent", vid=5)
    fdb.pop_events()
    clock.now = 1234.0
    entry = fdb.delete(mac(1), "vif1.0", vid=5)
    assert (entry.mac, entry.port, entry.vid, entry.local) == (mac(1), "vif1.0", 5, True)
    assert fdb.pop_events() == [FdbEvent("delete", "xenbr0", mac(1), "vif1.0", "", True, 1234.0, 5,
                                         False, True)]
    assert fdb.get(mac(1), 5) is None and len(fdb) == 0


def test_delete_static_removes_an_administered_entry_with_its_event(fdb, clock):
    fdb.add(mac(1), "p", "dynamic")
    fdb.pop_events()
    fdb.delete_static(mac(1), now=1500.0)
    assert fdb.get(mac(1)) is None
    assert fdb.pop_events() == [FdbEvent("delete", "xenbr0", mac(1), "p", "", False, 1500.0)]
    with pytest.raises(XenError) as err:
        fdb.delete_static(mac(1))
    assert err.value.errno == errno.ENOENT and "no static FDB entry for 00:16:3e:00:00:01" in str(err.value)


def test_learn_and_move_events_carry_every_field(fdb, clock):
    fdb.learn(mac(1), "a", vid=3)
    clock.now = 1001.0
    fdb.learn(mac(1), "b", vid=3)
    assert fdb.pop_events() == [
        FdbEvent("learn", "xenbr0", mac(1), "a", "", False, 1000.0, 3, False, False),
        FdbEvent("move", "xenbr0", mac(1), "b", "a", False, 1001.0, 3, False, False),
    ]


def test_an_event_as_a_dict_names_every_field():
    event = FdbEvent("move", "xenbr0", mac(1), "b", "a", True, 5.0, 12, True, True)
    assert event.to_dict() == {"kind": "move", "bridge": "xenbr0", "mac": "00:16:3e:00:00:01",
                               "port": "b", "old_port": "a", "static": True, "vlan": 12,
                               "sticky": True, "permanent": True}


@pytest.mark.parametrize("kind, deleted", [("learn", False), ("move", False), ("static", False),
                                           ("age", True), ("evict", True), ("flush", True),
                                           ("delete", True)])
def test_an_event_says_whether_the_entry_went(kind, deleted):
    assert FdbEvent(kind, "br", mac(1), "p").deleted is deleted


def test_learn_reports_whether_it_learned_or_refreshed(fdb, clock):
    assert fdb.learn(mac(1), "a") is True               # new
    assert fdb.learn(mac(1), "a") is True               # the same instant: refreshed already
    clock.now += 1
    assert fdb.learn(mac(1), "a") is True               # refreshed
    assert fdb.get(mac(1)).updated == 1001.0
    clock.now += 1
    assert fdb.learn(mac(1), "b") is True               # moved
    fdb.add(mac(2), "a", "static", sticky=True)
    assert fdb.learn(mac(2), "b") is False              # sticky holds it
    assert fdb.get(mac(2)).port == "a" and fdb.counters["sticky_conflict"] == 1
    fdb.add(mac(3), "a", "permanent")
    assert fdb.learn(mac(3), "b") is False              # the bridge's own address
    assert fdb.get(mac(3)).port == "a" and fdb.counters["local_conflict"] == 1
    assert fdb.counters["moved"] == 1 and fdb.counters["learned"] == 1


def test_a_refreshed_entry_goes_to_the_back_of_both_ageing_orders(clock):
    fdb = Fdb("br", max_learned=2, clock=clock, policy="ovs")
    fdb.learn(mac(1), "p")
    clock.now += 10
    fdb.learn(mac(2), "p")
    clock.now += 10
    fdb.learn(mac(1), "p")                # mac(1) is now the most recently seen
    assert fdb.next_expiry() == 1010.0 + 300
    fdb.learn(mac(3), "p")                # full: evicts p's least recently seen, mac(2)
    assert {e.mac for e in fdb} == {mac(1), mac(3)}


def test_a_static_entry_refreshed_by_a_frame_stays_out_of_the_ageing_order(fdb, clock):
    fdb.add(mac(1), "a", "static")
    clock.now += 5
    assert fdb.learn(mac(1), "a") is True
    assert fdb.get(mac(1)).updated == 1005.0 and fdb.next_expiry() is None


def test_a_moved_learned_entry_counts_on_its_new_port(fdb):
    fdb.learn(mac(1), "a")
    fdb.learn(mac(2), "a")
    fdb.learn(mac(1), "b")
    assert (fdb.learned_on("a"), fdb.learned_on("b"), fdb.learned_on("c")) == (1, 1, 0)
    fdb.learn(mac(2), "b")
    assert (fdb.learned_on("a"), fdb.learned_on("b")) == (0, 2)


def test_an_entry_ages_out_exactly_ageing_seconds_after_its_refresh(fdb, clock):
    fdb.learn(mac(1), "p")
    clock.now = 1000.0 + 300 - 0.001
    assert fdb.lookup(mac(1)) is not None and fdb.expires_in(fdb.get(mac(1))) == pytest.approx(0.001)
    assert fdb.expire() == 0
    clock.now = 1300.0
    assert fdb.expires_in(fdb.get(mac(1))) == 0.0
    assert fdb.lookup(mac(1)) is None
    assert fdb.pop_events()[-1] == FdbEvent("age", "xenbr0", mac(1), "p", "", False, 1300.0)


def test_expires_in_is_never_negative_and_none_for_a_static_entry(fdb, clock):
    fdb.learn(mac(1), "p")
    fdb.add(mac(2), "p", "static")
    assert fdb.expires_in(fdb.get(mac(1)), now=5000.0) == 0.0
    assert fdb.expires_in(fdb.get(mac(1)), now=1100.0) == 200.0
    assert fdb.expires_in(fdb.get(mac(2))) is None


def test_a_topology_change_hold_replaces_the_ageing_time_until_it_ends(fdb, clock):
    fdb.learn(mac(1), "p")
    clock.now += 10
    fdb.learn(mac(2), "p")
    clock.now += 5                          # mac(1) is 15 s old, mac(2) 5 s
    fdb.set_hold(15.0)
    assert fdb.hold_time == 15.0 and [e.mac for e in fdb] == [mac(2)]
    assert fdb.next_expiry() == 1010.0 + 15 and fdb.expires_in(fdb.get(mac(2))) == 10.0
    fdb.set_hold(None)
    assert fdb.hold_time == 300.0 and fdb.next_expiry() == 1010.0 + 300
    clock.now = 1024.0                      # past the hold, within the ageing time
    assert fdb.lookup(mac(2)) is not None


def test_age_port_removes_only_that_ports_entries_older_than_the_hold(fdb, clock):
    fdb.learn(mac(1), "a")
    fdb.learn(mac(2), "b")
    clock.now += 10
    fdb.learn(mac(3), "a")
    fdb.add(mac(4), "a", "static")
    fdb.pop_events()
    assert fdb.age_port("a", 10.0) == 1     # exactly `hold` old goes
    assert {e.mac for e in fdb} == {mac(2), mac(3), mac(4)}
    assert fdb.pop_events() == [FdbEvent("age", "xenbr0", mac(1), "a", "", False, 1010.0)]
    assert fdb.age_port("a", 0.001) == 0 and fdb.counters["aged"] == 1


def test_flush_picks_by_port_vlan_and_kind(fdb):
    fdb.learn(mac(1), "a", vid=10)
    fdb.learn(mac(2), "a", vid=20)
    fdb.learn(mac(3), "b", vid=10)
    fdb.add(mac(4), "a", "static", vid=10)
    fdb.add(mac(5), "a", "dynamic", vid=10)
    assert fdb.flush("a", vid=10) == 2                      # mac(1) and the dynamic mac(5)
    assert {e.mac for e in fdb} == {mac(2), mac(3), mac(4)}
    assert fdb.flush("a", vid=10, include_static=True, dynamic_only=True) == 0
    assert fdb.flush(vid=10, include_static=True) == 2      # mac(3) and mac(4)
    assert [e.mac for e in fdb] == [mac(2)]
    events = fdb.pop_events()[-4:]
    assert [(e.kind, e.mac, e.vid) for e in events] == [("flush", mac(1), 10), ("flush", mac(5), 10),
                                                        ("flush", mac(3), 10), ("flush", mac(4), 10)]
    assert fdb.counters["flushed"] == 4 and fdb.n_learned == 1


def test_ageing_zero_learns_nothing_and_drops_what_ages(fdb, clock):
    fdb.learn(mac(1), "p")
    fdb.add(mac(2), "p", "dynamic")
    fdb.add(mac(3), "p", "static")
    fdb.pop_events()
    fdb.set_ageing(0)
    assert [e.mac for e in fdb] == [mac(3)] and fdb.n_learned == 0
    assert [(e.kind, e.mac) for e in fdb.pop_events()] == [("age", mac(1)), ("age", mac(2))]
    assert fdb.learn(mac(4), "p") is False and len(fdb) == 1 and fdb.next_expiry() is None


@pytest.mark.parametrize("seconds", [0, 0.5, 1_000_000])
def test_ageing_bounds_are_inclusive(fdb, seconds):
    fdb.set_ageing(seconds)
    assert fdb.ageing == float(seconds)


@pytest.mark.parametrize("bad", [-0.001, 1_000_000.001])
def test_ageing_just_outside_its_bounds_is_refused(fdb, bad):
    with pytest.raises(XenError) as err:
        fdb.set_ageing(bad)
    assert err.value.errno == errno.EINVAL and "outside 0..1000000" in str(err.value)
    assert fdb.ageing == 300.0


def test_the_learned_limit_is_exact_and_linux_learns_nothing_more(clock):
    fdb = Fdb("br", max_learned=2, clock=clock)
    fdb.add(mac(9), "p", "static")          # does not count
    assert fdb.learn(mac(1), "p") and fdb.learn(mac(2), "p")
    assert fdb.learn(mac(3), "p") is False
    assert {e.mac for e in fdb} == {mac(1), mac(2), mac(9)}
    assert fdb.counters["fdb_full"] == 1 and fdb.counters["evicted"] == 0
    fdb.set_limit(max_learned=3)
    assert fdb.learn(mac(3), "p") is True and fdb.max_learned == 3


def test_set_limit_changes_only_what_it_is_given(clock):
    fdb = Fdb("br", max_learned=5, clock=clock)
    fdb.set_limit(policy="ovs")
    assert (fdb.max_learned, fdb.policy) == (5, "ovs")
    fdb.set_limit(max_learned=1)
    assert (fdb.max_learned, fdb.policy) == (1, "ovs")
    for bad in (0, True, 1.0, "2"):
        with pytest.raises(XenError) as err:
            fdb.set_limit(max_learned=bad)
        assert err.value.errno == errno.EINVAL
    with pytest.raises(XenError) as err:
        fdb.set_limit(policy="lru")
    assert err.value.errno == errno.EINVAL and "'lru'" in str(err.value)
    assert (fdb.max_learned, fdb.policy) == (1, "ovs")


def test_ovs_eviction_of_equal_ports_takes_the_oldest_entry(clock):
    fdb = Fdb("br", max_learned=4, clock=clock, policy="ovs")
    for n, port in enumerate(["a", "b", "b", "a"]):
        fdb.learn(mac(n), port)
        clock.now += 1
    fdb.learn(mac(9), "c")                  # a and b have two each; a's oldest is older
    assert {e.mac for e in fdb} == {mac(1), mac(2), mac(3), mac(9)}
    assert fdb.pop_events()[-2:] == [FdbEvent("evict", "br", mac(0), "a", "", False, 1004.0),
                                     FdbEvent("learn", "br", mac(9), "c", "", False, 1004.0)]


@pytest.mark.parametrize("vid", [0, 1, 4094])
def test_administered_vlan_ids_in_range(fdb, vid):
    assert fdb.add(mac(1), "p", vid=vid).vid == vid


@pytest.mark.parametrize("vid", [-1, 4095, True, 1.0])
def test_administered_vlan_ids_out_of_range_are_refused(fdb, vid):
    with pytest.raises(XenError) as err:
        fdb.add(mac(1), "p", vid=vid)
    assert err.value.errno == errno.EINVAL and "outside 1..4094" in str(err.value) and len(fdb) == 0


def test_administered_entry_refusals_say_why(fdb):
    cases = [((bytes.fromhex("01005e000001"), "p"), {}, "01:00:5e:00:00:01 is not a unicast"),
             ((b"\x00\x16", "p"), {}, "0016 is not a unicast"),
             ((b"", "p"), {}, "(empty) is not a unicast"),
             ((mac(1), "p"), {"state": "local"}, "FDB entry state 'local'"),
             ((mac(1), "p"), {"state": "permanent", "sticky": True}, "cannot be sticky")]
    for args, kw, words in cases:
        with pytest.raises(XenError) as err:
            fdb.add(*args, **kw)
        assert err.value.errno == errno.EINVAL and words in str(err.value), (args, kw)
    fdb.add(mac(1), "p", vid=3)
    with pytest.raises(XenError) as err:
        fdb.add(mac(1), "q", vid=3)
    assert err.value.errno == errno.EEXIST
    assert "00:16:3e:00:00:01 vlan 3 is already in the FDB of xenbr0 (dev p)" in str(err.value)
    with pytest.raises(XenError) as err:
        fdb.delete(mac(1), "q", vid=3)
    assert err.value.errno == errno.ENOENT
    assert "no FDB entry for 00:16:3e:00:00:01 vlan 3 on q on xenbr0" in str(err.value)
    with pytest.raises(XenError) as err:
        fdb.delete(mac(2))
    assert err.value.errno == errno.ENOENT and str(err.value).endswith("no FDB entry for 00:16:3e:00:00:02 on xenbr0")
    assert fdb.get(mac(1), 3).port == "p"


def test_a_replaced_entry_leaves_no_trace_of_the_old_one(fdb, clock):
    fdb.learn(mac(1), "a")
    fdb.add(mac(1), "b", "dynamic", replace=True)
    assert fdb.n_learned == 0 and fdb.learned_on("a") == 0 and len(fdb) == 1
    assert fdb.get(mac(1)).learned is False and not fdb.get(mac(1)).static
    clock.now += 300
    assert fdb.expire() == 1 and len(fdb) == 0   # a dynamic entry ages, once


def test_an_administered_entry_takes_the_time_it_is_given(fdb):
    assert fdb.add_static(mac(1), "p", now=1500.0).updated == 1500.0
    assert fdb.pop_events()[0].at == 1500.0


def test_a_new_nonzero_ageing_keeps_what_is_still_young(fdb, clock):
    fdb.learn(mac(1), "p")
    clock.now += 100
    fdb.learn(mac(2), "p")
    fdb.pop_events()
    fdb.set_ageing(150, now=1200.0)                   # mac(1) is 200 s old then, mac(2) 100 s
    assert [e.mac for e in fdb] == [mac(2)] and fdb.ageing == 150.0
    assert fdb.pop_events() == [FdbEvent("age", "xenbr0", mac(1), "p", "", False, 1200.0)]
    fdb.set_ageing(600)
    assert [e.mac for e in fdb] == [mac(2)]


def test_ageing_zero_counts_and_times_what_it_drops(fdb, clock):
    fdb.learn(mac(1), "p")
    fdb.pop_events()
    fdb.set_ageing(0, now=1010.0)
    assert fdb.counters["aged"] == 1
    assert fdb.pop_events() == [FdbEvent("age", "xenbr0", mac(1), "p", "", False, 1010.0)]
    clock.now = 1020.0
    fdb.set_ageing(300)
    fdb.add(mac(2), "p", "dynamic")
    fdb.pop_events()
    fdb.set_ageing(0)
    assert fdb.pop_events()[0].at == 1020.0


def test_age_port_takes_the_time_it_is_given(fdb, clock):
    fdb.learn(mac(1), "a")
    assert fdb.age_port("a", 10.0, now=1009.0) == 0
    assert fdb.age_port("a", 10.0, now=1010.0) == 1
    assert fdb.pop_events()[-1].at == 1010.0


def test_a_station_seen_on_another_port_in_the_same_instant_moves(fdb):
    fdb.learn(mac(1), "a")
    assert fdb.learn(mac(1), "b") is True
    assert fdb.get(mac(1)).port == "b" and fdb.counters["moved"] == 1


def test_an_expired_entry_in_a_vlan_is_learned_afresh_in_that_vlan(fdb, clock):
    fdb.learn(mac(1), "a", vid=9)
    fdb.pop_events()
    assert fdb.learn(mac(1), "b", now=1300.0, vid=9) is True
    assert fdb.get(mac(1), 9).port == "b" and fdb.get(mac(1)) is None
    assert [(e.kind, e.port, e.vid, e.at) for e in fdb.pop_events()] == [
        ("age", "a", 9, 1300.0), ("learn", "b", 9, 1300.0)]


def test_lookup_and_expires_in_take_the_time_they_are_given(fdb, clock):
    fdb.learn(mac(1), "a", vid=3)
    entry = fdb.get(mac(1), 3)
    assert fdb.expires_in(entry, now=1100.0) == 200.0
    assert fdb.lookup(mac(1), now=1299.0, vid=3) is entry
    assert fdb.lookup(mac(1), now=1300.0, vid=3) is None
    assert fdb.pop_events()[-1].at == 1300.0


def test_check_vid_takes_1_to_4094_and_0_only_when_allowed():
    from xenlab.bridge.fdb import check_vid
    assert [check_vid(v) for v in (1, 4094)] == [1, 4094]
    assert check_vid(0, allow_zero=True) == 0
    for bad in (0, 4095, -1):
        with pytest.raises(XenError) as err:
            check_vid(bad)
        assert err.value.errno == errno.EINVAL and err.value.message == f"VLAN id {bad!r} is outside 1..4094"


def test_an_administered_entry_is_used_and_updated_when_added(fdb):
    entry = fdb.add(mac(1), "p", now=1234.0)
    assert (entry.updated, entry.used) == (1234.0, 1234.0)


def test_administered_entry_refusals_word_for_word(fdb):
    with pytest.raises(XenError) as err:
        fdb.add(mac(1), "p", "local")
    assert err.value.message == "FDB entry state 'local': use one of permanent, static, dynamic"
    with pytest.raises(XenError) as err:
        fdb.add(mac(1), "p", "permanent", sticky=True)
    assert err.value.message == "a permanent entry cannot be sticky"


def test_a_topology_change_hold_ages_entries_at_the_time_given(fdb, clock):
    fdb.learn(mac(1), "p")
    fdb.pop_events()
    fdb.set_hold(15.0, now=1020.0)                 # the clock still says 1000
    assert fdb.get(mac(1)) is None
    assert fdb.pop_events() == [FdbEvent("age", "xenbr0", mac(1), "p", "", False, 1020.0)]


def test_conflicts_moves_and_full_tables_are_counted_each_time(clock):
    fdb = Fdb("br", max_learned=1, clock=clock)
    fdb.add(mac(1), "a", "static", sticky=True)
    fdb.add(mac(2), "a", "permanent")
    fdb.learn(mac(3), "a")
    for port in ("b", "c"):
        fdb.learn(mac(1), port)
        fdb.learn(mac(2), port)
        fdb.learn(mac(3), port)
        fdb.learn(mac(4), port)
    assert {k: fdb.counters[k] for k in ("sticky_conflict", "local_conflict", "moved", "fdb_full")} == {
        "sticky_conflict": 2, "local_conflict": 2, "moved": 2, "fdb_full": 2}


def test_a_learned_entry_is_used_and_updated_when_learned(fdb):
    fdb.learn(mac(1), "p", now=1234.0)
    assert (fdb.get(mac(1)).updated, fdb.get(mac(1)).used) == (1234.0, 1234.0)


def test_learning_at_a_given_time_first_ages_what_is_due_by_then(fdb):
    fdb.learn(mac(1), "p")                         # the clock says 1000
    fdb.learn(mac(2), "p", now=1300.0)
    assert [e.mac for e in fdb] == [mac(2)] and fdb.counters["aged"] == 1


def test_learn_source_is_learn_without_the_address_check(fdb):
    assert fdb.learn_source(mac(1), "p", 1000.0) is True
    assert fdb.get(mac(1)).vid == 0 and fdb.get(mac(1), 1) is None


def test_flush_takes_the_time_it_is_given(fdb, clock):
    fdb.learn(mac(1), "p")
    fdb.pop_events()
    assert fdb.flush(now=1050.0) == 1
    assert fdb.pop_events() == [FdbEvent("flush", "xenbr0", mac(1), "p", "", False, 1050.0)]
    fdb.learn(mac(1), "p")
    fdb.pop_events()
    clock.now = 1060.0
    fdb.flush()
    assert fdb.pop_events()[0].at == 1060.0


def test_limit_and_policy_refusals_word_for_word(clock):
    with pytest.raises(XenError) as err:
        Fdb(max_learned=0, clock=clock)
    assert err.value.message == "the FDB limit must be a whole number of entries, at least 1, not 0"
    with pytest.raises(XenError) as err:
        Fdb(policy="lru", clock=clock)
    assert err.value.message == "FDB policy 'lru': use linux or ovs"
    assert Fdb(clock=clock).bridge == "xenbr0"
