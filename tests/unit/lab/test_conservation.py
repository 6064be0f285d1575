"""Hop-by-hop frame conservation (xenlab.lab.conservation), on made-up counters."""
from types import SimpleNamespace as NS

from xenlab.lab.conservation import (BridgeTotals, Counts, PathCounters, bridge_hops, check,
                                     format_report, lab_paths, path_hops)


def balanced(up: int = 100, down: int = 80) -> PathCounters:
    """Guest sends `up` (2 spoofed), the bridge sends `down` (5 ring-full)."""
    return PathCounters(
        "vif3.0", "web",
        eth=Counts(tx=up, rx=down - 5, drops={"tx_ring_full": 9, "stack_not_for_us": 4}),
        backend=Counts(rx=up - 2, tx=down - 5, drops={"spoofed_ip": 2, "rx_ring_full": 5}),
        veth=Counts(tx=up - 2, rx=down),
        link=Counts(rx=up - 2, tx=down),
        port=Counts(rx=up - 2, tx=down))


def by_name(hops):
    return {h.name: h for h in hops}


def test_a_balanced_path_is_all_ok():
    hops = path_hops(balanced())
    assert len(hops) == 8 and all(h.ok and h.checked for h in hops)
    assert by_name(hops)["up   ring: eth tx -> vif"].drops == {"spoofed_ip": 2}
    # The guest's own tx drops (before the ring) and its stack's are no hop of the path.
    assert by_name(hops)["down ring: vif -> eth rx"].drops == {}


def test_a_frame_lost_between_two_counters_is_unaccounted_at_that_hop():
    p = balanced()
    p.link.rx -= 3
    p.port.rx -= 3
    hops = by_name(path_hops(p))
    assert hops["up   veth -> bridge link"].unaccounted == 3
    assert [h for h in hops.values() if not h.ok] == [hops["up   veth -> bridge link"]]
    assert "UNACCOUNTED 3" in format_report(list(hops.values()), [p])


def test_drops_on_the_far_side_account_for_frames():
    p = balanced()
    p.veth.tx -= 4                       # the link was down for 4 frames
    p.veth.drops["link_down"] += 4
    p.link.rx -= 4
    p.port.rx -= 4
    assert all(h.ok for h in path_hops(p))


def test_a_vif_with_copy_errors_is_checked_both_ways_at_once():
    p = balanced()
    p.backend.rx -= 1
    p.backend.tx -= 1
    p.eth.rx -= 1
    p.backend.drops["grant_copy_error"] = 2
    hops = path_hops(p)
    merged = by_name(hops)["both ring tx + veth -> vif"]
    assert merged.ok and merged.sent == 100 + 80
    assert "up   ring: eth tx -> vif" not in by_name(hops)


def test_a_crashed_guest_leaves_its_ring_hops_unchecked_and_the_rest_checked():
    p = balanced()
    p.eth, p.eth_lost = None, "d3 crashed"
    hops = path_hops(p)
    unchecked = [h.name for h in hops if not h.checked]
    assert unchecked == ["up   ring: eth tx -> vif", "down ring: vif -> eth rx"]
    assert all(h.ok for h in hops)
    assert "not checked: d3 crashed" in format_report(hops)


def test_the_bridge_balances_its_ports():
    b = BridgeTotals("xenbr0", {"rx": 10, "forwarded": 7, "tx": 14}, {"no_egress": 3},
                     port_rx=10, port_tx=14, port_drops={"no_egress": 3})
    assert all(h.ok for h in bridge_hops(b))
    b = BridgeTotals("xenbr0", {"rx": 10, "forwarded": 7, "tx": 14}, {"no_egress": 2},
                     port_rx=10, port_tx=13, port_drops={"no_egress": 2})
    assert [h.name for h in bridge_hops(b) if not h.ok] == ["bridge: forwarded or dropped",
                                                           "bridge tx -> ports tx"]


