"""The FDB alone: learning, moving, ageing on a test clock, static entries,
the size limit and its eviction rule, flush and events."""
import errno

import pytest

from xenlab.bridge.fdb import DEFAULT_AGEING, DEFAULT_MAX_LEARNED, Fdb
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
