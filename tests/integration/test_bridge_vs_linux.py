"""The same frames through a Linux kernel bridge (in a network namespace,
STP off, default flags) and through xenbr0's core, compared frame by frame:
which wire each frame comes out of, and the FDB after each step. One test per
difference issue 16 found (tests/unit/bridge/test_bridge_linux_divergences.py
has the same on the core alone), plus the behaviours that already matched.

Needs root and iproute2; skipped, saying why, elsewhere.
"""
from __future__ import annotations

import pytest

from xenlab.bridge.core import Bridge
from xenlab.net.ethernet import format_mac
from xenlab.testing import ManualClock

import linux_bridge
from linux_bridge import PROBE, LinuxBridge, sentinel

WHY = linux_bridge.unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")

PORTS = ["p1", "p2", "p3"]
BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


def frame(dst: bytes, src: bytes, tag: int = 0) -> bytes:
    return dst + src + b"\x88\xb5" + tag.to_bytes(2, "big") + bytes(44)


class Replay:
    """One kernel bridge and one xenbr0 core, the same ports on each."""

    def __init__(self, kernel: LinuxBridge) -> None:
        self.kernel = kernel
        self.core = Bridge("br0", clock=ManualClock(1000.0))
        for name in kernel.ports:
            self.core.add_port(name)
        self._seq = 0

    def send(self, port: str, data: bytes) -> dict[str, list[bytes]]:
        """Both bridges get the frame (and the kernel's sentinel, so that
        the FDBs hold the same); both must deliver it to the same wires."""
        kernel = self.kernel.send(port, data)
        self._seq += 1
        core = {name: [data] for name, _ in self.core.forward(port, data)}
        self.core.forward(PROBE, sentinel(self._seq))
        assert core == kernel, f"xenbr0 sent {sorted(core)}, Linux {sorted(kernel)}"
        return core

    def fdb(self) -> set[tuple]:
        kernel = self.kernel.fdb()
        core = {(format_mac(e.mac), e.port, e.state, e.sticky, e.vid) for e in self.core.fdb
                if e.mac != linux_bridge.PROBE_MAC}
        assert core == kernel
        return core

    def link_set(self, port: str, **flags) -> None:
        args = []
        for key, value in flags.items():
            args += [key, value if isinstance(value, str) else ("on" if value else "off")]
        self.kernel.bridge("link", "set", "dev", port, *args)
        self.core.set_port_flags(port, **flags)


@pytest.fixture
def replay():
    with LinuxBridge(PORTS) as kernel:
        yield Replay(kernel)


def test_learning_flooding_and_known_unicast_match(replay):
    assert sorted(replay.send("p1", frame(BCAST, mac(1)))) == ["p2", "p3", PROBE]
    assert sorted(replay.send("p2", frame(mac(1), mac(2)))) == ["p1"]
    replay.send("p3", frame(mac(99), mac(3)))                      # unknown unicast floods
    replay.send("p1", frame(MCAST, mac(1)))
    replay.send("p3", frame(BCAST, mac(1)))                        # a move
    replay.send("p2", frame(mac(1), mac(2)))
    assert replay.fdb() == {(format_mac(mac(n)), p, "", False, 0)
                            for n, p in ((1, "p3"), (2, "p2"), (3, "p3"))}


def test_1_bridge_group_address_floods_with_stp_off(replay):
    assert sorted(replay.send("p1", frame(bytes.fromhex("0180c2000000"), mac(1)))) == ["p2", "p3", PROBE]
    assert replay.send("p1", frame(bytes.fromhex("0180c200000e"), mac(4))) == {}    # LLDP stays
    replay.kernel.ip("link", "set", "br0", "type", "bridge", "group_fwd_mask", str(1 << 0x0E))
    replay.core.set_group_fwd_mask(1 << 0x0E)
    replay.send("p1", frame(bytes.fromhex("0180c200000e"), mac(4)))
    replay.fdb()


def test_2_pause_frames_are_not_learned(replay):
    assert replay.send("p1", frame(bytes.fromhex("0180c2000001"), mac(1))) == {}
    replay.send("p2", frame(bytes.fromhex("0180c2000003"), mac(2)))  # 802.1X: learned, kept
    assert replay.fdb() == {(format_mac(mac(2)), "p2", "", False, 0)}


def test_3_a_disabled_port_keeps_its_entries_only_link_loss_flushes(replay):
    replay.send("p3", frame(BCAST, mac(3)))
    replay.link_set("p3", state="disabled")
    assert replay.send("p1", frame(mac(3), mac(1))) == {}
    assert (format_mac(mac(3)), "p3", "", False, 0) in replay.fdb()
    replay.link_set("p3", state="forwarding")
    assert list(replay.send("p1", frame(mac(3), mac(1)))) == ["p3"]
    replay.link_set("p2", state="blocking")          # without STP: forwarding at once
    assert replay.core.ports["p2"].state == "forwarding"
    replay.send("p1", frame(BCAST, mac(1)))
    replay.kernel.ip("link", "set", "wp3", "down")   # the port loses its carrier
    replay.core.set_carrier("p3", False)
    assert (format_mac(mac(3)), "p3", "", False, 0) not in replay.fdb()


