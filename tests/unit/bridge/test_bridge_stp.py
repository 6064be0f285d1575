"""802.1D STP on the pure core, time driven by hand: BPDUs byte for byte as
Linux sends them, root election, port roles and states through listening
and learning, a loop of three bridges converging with one port blocked and
no storm, a broken link healed through the blocked port, topology-change
ageing."""
from __future__ import annotations

import collections
import errno
import shutil
import subprocess

import pytest

from xenlab.bridge.core import Bridge
from xenlab.bridge.stp import ConfigBpdu, TcnBpdu, decode, encode_config, encode_tcn
from xenlab.net.capture import PcapWriter
from xenlab.testing import ManualClock
from xenlab.xen.errors import XenError

BCAST = b"\xff" * 6
# What Linux 6.18 sent (captured from a veth port of a kernel bridge,
# stp_state 1, address 02:00:00:00:00:aa, hello_time 1 s, forward_delay 2 s,
# during a topology change).
KERNEL_CONFIG_BPDU = bytes.fromhex(
    "0180c200000016d4c825ae5d0026424203000000000180000200000000aa0000000080000200000000aa"
    "80010000140001000200")


def test_config_bpdu_is_byte_for_byte_linuxs():
    bpdu = ConfigBpdu(bytes.fromhex("80000200000000aa"), 0, bytes.fromhex("80000200000000aa"), 0x8001,
                      0.0, 20.0, 1.0, 2.0, topology_change=True)
    assert encode_config(bpdu, bytes.fromhex("16d4c825ae5d")) == KERNEL_CONFIG_BPDU
    assert decode(KERNEL_CONFIG_BPDU) == bpdu


def test_tcn_bpdu_and_what_is_not_a_bpdu():
    tcn = encode_tcn(bytes.fromhex("020000000001"))
    assert tcn == bytes.fromhex("0180c2000000" "020000000001" "0007" "424203" "00000080")
    assert isinstance(decode(tcn), TcnBpdu)
    assert decode(KERNEL_CONFIG_BPDU[:30]) is None                         # cut short
    assert decode(KERNEL_CONFIG_BPDU[:14] + b"\xaa\xaa\x03" + KERNEL_CONFIG_BPDU[17:]) is None  # SNAP
    assert decode(KERNEL_CONFIG_BPDU[:17] + b"\x00\x00\x02" + KERNEL_CONFIG_BPDU[20:]) is None  # RSTP
    old = bytearray(KERNEL_CONFIG_BPDU)
    old[44:46] = (21 * 256).to_bytes(2, "big")                             # message age > max age
    assert decode(bytes(old)) is None


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_decodes_them_as_stp(tmp_path):
    path = tmp_path / "bpdu.pcap"
    with open(path, "wb") as f:
        writer = PcapWriter(f)
        writer.write(KERNEL_CONFIG_BPDU, 1.0)
        writer.write(encode_tcn(bytes.fromhex("020000000001")), 2.0)
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "stp.type", "-e", "stp.root.hw",
                          "-e", "stp.port", "-e", "stp.hello", "-e", "stp.forward", "-e", "stp.flags.tc"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert rows[0][:6] == ["0x00", "02:00:00:00:00:aa", "0x8001", "1", "2", "1"]
    assert rows[1][0] == "0x80"


