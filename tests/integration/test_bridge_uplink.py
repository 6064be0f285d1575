"""The bridge's uplink port: a real TAP device that the host's own tools use.

The end-to-end tests need root, /dev/net/tun and network namespaces: the TAP
is moved into a private namespace that holds the only host-side address, so
the tests never touch the host's own network. The rest run anywhere: a
SOCK_SEQPACKET socketpair stands in for the TAP fd (one frame per read and
write, EAGAIN when full), and the failures are simulated.
"""
import errno
import json
import os
import re
import shutil
import socket

import pytest
import pytest_asyncio

from host_commands import must, need_tool, run, skip
from stack_port import StackPort
from xenlab.bridge import uplink
from xenlab.bridge.__main__ import main as bridge_main
from xenlab.bridge.server import BridgeService, port_info
from xenlab.bridge.uplink import TapDevice, UplinkError, parse_uplink
from xenlab.net.ethernet import format_mac
from xenlab.testing import eventually, short_tempdir

STACK_MAC = bytes.fromhex("00163e0d0001")
STACK_IP = "10.213.0.1"
HOST_IP = "10.213.0.254"
BCAST = b"\xff" * 6


def frame(src: bytes, size: int = 60, dst: bytes = BCAST) -> bytes:
    return dst + src + b"\x08\x06" + bytes(size - 14)


