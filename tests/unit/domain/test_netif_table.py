"""The kernel's tables of interfaces (netfront's and netback's): whoever
follows them hears of each interface once when it comes and once when it
goes, and a stale device never takes its successor's name away."""
from __future__ import annotations

from types import SimpleNamespace

from xenlab.domain.kernel import NetifTable


def test_followers_hear_each_coming_and_going_once():
    heard = []
    table = NetifTable(lambda name, dev: heard.append((name, dev)))
    eth0 = SimpleNamespace(name="eth0")
    table.up(eth0)
    table.up(eth0)
    assert table == {"eth0": eth0} and heard == [("eth0", eth0)]
    table.down(eth0)
    table.down(eth0)
    assert table == {} and heard == [("eth0", eth0), ("eth0", None)]


def test_a_stale_device_does_not_take_its_successors_name_away():
    heard = []
    table = NetifTable(lambda name, dev: heard.append((name, dev)))
    old, new = SimpleNamespace(name="vif1.0"), SimpleNamespace(name="vif1.0")
    table.up(old)
    table.up(new)
    table.down(old)
    assert table == {"vif1.0": new}
    assert heard == [("vif1.0", old), ("vif1.0", new)]
