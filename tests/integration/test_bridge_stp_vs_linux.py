"""xenlab's STP against Linux's kernel STP: a Linux bridge (stp_state 1) in
a network namespace and two xenlab bridges, joined in a triangle by the
xenlab bridges' TAP uplinks and a link between them. The three elect one
root, agree on it, and block exactly one port; a broadcast crosses the loop
without a storm. Needs root, /dev/net/tun and network namespaces; skipped,
saying why, elsewhere."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import pytest

from xenlab.bridge.server import BridgeService, bridge_id_text
from xenlab.net.device import NetDevice

import linux_bridge

WHY = linux_bridge.unavailable() or (None if os.path.exists("/dev/net/tun") else "no /dev/net/tun")
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")
BCAST = b"\xff" * 6


def ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture
def kernel_bridge():
    ns = f"xlstp{os.getpid()}"
    ip("netns", "add", ns)
    try:
        # Linux's minimum timers (centiseconds), so that the test converges in seconds.
        ip("-n", ns, "link", "add", "br0", "type", "bridge", "stp_state", "1", "priority", "4096",
           "hello_time", "100", "forward_delay", "200", "max_age", "600")
        ip("-n", ns, "link", "set", "br0", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


async def test_xenlab_and_kernel_stp_agree_on_one_tree(kernel_bridge, sock_dir):
    ns = kernel_bridge
    taps = {"xa": f"xlsa{os.getpid() % 100000}", "xb": f"xlsb{os.getpid() % 100000}"}
    service = BridgeService(["xa", "xb"], f"unix:{sock_dir}/veth.sock", f"unix:{sock_dir}/api.sock",
                            uplinks=taps, stp_bridges=["xa", "xb"], links=[("xa", "xb")],
                            stp_timers={"hello_time": 1, "forward_delay": 2, "max_age": 6})
    await service.start()
    try:
        for tap in taps.values():
            ip("link", "set", tap, "netns", ns)
            ip("-n", ns, "link", "set", tap, "master", "br0")
            ip("-n", ns, "link", "set", tap, "up")
        service.add_port("xa", "hosta")
        hostb = Recorder("hostb")
        service.add_port("xb", "hostb", device=hostb)
        kernel_ports = await _converge(service, ns, taps)

        ours = {(b, p.name): p.state for b in ("xa", "xb") for p in service.bridges[b].ports.values()}
        states = list(ours.values()) + [p["state"] for p in kernel_ports]
        assert states.count("blocking") == 1, (ours, kernel_ports)
        # The kernel's bridge (priority 4096) is the root, for everyone.
        kernel_root = json.loads(ip("-n", ns, "-d", "-j", "link", "show", "br0"))[0]["linkinfo"]["info_data"]
        assert kernel_root["root_port"] == 0
        root = _kernel_id(kernel_root["bridge_id"])
        for name in ("xa", "xb"):
            assert bridge_id_text(service.bridges[name].stp.designated_root) == root
            assert service.bridges[name].stp.root_port == service.bridges[name].ports[taps[name]].port_no
        # The xa-xb segment is the costly way round: its higher bridge blocks.
        higher = max(("xa", "xb"), key=lambda b: service.bridges[b].stp.bridge_id)
        assert ours[(higher, "to-" + ("xb" if higher == "xa" else "xa"))] == "blocking"

        # A broadcast from xa's host reaches xb's host once: through the kernel's bridge.
        marked = BCAST + bytes.fromhex("020000000abc") + b"\x88\xb5" + bytes(46)
        service.inject("xa", "hosta", [marked])
        await asyncio.sleep(0.5)
        assert hostb.frames.count(marked) == 1
    finally:
        await service.stop(grace=0)


class Recorder(NetDevice):
    """A port's far end that keeps what the bridge sends it."""

    def __init__(self, name: str):
        super().__init__(name)
        self.frames: list[bytes] = []

    def transmit(self, frames: list[bytes]) -> None:
        self.frames += frames
        self.count_tx(frames)


def _kernel_id(text: str) -> str:
    """iproute2's "1000.2:0:0:0:0:aa" -> "1000.0200000000aa"."""
    prio, _, mac = text.partition(".")
    return prio + "." + "".join(f"{int(b, 16):02x}" for b in mac.split(":"))


async def _converge(service, ns, taps) -> list[dict]:
    """Until no port of the triangle is listening or learning (at most 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        kernel = [p for p in json.loads(ip("netns", "exec", ns, "bridge", "-j", "link", "show"))
                  if p["ifname"] in taps.values()]
        states = [p.state for b in service.bridges.values() for p in b.ports.values()]
        states += [p["state"] for p in kernel]
        if len(kernel) == 2 and not {"listening", "learning", "disabled"} & set(states):
            return kernel
        assert time.monotonic() < deadline, f"no convergence: {states}"
        await asyncio.sleep(0.2)