# -- TapDevice over a stand-in fd -----------------------------------------------------------
@pytest_asyncio.fixture
async def fake_tap():
    """(TapDevice, the kernel's side of its fd)."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    kernel.setblocking(False)
    dev = TapDevice("xltapfake", ours.detach(), mtu=1500)
    try:
        yield dev, kernel
    finally:
        dev.close()
        kernel.close()


async def test_frames_from_the_kernel_reach_the_receiver_in_batches(fake_tap):
    dev, kernel = fake_tap
    batches = []
    dev.receiver = batches.append
    sent = [frame(bytes([2, 0, 0, 0, 0, i])) for i in range(1, 101)]
    for f in sent:
        kernel.send(f)
    await eventually(lambda: sum(map(len, batches)) == 100, "the 100 frames")
    assert [f for b in batches for f in b] == sent
    assert len(batches) < 100       # several frames per wakeup
    assert dev.stats()["rx_packets"] == 100


async def test_transmitted_frames_come_out_whole_and_counted(fake_tap):
    dev, kernel = fake_tap
    sent = [frame(b"\x02\0\0\0\0\1", size) for size in (60, 1514)]
    dev.transmit(sent)
    assert [kernel.recv(70000), kernel.recv(70000)] == sent
    assert dev.stats()["tx_packets"] == 2 and dev.stats()["tx_bytes"] == 60 + 1514


async def test_a_frame_over_the_mtu_is_counted_oversize(fake_tap):
    dev, kernel = fake_tap
    dev.transmit([frame(b"\x02\0\0\0\0\1", 1515), frame(b"\x02\0\0\0\0\1", 60)])
    assert dev.drops["oversize"] == 1 and dev.counters["tx_packets"] == 1
    assert len(kernel.recv(70000)) == 60


async def test_a_full_queue_drops_instead_of_blocking(fake_tap):
    dev, kernel = fake_tap
    batch = [frame(b"\x02\0\0\0\0\1", 1514)] * 100_000
    dev.transmit(batch)
    sent, full = dev.counters["tx_packets"], dev.drops["tx_queue_full"]
    assert full > 0 and sent + full == len(batch)


async def test_a_closed_device_drops_and_releases_its_fd(fake_tap):
    dev, kernel = fake_tap
    fd = dev.fd
    dev.close()
    dev.transmit([frame(b"\x02\0\0\0\0\1")])
    assert dev.drops["link_down"] == 1 and dev.state == "down"
    with pytest.raises(OSError):
        os.fstat(fd)


async def test_a_lost_device_takes_the_link_down(fake_tap):
    dev, kernel = fake_tap
    kernel.close()          # as `ip link del` does to a TAP fd: every read fails
    dev.transmit([frame(b"\x02\0\0\0\0\1")])
    await eventually(lambda: dev.state == "down", "the TAP device to go down")
    assert dev.counters["tx_packets"] + sum(dev.drops.values()) == 1


# -- refusals -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["xenbr0", "xenbr0=xltap0", "xenbr0=tun:x", "xenbr0=tap:",
                                  "=tap:x", "xenbr0=tap:a/b", "xenbr0=tap:0123456789abcdef"])
def test_a_malformed_uplink_is_refused(text):
    with pytest.raises(ValueError, match="bad uplink"):
        parse_uplink(text)


def test_the_lab_runner_form_is_accepted():
    assert parse_uplink("xenbr0=tap:xltap0") == ("xenbr0", "tap:xltap0")


def _no_capability(monkeypatch):
    """open() works, TUNSETIFF is refused: an unprivileged process. Returns
    (fds opened, fds closed)."""
    opened, closed = [], []
    real_open, real_close = os.open, os.close

    def fake_open(path, flags, *args):
        fd = real_open(os.devnull, os.O_RDWR)
        opened.append(fd)
        return fd

    def close(fd):
        closed.append(fd)
        real_close(fd)

    def refuse(fd, request, arg=0, *rest):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(uplink.os, "open", fake_open)
    monkeypatch.setattr(uplink.os, "close", close)
    monkeypatch.setattr(uplink.fcntl, "ioctl", refuse)
    return opened, closed


def test_without_cap_net_admin_the_error_says_what_is_missing(monkeypatch):
    opened, closed = _no_capability(monkeypatch)
    with pytest.raises(UplinkError) as caught:
        TapDevice.open("xl0")
    monkeypatch.undo()
    assert str(caught.value).startswith(
        "uplink tap:xl0 needs CAP_NET_ADMIN (run as root or grant the capability): ")
    assert caught.value.errno == errno.EPERM
    assert opened and closed == opened      # the tun fd was not leaked


def test_an_unreadable_tun_device_is_a_missing_capability_too(monkeypatch):
    def refuse(path, flags, *args):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(uplink.os, "open", refuse)
    with pytest.raises(UplinkError, match=r"^uplink tap:xl0 needs CAP_NET_ADMIN"):
        TapDevice.open("xl0")


def test_a_missing_tun_device_is_named(monkeypatch):
    def missing(path, flags, *args):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)

    monkeypatch.setattr(uplink.os, "open", missing)
    with pytest.raises(UplinkError, match=r"^uplink tap:xl0 needs /dev/net/tun"):
        TapDevice.open("xl0")


def test_the_service_exits_1_with_the_message_when_the_tap_cannot_open(monkeypatch, capsys):
    _no_capability(monkeypatch)
    tmp = short_tempdir()
    try:
        status = bridge_main(["--uplink", "xenbr0=tap:xl0", "--no-register", "--rundir", str(tmp),
                              "--log-level", "ERROR"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert status == 1
    assert "uplink tap:xl0 needs CAP_NET_ADMIN" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--uplink", "xenbr0=xl0"], "expected BRIDGE=tap:NAME"),
])
def test_the_service_refuses_a_malformed_uplink_option(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        bridge_main(argv)
    assert caught.value.code == 2 and message in capsys.readouterr().err


def test_the_service_refuses_an_uplink_for_a_bridge_it_does_not_serve(capsys):
    tmp = short_tempdir()
    try:
        status = bridge_main(["--uplink", "xenbr9=tap:xl0", "--no-register", "--rundir", str(tmp)])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert status == 1 and "xenbr9 is not served here" in capsys.readouterr().err


# -- the real thing: host tools in a namespace reach a stack behind the bridge ------------------
class Uplinked:
    def __init__(self, service, tap, ns, stack, end):
        self.service, self.tap, self.ns, self.stack, self.end = service, tap, ns, stack, end

    async def ns_mac(self) -> bytes:
        out = await must("ip", "-n", self.ns, "-j", "link", "show", self.tap)
        return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))

    def fdb(self) -> dict[bytes, str]:
        return {entry.mac: entry.port for entry in self.service.bridge("xenbr0").fdb}


@pytest_asyncio.fixture
async def uplinked():
    """A bridge with uplink TAP moved into a fresh namespace (10.213.0.254/24)
    and a veth port with an IpStack behind it (10.213.0.1/24)."""
    if os.geteuid() != 0:
        skip("needs root (CAP_NET_ADMIN) to create a TAP and a network namespace")
    if not os.path.exists("/dev/net/tun"):
        skip("/dev/net/tun is missing")
    if shutil.which("ip") is None:
        skip("ip (iproute2) is not installed")
    suffix = os.urandom(2).hex()
    tap, ns = f"xltap{suffix}", f"xlns{suffix}"
    status, out = await run("ip", "netns", "add", ns)
    if status != 0:
        skip(f"`ip netns add` fails here: {out.strip()}")
    tmp = short_tempdir()
    service = BridgeService(["xenbr0"], listen=f"unix:{tmp}/veth.sock",
                            grpc=f"unix:{tmp}/bridge.sock", uplinks={"xenbr0": tap})
    port = None
    try:
        await service.start()
        # The open fd keeps working after the move: the device changes namespace, not owner.
        await must("ip", "link", "set", tap, "netns", ns)
        await must("ip", "-n", ns, "link", "set", tap, "up")
        await must("ip", "-n", ns, "addr", "add", f"{HOST_IP}/24", "dev", tap)
        port = await StackPort(STACK_MAC, f"{STACK_IP}/24").attach(service)
        yield Uplinked(service, tap, ns, port.stack, port.end)
    finally:
        if port is not None:
            port.close()
        await service.stop(grace=0)     # closing the fd removes the non-persistent TAP
        await run("ip", "netns", "del", ns)
        await run("ip", "link", "del", tap)
        shutil.rmtree(tmp, ignore_errors=True)


async def test_the_uplink_is_a_port_named_after_the_tap(uplinked):
    port = uplinked.service.bridge("xenbr0").port(uplinked.tap)
    dev = uplinked.service.links[("xenbr0", uplinked.tap)]
    assert port.flood and port.learning and dev.state == "up"
    assert port_info(port, dev).link == "tap"


async def test_ping_from_the_namespace_reaches_the_stack(uplinked):
    need_tool("ping")
    status, out = await run("ip", "netns", "exec", uplinked.ns, "ping", "-c", "3", "-W", "2", STACK_IP)
    assert status == 0 and re.search(r"\b3 received\b", out), out
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", out)
    if rtt:
        print(f"ping through the uplink TAP: rtt min/avg/max {'/'.join(rtt.groups())} ms")
    assert uplinked.stack.counters["rx_delivered"] >= 3


async def test_arping_from_the_namespace_gets_the_stack_mac(uplinked):
    need_tool("arping")
    status, out = await run("ip", "netns", "exec", uplinked.ns,
                            "arping", "-c", "2", "-I", uplinked.tap, STACK_IP)
    assert status == 0, out
    assert format_mac(STACK_MAC).lower() in out.lower(), out


async def test_the_fdb_learns_each_side_on_its_own_port(uplinked):
    need_tool("ping")
    await must("ip", "netns", "exec", uplinked.ns, "ping", "-c", "1", "-W", "2", STACK_IP)
    fdb = uplinked.fdb()
    assert fdb.get(STACK_MAC) == "vif1.0"
    assert fdb.get(await uplinked.ns_mac()) == uplinked.tap


async def test_stopping_the_service_removes_the_tap(uplinked):
    await uplinked.service.stop(grace=0)
    status, out = await run("ip", "-n", uplinked.ns, "link", "show", uplinked.tap)
    assert status != 0 and "does not exist" in out