def stats(name, tx, rx, **drops):
    return NS(name=name, tx_packets=tx, rx_packets=rx, drops=drops)


def port(name, rx, tx, link_rx, link_tx, **link_drops):
    link = {"rx_packets": link_rx, "tx_packets": link_tx}
    link.update({f"drop_{k}": v for k, v in link_drops.items()})
    return NS(name=name, rx_packets=rx, tx_packets=tx, drops={}, link=link)


def test_lab_paths_sum_every_generation_of_a_path():
    # vif3.0 was detached once: a gone generation and a live one, everywhere.
    dom0 = [stats("vif3.0", 5, 7), stats("veth3.0", 7, 5),
            stats("vif3.0", 10, 20), stats("veth3.0", 20, 10)]
    bridge = NS(name="xenbr0", counters={"rx": 27, "forwarded": 27, "tx": 15}, drops={},
                ports=[port("vif3.0", 20, 10, 20, 10)], gone=[port("vif3.0", 7, 5, 7, 5)])
    guests = {3: [stats("eth0", 27, 15)]}
    paths, totals = lab_paths(dom0, bridge, guests, names={3: "web"})
    assert [p.vif for p in paths] == ["vif3.0"] and paths[0].domain == "web"
    assert paths[0].port.rx == 27 and paths[0].backend.tx == 15
    hops = check(paths, [totals])
    assert all(h.ok for h in hops), format_report(hops, paths)
    crashed, _ = lab_paths(dom0, bridge, {3: None}, lost={3: "d3 crashed"})
    assert crashed[0].eth is None and crashed[0].eth_lost == "d3 crashed"


def test_a_netem_on_the_vif_its_copies_drops_and_backlog_balance_the_down_hop():
    """A root qdisc on netback's vif (toward the guest): 80 frames from the
    veth, 6 lost, 3 duplicated, 2 still delayed: 75 go on to the ring."""
    p = balanced()
    p.backend.drops.update({"netem_loss": 6})
    p.backend.added, p.backend.queued = 3, 2
    p.backend.tx -= 6 - 3 + 2
    p.eth.rx -= 6 - 3 + 2
    hops = by_name(path_hops(p))
    down = hops["down veth -> vif"]
    assert all(h.ok for h in hops.values()), format_report(list(hops.values()), [p])
    assert (down.added, down.queued, down.drops) == (3, 2, {"netem_loss": 6, "rx_ring_full": 5})
    assert "qdisc duplicated 3, queued 2" in format_report([down])
    # Without the qdisc's counts the same figures would not balance.
    p.backend.added = 0
    assert by_name(path_hops(p))["down veth -> vif"].unaccounted == -3


def test_netem_on_the_veth_and_the_bridge_link_from_the_wire():
    """The counters as the agent (InterfaceStats.qdisc) and the bridge (the
    link map's qdisc_* keys) report them."""
    dom0 = [NS(name="vif3.0", tx_packets=10, rx_packets=12, drops={}, qdisc={}),
            NS(name="veth3.0", tx_packets=14, rx_packets=10, drops={"netem_limit": 1},
               qdisc={"duplicated": 4, "backlog": 1})]
    link = {"tx_packets": 10, "rx_packets": 14, "drop_netem_loss": 2, "qdisc_duplicated": 1,
            "qdisc_backlog": 1}
    port = NS(name="vif3.0", tx_packets=12, rx_packets=14, drops={}, link=link)
    bridge = NS(name="xenbr0", ports=[port], gone=[], counters={}, drops={})
    guest = [NS(name="eth0", tx_packets=12, rx_packets=10, drops={})]
    [path], _ = lab_paths(dom0, bridge, {3: guest})
    hops = by_name(path_hops(path))
    assert hops["up   vif -> veth"].ok and hops["up   vif -> veth"].added == 4
    assert hops["down port -> bridge link"].ok and hops["down port -> bridge link"].queued == 1
    assert all(h.ok for h in hops.values()), format_report(list(hops.values()), [path])