# -- a network of cores ------------------------------------------------------------------------
class Net:
    """Bridge cores joined by wires, on one clock; hosts are ports with no peer."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.bridges: dict[str, Bridge] = {}
        self.wires: dict[tuple[str, str], tuple[str, str]] = {}
        self.received: collections.Counter = collections.Counter()   # (bridge, host port) -> frames
        self.delivered = 0

    def bridge(self, name: str, mac_byte: int, **stp) -> Bridge:
        br = Bridge(name, clock=self.clock, mac=bytes([2, 0, 0, 0, 0, mac_byte]))
        br.set_stp(True, hello_time=2, forward_delay=4, max_age=10, **stp)
        self.bridges[name] = br
        return br

    def wire(self, a: str, pa: str, b: str, pb: str) -> None:
        for br, port in ((a, pa), (b, pb)):
            self.bridges[br].add_port(port, bytes([2, 0xAA, 0, 0, len(self.wires), 1]))
        self.wires[(a, pa)] = (b, pb)
        self.wires[(b, pb)] = (a, pa)

    def cut(self, a: str, pa: str) -> None:
        b, pb = self.wires[(a, pa)]
        self.bridges[a].set_carrier(pa, False)
        self.bridges[b].set_carrier(pb, False)

    def send(self, bridge: str, port: str, frame: bytes) -> None:
        self._deliver([(bridge, port, frame)])

    def _deliver(self, queue: list) -> None:
        while queue:
            bridge, port, frame = queue.pop(0)
            self.delivered += 1
            assert self.delivered < 10_000, "a frame storm"
            out = self.bridges[bridge].forward_batch(port, [frame])
            queue += self._outputs(bridge, out)
            queue += self._outputs(bridge, self.bridges[bridge].pop_transmit())

    def _outputs(self, bridge: str, out: dict[str, list[bytes]]) -> list:
        queue = []
        for port, frames in out.items():
            peer = self.wires.get((bridge, port))
            if peer is None:
                self.received[(bridge, port)] += len(frames)
            elif self.bridges[peer[0]].ports[peer[1]].carrier:
                queue += [(peer[0], peer[1], f) for f in frames]
        return queue

    def run(self, seconds: float) -> None:
        """Advance the clock timer by timer, delivering every BPDU sent."""
        end = self.clock.now + seconds
        while True:
            self._deliver([x for name, br in self.bridges.items()
                           for x in self._outputs(name, br.pop_transmit())])
            due = [d for d in (br.next_stp_deadline() for br in self.bridges.values()) if d is not None]
            if not due or min(due) > end:
                break
            self.clock.now = max(self.clock.now, min(due))
            for br in self.bridges.values():
                br.stp_tick()
        self.clock.now = end

    def states(self) -> dict[tuple[str, str], str]:
        return {(n, p.name): p.state for n, br in self.bridges.items() for p in br.ports.values()}


@pytest.fixture
def net():
    return Net(ManualClock(1000.0))


def test_a_lone_bridge_is_root_and_its_ports_walk_to_forwarding(net):
    br = net.bridge("br0", 1)
    br.add_port("h1", bytes.fromhex("020000000101"))
    assert br.ports["h1"].state == "listening"
    net.run(3.9)
    assert br.ports["h1"].state == "listening"
    net.run(0.2)
    assert br.ports["h1"].state == "learning"
    br.forward("h1", b"\xff" * 6 + bytes.fromhex("020000000999") + b"\x08\x06" + bytes(46))
    assert br.fdb.get(bytes.fromhex("020000000999")) is not None        # learning learns...
    assert br.drops["port_learning"] == 1                               # ...and forwards nothing
    net.run(4)
    assert br.ports["h1"].state == "forwarding"
    assert br.stp.is_root and br.stp.port_role(br.ports["h1"]) == "designated"
    with pytest.raises(XenError) as err:
        br.set_port_flags("h1", state="blocking")
    assert err.value.errno == errno.EBUSY


def test_hello_bpdus_every_hello_time_on_designated_ports(net):
    br = net.bridge("br0", 1)
    br.add_port("h1")
    sent = []
    for _ in range(5):
        net.clock.now += 2
        br.stp_tick()
        sent += [decode(f) for f in br.pop_transmit().get("h1", [])]
    assert len(sent) == 5 and all(b.root == br.stp.bridge_id and b.message_age == 0 for b in sent)


def triangle(net):
    """b1 (lowest id: the root), b2, b3 joined in a loop, a host port on each."""
    for name, byte in (("b1", 1), ("b2", 2), ("b3", 3)):
        net.bridge(name, byte).add_port("host")
    net.wire("b1", "to-b2", "b2", "to-b1")
    net.wire("b2", "to-b3", "b3", "to-b2")
    net.wire("b3", "to-b1", "b1", "to-b3")
    net.run(30)


def test_a_triangle_converges_with_one_port_blocking_and_no_storm(net):
    triangle(net)
    states = net.states()
    blocked = [k for k, v in states.items() if v == "blocking"]
    assert blocked == [("b3", "to-b2")]                 # b3's costlier way to the root
    assert all(v == "forwarding" for k, v in states.items() if k not in blocked)
    roots = {n: br.stp.designated_root for n, br in net.bridges.items()}
    assert len(set(roots.values())) == 1 and net.bridges["b1"].stp.is_root
    assert net.bridges["b2"].stp.port_role(net.bridges["b2"].ports["to-b1"]) == "root"
    assert net.bridges["b3"].stp.port_role(net.bridges["b3"].ports["to-b2"]) == "alternate"
    # A broadcast from b2's host reaches the two other hosts once each, and stops.
    net.received.clear()
    before = net.delivered
    net.send("b2", "host", BCAST + bytes.fromhex("020000002222") + b"\x08\x06" + bytes(46))
    assert net.received == {("b1", "host"): 1, ("b3", "host"): 1}
    assert net.delivered - before < 10


def test_a_cut_link_heals_through_the_blocked_port(net):
    triangle(net)
    net.cut("b2", "to-b3")                                   # b3 loses its designated bridge b2
    net.run(30)
    states = net.states()
    assert states[("b3", "to-b1")] == "forwarding" and states[("b2", "to-b3")] == "disabled"
    net.received.clear()
    net.send("b3", "host", BCAST + bytes.fromhex("020000003333") + b"\x08\x06" + bytes(46))
    assert net.received == {("b1", "host"): 1, ("b2", "host"): 1}


def test_a_lost_root_is_replaced_after_max_age(net):
    triangle(net)
    net.cut("b1", "to-b2")
    net.cut("b1", "to-b3")
    net.run(60)
    assert net.bridges["b2"].stp.is_root                     # the next lowest id
    assert net.bridges["b3"].stp.root_port == net.bridges["b3"].ports["to-b2"].port_no
    assert net.states()[("b3", "to-b2")] == "forwarding"


def test_a_topology_change_ages_the_fdb_after_forward_delay(net):
    triangle(net)
    b3 = net.bridges["b3"]
    net.send("b1", "host", BCAST + bytes.fromhex("020000001111") + b"\x08\x06" + bytes(46))
    assert b3.fdb.get(bytes.fromhex("020000001111")) is not None
    net.run(net.bridges["b1"].stp.bridge_max_age + 10)       # any earlier change is over
    assert not b3.stp.topology_change
    b3.add_port("host2")                                      # a new port: listening, learning...
    net.run(8 + 1 + 0.5)        # ...forwarding after 2 x forward_delay: a topology change; the
                                # root's answer may wait out a hold time (1 s) on its port
    assert b3.stp.counters["tcn_sent"] >= 1
    assert net.bridges["b1"].stp.topology_change              # the root heard the TCN
    assert b3.stp.topology_change                             # and told everyone (TC flag)
    assert b3.fdb.hold_time == 4                              # forward_delay, not 300 s
    net.run(4)
    assert b3.fdb.get(bytes.fromhex("020000001111")) is None  # aged in forward_delay


def test_port_cost_and_priority_steer_the_tree(net):
    triangle(net)
    b3 = net.bridges["b3"]
    b3.set_port_flags("to-b1", cost=100)                      # the direct way to the root is dear
    net.run(30)
    states = net.states()
    assert states[("b3", "to-b2")] == "forwarding" and b3.stp.port_role(b3.ports["to-b2"]) == "root"
    assert "blocking" in (states[("b3", "to-b1")], states[("b1", "to-b3")])


def test_stp_off_again_leaves_every_port_forwarding(net):
    triangle(net)
    for br in net.bridges.values():
        br.set_stp(False)
    assert set(net.states().values()) == {"forwarding"}
    assert all(br.next_stp_deadline() is None for br in net.bridges.values())


def test_bad_timers_are_refused():
    br = Bridge("br0", clock=ManualClock(1000.0))
    with pytest.raises(XenError) as err:
        br.set_stp(True, forward_delay=1)
    assert err.value.errno == errno.ERANGE and br.stp is None


# -- the codec and the bounds, on both sides -------------------------------------------------
from xenlab.bridge.stp import check_time, format_bridge_id, make_port_id  # noqa: E402


def test_decode_takes_exactly_the_35_byte_body_and_a_message_age_equal_to_max_age():
    assert decode(KERNEL_CONFIG_BPDU[:17 + 35]) is not None
    assert decode(KERNEL_CONFIG_BPDU[:17 + 34]) is None
    aged = bytearray(KERNEL_CONFIG_BPDU)
    aged[44:46] = (20 * 256).to_bytes(2, "big")              # message age == max age: still taken
    assert decode(bytes(aged)).message_age == 20.0
    assert decode(KERNEL_CONFIG_BPDU[:14 + 3 + 4]) is None   # a config type with no body
    assert isinstance(decode(encode_tcn(bytes(6))[:14 + 3 + 4]), TcnBpdu)
    assert decode(encode_tcn(bytes(6))[:14 + 3 + 3]) is None


@pytest.mark.parametrize("length, taken", [(0x05FF, True), (0x0600, False), (0x0800, False)])
def test_decode_takes_an_8023_length_but_not_an_ethertype(length, taken):
    frame = bytearray(KERNEL_CONFIG_BPDU)
    frame[12:14] = length.to_bytes(2, "big")
    assert (decode(bytes(frame)) is not None) is taken


@pytest.mark.parametrize("offset, value", [(17, 1), (18, 1), (19, 1), (20, 0x01), (20, 0x7F)])
def test_decode_refuses_other_protocols_versions_and_types(offset, value):
    frame = bytearray(KERNEL_CONFIG_BPDU)
    frame[offset] = value
    assert decode(bytes(frame)) is None


def test_the_flags_and_times_go_both_ways():
    for tc, tca in ((False, False), (True, False), (False, True), (True, True)):
        bpdu = ConfigBpdu(bytes(8), 7, bytes(range(8)), 0x8002, 1.5, 20.0, 2.0, 15.0, tc, tca)
        frame = encode_config(bpdu, bytes(6))
        assert frame[21] == (0x01 if tc else 0) | (0x80 if tca else 0)
        assert decode(frame) == bpdu
    big = ConfigBpdu(bytes(8), 0, bytes(8), 0, 0.0, 300.0, 0.001, 255.99, False, False)
    frame = encode_config(big, bytes(6))
    assert frame[-6:] == b"\xff\xff" + b"\x00\x00" + (65533).to_bytes(2, "big")   # capped, truncated


def test_bridge_and_port_ids_as_linux_makes_and_prints_them():
    assert format_bridge_id(bytes.fromhex("80000200000000aa")) == "8000.2:0:0:0:0:aa"
    assert format_bridge_id(bytes.fromhex("00010a0b0c0d0e0f")) == "0001.a:b:c:d:e:f"
    assert make_port_id(0x20, 1) == 0x8001 and make_port_id(63, 1023) == 0xFFFF
    assert make_port_id(1, 1024) == 0x400                    # the port number keeps 10 bits


@pytest.mark.parametrize("name, bounds", [("hello_time", (1.0, 10.0)), ("max_age", (6.0, 40.0)),
                                          ("forward_delay", (2.0, 30.0))])
def test_timers_are_taken_at_their_bounds_and_refused_past_them(name, bounds):
    low, high = bounds
    assert check_time(name, low, bounds) == low and check_time(name, high, bounds) == high
    for bad in (low - 0.01, high + 0.01):
        with pytest.raises(XenError) as err:
            check_time(name, bad, bounds)
        assert err.value.errno == errno.ERANGE
        assert err.value.message == (f"{name} {bad:g} s is outside {low:g}..{high:g} s "
                                     f"(802.1D's bounds, as Linux)")
    br = Bridge("br0", clock=ManualClock(1000.0))
    br.set_stp(True, **{name: low})
    assert getattr(br.stp, name) == low and getattr(br.stp, "bridge_" + name) == low
    br.set_stp(True, **{name: high})                          # STP on already: the timers change
    assert getattr(br.stp, name) == high and getattr(br.stp, "bridge_" + name) == high
    with pytest.raises(XenError):
        br.set_stp(True, **{name: high + 1})
    assert getattr(br.stp, name) == high


def test_a_lone_bridges_bpdu_carries_its_own_values(net):
    br = net.bridge("br0", 7)
    br.add_port("p", bytes.fromhex("02000000aa01"))
    br.set_port_flags("p", priority=3)
    net.clock.now += 2
    br.stp_tick()
    (frame,) = br.pop_transmit()["p"]
    assert frame[6:12] == bytes.fromhex("02000000aa01")      # from the port's own address
    bpdu = decode(frame)
    own = bytes.fromhex("8000020000000007")
    assert bpdu == ConfigBpdu(own, 0, own, make_port_id(3, 1), 0.0, 10.0, 2.0, 4.0, False, False)
    assert br.stp.counters["config_sent"] >= 1
    assert br.ports["p"].counters["tx_bpdu"] == 1 and br.counters["bpdu_tx"] >= 1


def test_a_port_without_an_address_sends_from_the_bridges(net):
    br = net.bridge("br0", 7)
    br.add_port("p")
    net.clock.now += 2
    br.stp_tick()
    assert br.pop_transmit()["p"][0][6:12] == bytes.fromhex("020000000007")


def test_hold_time_delays_a_second_bpdu_and_sends_it_when_it_ends(net):
    br = net.bridge("br0", 1)
    br.add_port("p")
    br.pop_transmit()
    other = ConfigBpdu(bytes.fromhex("9000020000000009"), 0, bytes.fromhex("9000020000000009"),
                       0x8001, 0.0, 20.0, 2.0, 15.0)
    frame = encode_config(other, bytes.fromhex("020000000009"))
    br.stp.receive(br.ports["p"], frame)          # inferior: the designated port replies at once
    assert len(br.pop_transmit().get("p", [])) == 1
    net.clock.now += 0.5
    br.stp.now = net.clock.now
    br.stp.receive(br.ports["p"], frame)          # within the hold time: pending
    assert br.pop_transmit() == {} and br.stp.info(br.ports["p"]).config_pending
    net.clock.now += 0.5
    br.stp_tick()
    assert len(br.pop_transmit().get("p", [])) == 1
    assert not br.stp.info(br.ports["p"]).config_pending
    assert br.stp.counters["config_received"] == 2


def test_bad_bpdus_are_counted_and_a_disabled_port_hears_nothing(net):
    br = net.bridge("br0", 1)
    br.add_port("p")
    br.add_port("q")
    br.set_carrier("q", False)
    br.stp.receive(br.ports["p"], KERNEL_CONFIG_BPDU[:30])
    br.stp.receive(br.ports["q"], KERNEL_CONFIG_BPDU)
    assert br.stp.counters["bad_bpdu"] == 1 and br.stp.counters["config_received"] == 0
    assert br.stp.port_role(br.ports["q"]) == "disabled"
    br.forward("p", KERNEL_CONFIG_BPDU)
    assert br.drops["bpdu"] == 1 and br.stp.counters["config_received"] == 1


def test_a_superior_bpdu_makes_the_port_root_and_takes_its_times(net):
    br = net.bridge("br0", 5)
    br.add_port("p")
    br.add_port("q")
    root = bytes.fromhex("1000020000000001")
    bpdu = ConfigBpdu(root, 4, bytes.fromhex("2000020000000002"), 0x8003, 1.0, 12.0, 3.0, 6.0)
    br.stp.receive(br.ports["p"], encode_config(bpdu, bytes.fromhex("020000000002")))
    stp = br.stp
    assert not stp.is_root and stp.root_port == br.ports["p"].port_no
    assert (stp.designated_root, stp.root_path_cost) == (root, 4 + 2)
    assert (stp.max_age, stp.hello_time, stp.forward_delay) == (12.0, 3.0, 6.0)
    assert (stp.bridge_max_age, stp.bridge_hello_time, stp.bridge_forward_delay) == (10.0, 2.0, 4.0)
    assert stp.port_role(br.ports["p"]) == "root" and stp.port_role(br.ports["q"]) == "designated"
    info = stp.info(br.ports["p"])
    assert info.message_age_timer == net.clock.now + 11.0
    assert info.designated_age == net.clock.now - 1.0
    stp.set_timers(hello_time=1)                  # not the root: its own values wait
    assert stp.hello_time == 3.0 and stp.bridge_hello_time == 1.0
    # What q forwards on behalf of the root: one hop older, our cost, our id.
    net.clock.now += 1.5                          # past q's hold time
    br.stp_tick()
    br.pop_transmit()
    stp.receive(br.ports["q"], encode_config(
        ConfigBpdu(root, 50, bytes.fromhex("f000020000000009"), 0x8001, 0.0, 20.0, 2.0, 15.0),
        bytes.fromhex("020000000009")))
    (reply,) = br.pop_transmit()["q"]
    got = decode(reply)
    assert (got.root, got.root_path_cost, got.bridge_id) == (root, 6, stp.bridge_id)
    assert got.message_age == pytest.approx(1.0 + 1.5 + 1 / 256, abs=1 / 256)
    assert (got.max_age, got.hello_time, got.forward_delay) == (12.0, 3.0, 6.0)


def test_the_root_answers_a_tcn_with_an_ack_and_a_topology_change(net):
    br = net.bridge("br0", 1)
    br.add_port("p")
    net.run(10)                                   # p forwarding; the change that made is over
    net.run(br.stp.bridge_max_age + br.stp.bridge_forward_delay)
    stp = br.stp
    assert not stp.topology_change and stp.topology_change_timer is None
    changes = stp.counters["topology_changes"]
    br.pop_transmit()
    net.clock.now += 1.5
    br.stp_tick()
    br.pop_transmit()
    stp.receive(br.ports["p"], encode_tcn(bytes.fromhex("020000000009")))
    assert stp.counters["tcn_received"] == 1 and stp.counters["topology_changes"] == changes + 1
    assert stp.topology_change and stp.topology_change_timer == net.clock.now + 4.0 + 10.0
    assert br.fdb.hold_time == 4.0
    (reply,) = br.pop_transmit()["p"]
    got = decode(reply)
    assert got.topology_change and got.topology_change_ack
    assert not stp.info(br.ports["p"]).topology_change_ack          # sent once
    net.run(14.5)
    assert not stp.topology_change and br.fdb.hold_time == 300.0


def test_a_tcn_on_a_port_that_is_not_designated_is_ignored(net):
    br = net.bridge("br0", 5)
    br.add_port("p")
    root = bytes.fromhex("1000020000000001")
    br.stp.receive(br.ports["p"], encode_config(
        ConfigBpdu(root, 0, root, 0x8001, 0.0, 20.0, 2.0, 15.0), bytes.fromhex("020000000001")))
    br.pop_transmit()
    changes = br.stp.counters["topology_changes"]
    br.stp.receive(br.ports["p"], encode_tcn(bytes.fromhex("020000000001")))
    assert br.stp.counters["tcn_received"] == 1 and br.stp.counters["topology_changes"] == changes
    assert br.pop_transmit() == {}


def test_a_bridge_that_stops_being_root_sends_a_tcn_toward_the_new_root(net):
    br = net.bridge("br0", 5)
    br.add_port("p")
    br.add_port("q")
    net.run(10)                                   # both forwarding: changes detected, as root
    assert br.stp.topology_change_detected
    br.pop_transmit()
    root = bytes.fromhex("1000020000000001")
    br.stp.receive(br.ports["p"], encode_config(
        ConfigBpdu(root, 0, root, 0x8001, 0.0, 20.0, 2.0, 15.0), bytes.fromhex("020000000001")))
    assert br.stp.hello_timer is None and br.stp.topology_change_timer is None
    assert br.stp.tcn_timer == net.clock.now + br.stp.bridge_hello_time
    out = br.pop_transmit()
    assert isinstance(decode(out["p"][0]), TcnBpdu) and br.stp.counters["tcn_sent"] == 1
    net.clock.now += 2
    br.stp_tick()                                 # no ack yet: the TCN again, every hello time
    assert [type(decode(f)) for f in br.pop_transmit()["p"]] == [TcnBpdu]
    br.stp.receive(br.ports["p"], encode_config(
        ConfigBpdu(root, 0, root, 0x8001, 0.0, 20.0, 2.0, 15.0, True, True), bytes.fromhex("020000000001")))
    assert br.stp.tcn_timer is None and not br.stp.topology_change_detected
    assert br.stp.topology_change                 # the root's TC flag, taken on


def test_a_lower_priority_makes_the_bridge_root_again(net):
    br = net.bridge("br0", 5)
    br.add_port("p")
    root = bytes.fromhex("1000020000000001")
    br.stp.receive(br.ports["p"], encode_config(
        ConfigBpdu(root, 0, root, 0x8001, 0.0, 20.0, 3.0, 15.0), bytes.fromhex("020000000001")))
    assert not br.stp.is_root and br.stp.hello_time == 3.0
    br.set_priority(0x0FFF)
    assert br.stp.bridge_id == bytes.fromhex("0fff020000000005") and br.stp.is_root
    assert br.stp.hello_time == 2.0 and br.stp.root_port == 0
    assert br.stp.port_role(br.ports["p"]) == "designated"
    assert br.stp.hello_timer == net.clock.now + 2.0
    br.set_priority(0x0FFF)                       # the same id: nothing to do
    assert br.stp.is_root


def test_removing_a_port_drops_what_it_had_to_send(net):
    br = net.bridge("br0", 1)
    br.add_port("p")
    br.add_port("q")
    net.clock.now += 2
    br.stp_tick()
    assert {"p", "q"} <= {name for name, _ in br.stp.outbox}
    br.delete_port("p")
    assert {name for name, _ in br.stp.outbox} == {"q"} and "p" not in br.stp.ports
    assert set(br.pop_transmit()) == {"q"}


def test_a_port_priority_changes_its_port_id_in_the_bpdus(net):
    br = net.bridge("br0", 1)
    br.add_port("p")
    br.set_port_flags("p", priority=5)
    info = br.stp.info(br.ports["p"])
    assert info.port_id == info.designated_port == make_port_id(5, 1)
    net.clock.now += 2
    br.stp_tick()
    assert decode(br.pop_transmit()["p"][-1]).port_id == make_port_id(5, 1)


def test_timers_run_in_order_and_none_is_due_without_stp(net):
    br = net.bridge("br0", 1)
    assert br.next_stp_deadline() == net.clock.now + 2.0          # the hello timer
    br.add_port("p")                                              # listening for 4 s
    assert br.next_stp_deadline() == 1002.0
    net.clock.now = 1002.5
    br.stp_tick()                                                 # the hello: a BPDU on p
    assert br.stp.now == 1002.5 and br.stp.hello_timer == 1004.0
    assert br.next_stp_deadline() == 1003.0                       # p's hold time comes first
    assert br.stp.info(br.ports["p"]).forward_delay_timer == 1004.0
    br.set_stp(False)
    assert br.next_stp_deadline() is None and not br.has_transmit and br.pop_transmit() == {}


# -- the protocol's comparisons and timers, one port at a time ---------------------------------
ROOT = bytes.fromhex("1000020000000001")


def bpdu_from(bridge_id: bytes, port_id: int = 0x8001, root: bytes = ROOT, cost: int = 0,
              age: float = 0.0, max_age: float = 20.0, tc: bool = False) -> bytes:
    return encode_config(ConfigBpdu(root, cost, bridge_id, port_id, age, max_age, 2.0, 15.0, tc),
                         bridge_id[2:])


def two_port_bridge(net, mac_byte=5):
    br = net.bridge("br0", mac_byte)
    br.add_port("p")
    br.add_port("q")
    return br


def test_of_two_ways_to_the_root_the_cheaper_is_the_root_port(net):
    br = two_port_bridge(net)
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("2000020000000002"), cost=6))
    br.stp.receive(br.ports["q"], bpdu_from(bytes.fromhex("2000020000000003"), cost=4))
    assert br.stp.root_port == br.ports["q"].port_no and br.stp.root_path_cost == 4 + 2
    # p's neighbour offers the root at 6 too, and its id is lower: p stands by
    assert br.stp.port_role(br.ports["p"]) == "alternate"
    assert br.ports["p"].state == "blocking" and br.ports["q"].state == "listening"


def test_of_equal_costs_the_lower_designated_bridge_wins(net):
    br = two_port_bridge(net)
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("2000020000000003"), cost=5))
    br.stp.receive(br.ports["q"], bpdu_from(bytes.fromhex("2000020000000002"), cost=5))
    assert br.stp.root_port == br.ports["q"].port_no


def test_of_equal_bridges_the_lower_designated_port_wins(net):
    br = two_port_bridge(net)
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["p"], bpdu_from(other, port_id=0x8002, cost=5))
    br.stp.receive(br.ports["q"], bpdu_from(other, port_id=0x8001, cost=5))
    assert br.stp.root_port == br.ports["q"].port_no


def test_of_equal_everything_the_lower_own_port_id_wins(net):
    br = two_port_bridge(net)
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["q"], bpdu_from(other, cost=5))
    br.stp.receive(br.ports["p"], bpdu_from(other, cost=5))
    assert br.stp.root_port == br.ports["p"].port_no            # port 1 before port 2


def test_a_better_root_on_another_port_takes_over(net):
    br = two_port_bridge(net)
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("2000020000000002"), cost=1))
    better = bytes.fromhex("0800020000000001")
    br.stp.receive(br.ports["q"], bpdu_from(bytes.fromhex("3000020000000003"), root=better, cost=50))
    assert br.stp.root_port == br.ports["q"].port_no and br.stp.designated_root == better
    assert br.stp.root_path_cost == 52


def test_a_worse_root_than_ourselves_is_no_root(net):
    br = two_port_bridge(net, mac_byte=1)
    worse = bytes.fromhex("9000020000000009")
    br.stp.receive(br.ports["p"], bpdu_from(worse, root=worse))
    assert br.stp.is_root and br.stp.root_port == 0
    assert br.stp.port_role(br.ports["p"]) == "designated"


def test_the_same_information_again_only_refreshes_the_port(net):
    br = two_port_bridge(net)
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["p"], bpdu_from(other, cost=4))
    first = br.stp.info(br.ports["p"]).message_age_timer
    net.clock.now += 1
    br.stp.now = net.clock.now
    br.stp.receive(br.ports["p"], bpdu_from(other, cost=4))
    assert br.stp.info(br.ports["p"]).message_age_timer == first + 1
    assert br.stp.root_port == br.ports["p"].port_no


def test_a_worse_bpdu_on_the_root_port_is_ignored(net):
    br = two_port_bridge(net)
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("2000020000000002"), cost=4))
    timer = br.stp.info(br.ports["p"]).message_age_timer
    net.clock.now += 1
    br.stp.now = net.clock.now
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("2000020000000002"), cost=9))
    assert br.stp.info(br.ports["p"]).message_age_timer == timer and br.stp.root_path_cost == 6


def test_a_neighbour_lost_after_max_age_makes_the_port_designated_again(net):
    br = two_port_bridge(net)
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("2000020000000002"), age=2.0, max_age=12.0))
    assert not br.stp.is_root
    due = br.stp.info(br.ports["p"]).message_age_timer
    assert due == net.clock.now + 10.0
    net.clock.now = due - 0.001
    br.stp_tick()
    assert not br.stp.is_root
    net.clock.now = due
    br.stp_tick()
    assert br.stp.is_root and br.stp.port_role(br.ports["p"]) == "designated"
    assert br.stp.max_age == br.stp.bridge_max_age == 10.0
    assert br.stp.topology_change                       # becoming root starts a change


def test_a_bpdu_too_old_to_forward_is_not_sent(net):
    br = two_port_bridge(net)
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("2000020000000002"), age=19.0, max_age=20.0))
    net.clock.now += 1.5
    br.stp_tick()
    br.pop_transmit()
    sent = br.stp.counters["config_sent"]
    worse = bytes.fromhex("f000020000000009")
    br.stp.receive(br.ports["q"], bpdu_from(worse, root=worse))        # asks q for a reply
    assert br.stp.counters["config_sent"] == sent
    assert all(isinstance(decode(f), TcnBpdu) for f in br.pop_transmit().get("q", []))


def test_ports_walk_listening_learning_forwarding_one_delay_each(net):
    br = net.bridge("br0", 1)
    br.add_port("p")
    start = net.clock.now
    assert br.ports["p"].state == "listening"
    assert br.stp.info(br.ports["p"]).forward_delay_timer == start + 4.0
    net.run(4.0)
    assert br.ports["p"].state == "learning"
    assert br.stp.info(br.ports["p"]).forward_delay_timer == start + 8.0
    net.run(4.0)
    assert br.ports["p"].state == "forwarding" and br.stp.info(br.ports["p"]).forward_delay_timer is None
    assert br.stp.topology_change and br.stp.counters["topology_changes"] == 1


def test_a_forwarding_port_that_must_block_starts_a_topology_change(net):
    br = two_port_bridge(net)
    net.run(10)
    assert br.ports["p"].state == "forwarding" and br.ports["q"].state == "forwarding"
    net.run(20)
    changes = br.stp.counters["topology_changes"]
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["p"], bpdu_from(other, cost=1))
    br.stp.receive(br.ports["q"], bpdu_from(other, port_id=0x8002, cost=1))   # q: an alternate way
    assert br.ports["q"].state == "blocking" and br.stp.info(br.ports["q"]).forward_delay_timer is None
    assert br.stp.counters["topology_changes"] == changes + 1
    assert br.ports["p"].state == "forwarding"           # the root port stays as it is


def test_disabling_the_root_port_makes_the_bridge_root(net):
    br = two_port_bridge(net)
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("2000020000000002")))
    assert not br.stp.is_root
    br.set_carrier("p", False)
    assert br.stp.is_root and br.stp.root_port == 0 and br.ports["p"].state == "disabled"
    assert br.stp.root_path_cost == 0
    info = br.stp.info(br.ports["p"])
    assert (info.message_age_timer, info.forward_delay_timer, info.hold_timer) == (None, None, None)
    assert br.stp.hello_timer == net.clock.now + 2.0
    br.set_carrier("p", True)
    assert br.ports["p"].state == "listening" and br.stp.port_role(br.ports["p"]) == "designated"


def test_starting_stp_blocks_what_it_must_and_disables_ports_without_link(clock=None):
    clock = ManualClock(1000.0)
    br = Bridge("br0", clock=clock, mac=bytes.fromhex("020000000001"))
    br.add_port("p")
    br.add_port("q")
    br.set_carrier("q", False)
    br.set_stp(True, hello_time=2, forward_delay=4, max_age=10)
    assert br.ports["p"].state == "forwarding" and br.ports["q"].state == "disabled"
    assert br.stp.info(br.ports["p"]).port_id == make_port_id(0x20, 1)
    assert br.stp.hello_timer == clock.now + 2.0
    assert [name for name, _ in br.stp.outbox] == ["p"]


def test_deleting_the_root_port_makes_the_bridge_root_at_that_time(net):
    br = two_port_bridge(net)
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("2000020000000002")))
    net.clock.now += 3
    br.delete_port("p")
    assert br.stp.is_root and br.stp.root_port == 0 and "p" not in br.stp.ports
    assert br.stp.hello_timer == net.clock.now + 2.0


def test_a_new_bridge_id_is_carried_into_what_the_ports_record(net):
    br = two_port_bridge(net, mac_byte=1)
    old = br.stp.bridge_id
    assert all(i.designated_bridge == old == i.designated_root for i in br.stp.ports.values())
    br.set_priority(0x7000)
    new = bytes.fromhex("7000020000000001")
    assert br.stp.bridge_id == br.stp.designated_root == new
    assert all(i.designated_bridge == new == i.designated_root for i in br.stp.ports.values())


def test_a_bridge_that_loses_the_root_to_a_priority_change_stops_its_hello(net):
    br = two_port_bridge(net, mac_byte=5)
    other = bytes.fromhex("7000020000000002")
    br.stp.receive(br.ports["p"], bpdu_from(other, root=other))   # a better root: 7000 < 8000
    assert not br.stp.is_root and br.stp.hello_timer is None
    br.set_priority(0x6000)                       # now ours is better: root again
    assert br.stp.is_root and br.stp.hello_timer == net.clock.now + 2.0
    assert br.stp.port_role(br.ports["p"]) == "designated"


def test_a_lower_port_priority_makes_a_port_designated_on_a_shared_segment(net):
    br = two_port_bridge(net, mac_byte=1)
    # p and q on one segment: q hears p's BPDU, our own, and stands by
    net.clock.now += 2
    br.stp_tick()
    (bpdu_p,) = br.pop_transmit()["p"][:1]
    br.stp.receive(br.ports["q"], bpdu_p)
    assert br.stp.port_role(br.ports["q"]) == "alternate"
    br.set_port_flags("q", priority=1)            # q's id is now below p's
    assert br.stp.port_role(br.ports["q"]) == "designated"
    assert br.stp.info(br.ports["q"]).designated_port == make_port_id(1, 2)


def test_a_root_port_coming_up_is_no_topology_change_without_a_designated_port(net):
    br = net.bridge("br0", 5)
    br.add_port("p")
    br.add_port("down")
    br.set_carrier("down", False)                        # a disabled port designates nothing
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["p"], bpdu_from(other, root=other, max_age=40.0))
    assert br.stp.root_port == br.ports["p"].port_no
    for _ in range(8):                                   # 2 x the root's forward delay (15 s),
                                                         # keeping its information fresh
        net.clock.now += 4
        br.stp_tick()
        br.stp.receive(br.ports["p"], bpdu_from(other, root=other, max_age=40.0))
    assert br.ports["p"].state == "forwarding"
    assert br.stp.counters["tcn_sent"] == 0 and br.stp.counters["topology_changes"] == 0


def test_a_topology_change_is_reported_once_until_acknowledged(net):
    br = two_port_bridge(net)
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["p"], bpdu_from(other, root=other, max_age=40.0))
    br.pop_transmit()
    net.run(31.0)                                        # q: designated, to forwarding: a change
    assert br.stp.topology_change_detected and br.stp.counters["topology_changes"] == 1
    tcns = br.stp.counters["tcn_sent"]
    br.stp._topology_change_detection()                  # another change while unacknowledged
    assert br.stp.counters["tcn_sent"] == tcns and br.stp.counters["topology_changes"] == 1


def test_the_root_sends_no_tcn_when_its_timer_fires(net):
    br = net.bridge("br0", 1)
    br.add_port("p")
    br.stp.tcn_timer = net.clock.now + 1
    net.clock.now += 1
    br.stp_tick()
    assert br.stp.tcn_timer is None and br.stp.counters["tcn_sent"] == 0


def test_a_cheaper_way_to_the_root_makes_us_designated_on_the_other_segment(net):
    br = two_port_bridge(net)
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("2000020000000002"), cost=10))
    br.stp.receive(br.ports["q"], bpdu_from(bytes.fromhex("2000020000000003"), cost=4))
    assert br.stp.root_port == br.ports["q"].port_no and br.stp.root_path_cost == 6
    assert br.stp.port_role(br.ports["p"]) == "designated"        # 6 < the neighbour's 10
    info = br.stp.info(br.ports["p"])
    assert (info.designated_bridge, info.designated_cost) == (br.stp.bridge_id, 6)


def test_a_lower_bridge_id_on_an_equal_cost_segment_makes_us_designated(net):
    br = two_port_bridge(net, mac_byte=1)                          # 8000.020000000001
    br.stp.receive(br.ports["q"], bpdu_from(bytes.fromhex("9000020000000003"), cost=4))
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("9000020000000002"), cost=6))
    assert br.stp.root_port == br.ports["q"].port_no and br.stp.root_path_cost == 6
    assert br.stp.port_role(br.ports["p"]) == "designated"        # equal cost, our id is lower


def test_state_changes_and_lost_neighbours_are_logged_as_linux_logs_them(net, caplog):
    import logging
    caplog.set_level(logging.INFO, logger="xenlab.bridge.stp")
    br = two_port_bridge(net)
    net.run(8.0)                                          # p, q: listening, learning, forwarding
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["p"], bpdu_from(other, root=other, max_age=6.0))
    br.stp.receive(br.ports["q"], bpdu_from(other, root=other, port_id=0x8002, max_age=6.0))
    br.stp.receive(br.ports["p"], bpdu_from(other, root=other, max_age=6.0))   # selection again
    br.stp.receive(br.ports["p"], encode_tcn(bytes(6)))   # p is the root port: not designated, ignored
    net.clock.now += 7
    br.stp_tick()                                         # both neighbours' information ages out
    got = [r.getMessage() for r in caplog.records]
    assert got[:6] == ["br0: port 1(p) entered listening state", "br0: port 2(q) entered listening state",
                       "br0: port 1(p) entered learning state", "br0: port 2(q) entered learning state",
                       "br0: port 1(p) entered forwarding state", "br0: port 2(q) entered forwarding state"]
    assert got.count("br0: port 2(q) entered blocking state") == 1     # once, not at each selection
    assert "br0: port 1(p) neighbor 2000.2:0:0:0:0:2 lost" in got
    br.stp.receive(br.ports["q"], encode_tcn(bytes(6)))   # q designated again: heard
    assert caplog.records[-1].getMessage() == "br0: port 2(q) received tcn bpdu"


def test_a_learning_port_that_must_block_is_a_topology_change(net):
    br = two_port_bridge(net)
    net.run(4.0)
    assert br.ports["q"].state == "learning"
    changes = br.stp.counters["topology_changes"]
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["p"], bpdu_from(other, root=other))
    br.stp.receive(br.ports["q"], bpdu_from(other, root=other, port_id=0x8002))
    assert br.ports["q"].state == "blocking"
    assert br.stp.counters["topology_changes"] == changes + 1


def test_the_tcn_repeats_every_hello_time_until_acknowledged(net):
    br = two_port_bridge(net)
    net.run(10)
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["p"], bpdu_from(other, root=other, max_age=40.0))
    br.pop_transmit()
    tcns = []
    for _ in range(3):
        net.clock.now += 2
        br.stp_tick()
        tcns += [f for f in br.pop_transmit().get("p", []) if isinstance(decode(f), TcnBpdu)]
    assert len(tcns) == 3 and br.stp.counters["tcn_sent"] == 4     # and the first, on losing the root


def test_a_neighbour_on_two_ports_of_a_segment_is_recorded_from_either(net):
    br = two_port_bridge(net)
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["p"], bpdu_from(other, root=other, port_id=0x8001))
    br.stp.receive(br.ports["p"], bpdu_from(other, root=other, port_id=0x8002))
    assert br.stp.info(br.ports["p"]).designated_port == 0x8002


def test_a_root_told_of_itself_by_a_lower_neighbour_keeps_saying_hello(net):
    br = two_port_bridge(net, mac_byte=5)
    own = br.stp.bridge_id
    br.stp.receive(br.ports["p"], bpdu_from(bytes.fromhex("0001020000000002"), root=own))
    assert br.stp.is_root and br.stp.hello_timer is not None


def test_an_alternate_ports_information_ageing_out_keeps_the_bridge_a_non_root(net):
    br = two_port_bridge(net)
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["q"], bpdu_from(other, root=other, port_id=0x8002, max_age=6.0))
    for _ in range(4):                                    # p, the root port, kept fresh
        br.stp.receive(br.ports["p"], bpdu_from(other, root=other, max_age=40.0))
        net.clock.now += 2
        br.stp_tick()
    assert not br.stp.is_root and br.stp.hello_timer is None
    assert br.stp.port_role(br.ports["q"]) == "designated"


def test_timers_refused_on_a_running_stp_say_which(net):
    br = net.bridge("br0", 1)
    for name, bad, bounds in (("hello_time", 11, "1..10"), ("max_age", 41, "6..40"),
                              ("forward_delay", 31, "2..30")):
        with pytest.raises(XenError) as err:
            br.set_stp(True, **{name: bad})
        assert err.value.message == f"{name} {bad} s is outside {bounds} s (802.1D's bounds, as Linux)"


def test_a_root_disabling_a_port_is_no_new_topology_change(net):
    br = two_port_bridge(net, mac_byte=1)
    net.run(40)                                            # forwarding, and the change is over
    assert br.stp.is_root and not br.stp.topology_change
    changes = br.stp.counters["topology_changes"]
    br.set_carrier("q", False)
    assert br.stp.counters["topology_changes"] == changes and not br.stp.topology_change


def test_a_non_root_detecting_a_change_sends_a_tcn_and_times_it(net):
    br = two_port_bridge(net)
    other = bytes.fromhex("2000020000000002")
    br.stp.receive(br.ports["p"], bpdu_from(other, root=other, max_age=40.0))
    while br.ports["q"].state != "learning":              # q walks on (15 s a step)
        net.clock.now += 2
        br.stp_tick()
        br.stp.receive(br.ports["p"], bpdu_from(other, root=other, max_age=40.0))
    due = br.stp.info(br.ports["q"]).forward_delay_timer
    net.clock.now = due
    br.stp_tick()
    assert br.ports["q"].state == "forwarding"
    assert br.stp.tcn_timer == due + 2.0 and br.stp.counters["tcn_sent"] == 1


def test_bad_bpdus_and_tcns_are_counted_each_time(net):
    br = net.bridge("br0", 1)
    br.add_port("p")
    for _ in range(2):
        br.stp.receive(br.ports["p"], KERNEL_CONFIG_BPDU[:30])
        br.stp.receive(br.ports["p"], encode_tcn(bytes(6)))
    assert (br.stp.counters["bad_bpdu"], br.stp.counters["tcn_received"]) == (2, 2)


def test_a_root_changing_its_priority_stays_root_without_a_new_change(net):
    br = two_port_bridge(net, mac_byte=1)
    net.run(40)
    changes = br.stp.counters["topology_changes"]
    br.set_priority(0x4000)
    assert br.stp.is_root and br.stp.counters["topology_changes"] == changes
    assert not br.stp.topology_change


def test_a_bpdu_exactly_max_age_old_is_not_forwarded(net):
    br = two_port_bridge(net)
    other = bytes.fromhex("2000020000000002")
    sent = br.stp.counters["config_sent"]
    br.stp.receive(br.ports["p"], bpdu_from(other, root=other, age=20.0 - 1 / 256, max_age=20.0))
    assert br.stp.root_port == br.ports["p"].port_no
    assert br.stp.counters["config_sent"] == sent          # q's would be 20 s old: not sent


def test_every_config_bpdu_sent_is_counted(net):
    br = net.bridge("br0", 1)
    br.add_port("p")
    frames = 0
    for _ in range(3):
        net.clock.now += 2
        br.stp_tick()
        frames += len(br.pop_transmit().get("p", []))
    assert frames == 3 and br.stp.counters["config_sent"] == 3


def test_a_port_id_keeps_ten_bits_of_the_port_number():
    assert make_port_id(0, 1025) == 1 and make_port_id(0, 1023) == 1023


def test_timers_refused_when_stp_starts_say_which():
    for name, bad, bounds in (("hello_time", 0.5, "1..10"), ("max_age", 5, "6..40"),
                              ("forward_delay", 1, "2..30")):
        br = Bridge("br0", clock=ManualClock(1000.0))
        with pytest.raises(XenError) as err:
            br.set_stp(True, **{name: bad})
        assert err.value.message == f"{name} {bad:g} s is outside {bounds} s (802.1D's bounds, as Linux)"
        assert br.stp is None


def test_a_backup_port_whose_twin_goes_quiet_is_designated_without_a_new_change(net):
    br = two_port_bridge(net, mac_byte=1)
    net.run(40)                                           # root, both forwarding, change over
    net.clock.now += 2
    br.stp_tick()
    (own,) = br.pop_transmit()["p"][:1]
    net.clock.now += 0.5                                  # off the hello beat
    br.stp.now = net.clock.now
    br.stp.receive(br.ports["q"], own)                    # q hears p: the same segment
    assert br.stp.port_role(br.ports["q"]) == "alternate"
    changes = br.stp.counters["topology_changes"]
    due = br.stp.info(br.ports["q"]).message_age_timer
    net.clock.now = due
    br.stp_tick()                                         # p's BPDU is not heard again
    assert "q" not in br.pop_transmit()                   # a root stays one: no BPDUs out of turn
    assert br.stp.port_role(br.ports["q"]) == "designated" and br.stp.is_root
    assert br.stp.info(br.ports["q"]).message_age_timer is None
    assert br.stp.counters["topology_changes"] == changes