def test_4_static_entries_move_unless_sticky(replay):
    for n, extra in ((5, []), (6, ["sticky"])):
        replay.kernel.bridge("fdb", "add", format_mac(mac(n)), "dev", "p3", "master", "static", *extra)
        replay.core.fdb_add(mac(n), "p3", "static", sticky=bool(extra))
    replay.send("p1", frame(BCAST, mac(5)))
    replay.send("p1", frame(BCAST, mac(6)))
    assert replay.fdb() >= {(format_mac(mac(5)), "p1", "static", False, 0),
                            (format_mac(mac(6)), "p3", "static", True, 0)}
    replay.send("p2", frame(mac(5), mac(2)))
    replay.send("p2", frame(mac(6), mac(2)))


def test_5_ageing_time_zero_is_a_hub(replay):
    replay.send("p2", frame(BCAST, mac(2)))
    replay.kernel.bridge("fdb", "add", format_mac(mac(9)), "dev", "p3", "master", "static")
    replay.core.fdb_add(mac(9), "p3", "static")
    replay.kernel.ip("link", "set", "br0", "type", "bridge", "ageing_time", "0")
    replay.core.set_ageing(0)
    _wait_for_kernel_gc(replay)
    replay.send("p2", frame(BCAST, mac(2)))
    assert sorted(replay.send("p1", frame(mac(2), mac(1)))) == ["p2", "p3", PROBE]
    assert list(replay.send("p1", frame(mac(9), mac(1)))) == ["p3"]
    assert replay.fdb() == {(format_mac(mac(9)), "p3", "static", False, 0)}


def _wait_for_kernel_gc(replay) -> None:
    # The kernel's garbage collector removes learned entries within 10 ms of
    # ageing_time 0; the core does it at once. Wait for the kernel's (not timed:
    # the assertion after is on contents).
    import time
    for _ in range(200):
        if not any(state == "" for _, _, state, _, _ in replay.kernel.fdb()):
            return
        time.sleep(0.01)


def test_6_a_full_fdb_learns_nothing_more(replay):
    try:
        replay.kernel.set_fdb_max_learned(2)
    except OSError as err:
        pytest.skip(f"this kernel cannot limit learning (fdb_max_learned, Linux 6.7+): {err}")
    # The probe's sentinel source is learned too; with it the kernel holds 2.
    replay.core.fdb.set_limit(2)
    replay.kernel.bridge("fdb", "add", format_mac(mac(9)), "dev", "p3", "master", "static")
    replay.core.fdb_add(mac(9), "p3", "static")
    replay.send("p1", frame(BCAST, mac(1)))
    replay.send("p1", frame(BCAST, mac(11)))
    replay.send("p2", frame(BCAST, mac(2)))
    assert replay.fdb() == {(format_mac(mac(1)), "p1", "", False, 0),
                            (format_mac(mac(9)), "p3", "static", False, 0)}
    replay.send("p1", frame(mac(2), mac(1)))          # floods: never learned


def test_7_flood_flags_are_separate(replay):
    replay.send("p1", frame(BCAST, mac(1)))
    for flag in ("flood", "mcast_flood", "bcast_flood"):
        replay.link_set("p3", **{flag: False})
        replay.send("p1", frame(mac(77), mac(1)))
        replay.send("p1", frame(MCAST, mac(1)))
        replay.send("p1", frame(BCAST, mac(1)))
        replay.link_set("p3", **{flag: True})


def test_hairpin_isolated_and_locked_match(replay):
    replay.send("p1", frame(BCAST, mac(1)))
    replay.send("p1", frame(BCAST, mac(11)))
    replay.send("p1", frame(mac(11), mac(1)))           # same port: dropped
    replay.link_set("p1", hairpin=True)
    replay.send("p1", frame(mac(11), mac(1)))
    replay.send("p1", frame(BCAST, mac(1)))
    replay.link_set("p1", hairpin=False)
    replay.link_set("p1", isolated=True)
    replay.link_set("p2", isolated=True)
    replay.send("p2", frame(BCAST, mac(2)))
    replay.send("p2", frame(mac(1), mac(2)))
    replay.link_set("p3", locked=True)
    replay.send("p3", frame(BCAST, mac(3)))             # unknown source on a locked port
    replay.kernel.bridge("fdb", "add", format_mac(mac(3)), "dev", "p3", "master", "static")
    replay.core.fdb_add(mac(3), "p3", "static")
    replay.send("p3", frame(BCAST, mac(3)))
    replay.fdb()
