"""A domain's PV console as the toolstack sets it up and xenconsoled
serves it: libxl's nodes and permissions, the ring drained to the console
log, keystrokes put on the ring, a bounded input queue, a broken ring that
costs nobody else anything, and teardown. The guest's end here is
xen/console.py's ConsoleRingEnd over the domain's frame."""
from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from xenlab.hypervisor import xenconsoled
from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.xenconsoled import CONSOLE_GFN, INPUT_LIMIT
from xenlab.proto import common_pb2, console_pb2, console_pb2_grpc
from xenlab.testing import eventually
from xenlab.testing_invariants import invariant_violations
from xenlab.xen import abi
from xenlab.xen import console as cons
from xenlab.xen.abi import EvtchnState
from xenlab.xen.errors import XenError
from xenlab.xen.shared_info import SharedInfo

pytestmark = pytest.mark.timeout(60)
DOM0 = Caller(0, True)


class Guest:
    def __init__(self, lab, domid: int, client):
        self.hv, self.domid, self.client = lab.hv, domid, client
        base = f"/local/domain/{domid}/console"
        self.port = int(self.hv.xenstore.read(DOM0, f"{base}/port"))
        self.frame = self.hv.memory.frame(domid, CONSOLE_GFN)
        self.page = cons.ConsolePage(self.frame)
        self.end = cons.ConsoleRingEnd(self.page, backend=False)

    def write(self, data: bytes) -> None:
        assert self.end.write(data) == len(data)
        self.hv.evtchn.send(self.domid, self.port)          # EVTCHNOP_send on the console port

    def log(self) -> bytes:
        path = self.hv.console_log(self.hv.domains.get(self.domid))
        return path.read_bytes() if path.exists() else b""

    def pending(self) -> bool:
        return self.hv.evtchn.status(DOM0, self.domid, self.port)["pending"]

    def clear_pending(self) -> None:
        buf, offset = self.hv.memory.shared_info_buffer(self.domid)
        info = SharedInfo(buf, offset, 1)
        info.clear_port(self.port)
        info.release()

    def release(self) -> None:
        self.page.release()
        self.frame.release()


@pytest.fixture
async def guests(hypervisor):
    made = []

    async def make(name: str) -> Guest:
        domid, client = await hypervisor.create_domain(name)
        guest = Guest(hypervisor, domid, client)
        made.append(guest)
        return guest
    yield make
    for guest in made:
        guest.release()


def read(hv, path: str) -> bytes:
    return hv.xenstore.read(DOM0, path)


async def test_the_toolstack_writes_the_console_nodes_as_libxl_does(hypervisor, guests):
    g = await guests("web")
    hv, d = hypervisor.hv, g.domid
    front, back = f"/local/domain/{d}/console", f"/local/domain/0/backend/console/{d}/0"
    nodes = {k: read(hv, f"{front}/{k}") for k in hv.xenstore.directory(DOM0, front)}
    assert nodes.pop("tty").startswith(b"/dev/pts/")     # xenconsoled's pty
    assert nodes == {
        "backend": back.encode(), "backend-id": b"0", "limit": b"1048576",
        "type": b"xenconsoled", "output": b"pty", "port": str(g.port).encode(),
        "ring-ref": str(CONSOLE_GFN).encode()}
    assert {k: read(hv, f"{back}/{k}") for k in hv.xenstore.directory(DOM0, back)} == {
        "frontend": front.encode(), "frontend-id": str(d).encode(), "online": b"1",
        "state": b"1", "protocol": b"vt100"}
    # Console 0's frontend directory is read-only to the guest but for backend-id.
    ro = [(0, "n"), (d, "r")]
    for key in ("", "/backend", "/limit", "/type", "/output", "/tty", "/port", "/ring-ref"):
        assert hv.xenstore.get_perms(DOM0, front + key) == ro
    assert hv.xenstore.get_perms(DOM0, f"{front}/backend-id") == [(d, "n"), (0, "r")]
    assert hv.xenstore.get_perms(DOM0, back) == ro
    assert read(hv, f"/libxl/{d}/device/console/0/backend") == back.encode()
    # The port is xenconsoled's, bound; the page says connected.
    ch = hv.evtchn.channel(d, g.port)
    assert (ch.state, ch.remote_dom) == (EvtchnState.interdomain, abi.DOMID_XEN)
    assert g.page.connection == cons.XENCONSOLE_CONNECTED
    assert invariant_violations(hv) == []


async def test_the_guest_cannot_rewrite_where_its_console_is(hypervisor, guests):
    g = await guests("web")
    guest = Caller(g.domid, False)
    with pytest.raises(XenError) as err:
        hypervisor.hv.xenstore.write(guest, f"/local/domain/{g.domid}/console/ring-ref", b"3")
    assert err.value.errno == 13        # EACCES


async def test_what_the_guest_writes_reaches_its_console_log(hypervisor, guests):
    g = await guests("web")
    g.write(b"Linux version 6.1\r\n")
    await eventually(lambda: g.log().endswith(b"Linux version 6.1\r\n"), "the output in the log")
    assert g.page.out_cons == g.page.out_prod
    # More than the ring holds, in ring-sized pieces, nothing lost.
    sent = bytearray()
    for i in range(10):
        chunk = bytes([0x41 + i]) * 2000
        await eventually(lambda: g.end.writable() >= len(chunk), "room on the ring")
        g.write(chunk)
        sent += chunk
    await eventually(lambda: g.log().endswith(bytes(sent)), "every byte in the log")


async def test_keystrokes_reach_the_guests_ring_and_raise_its_event(hypervisor, guests):
    g = await guests("web")
    hv = hypervisor.hv
    g.clear_pending()
    assert hv.consoles.write(g.domid, b"ip addr\r") == 8
    await eventually(lambda: g.end.readable() == 8, "input on the ring")
    assert g.end.read() == b"ip addr\r"
    assert g.pending()


async def test_input_the_guest_does_not_read_is_bounded(hypervisor, guests):
    """A guest that never reads: the ring fills (1024), xenconsoled queues
    INPUT_LIMIT more, then refuses with EAGAIN: nothing grows without end."""
    g = await guests("web")
    hv = hypervisor.hv
    taken = 0
    while taken < cons.IN_SIZE + INPUT_LIMIT:
        taken += hv.consoles.write(g.domid, b"y" * 4096)
        await asyncio.sleep(0)
    with pytest.raises(XenError) as err:
        hv.consoles.write(g.domid, b"y")
    assert err.value.errno == 11        # EAGAIN
    assert g.end.read() == b"y" * cons.IN_SIZE
    hv.evtchn.send(g.domid, g.port)     # read: the guest tells the backend (hvc_xen's notify_daemon)
    await eventually(lambda: g.end.readable() == cons.IN_SIZE, "the queue refilling the ring")
    assert hv.consoles.write(g.domid, b"z") == 1


async def test_a_broken_ring_moves_nothing_and_costs_no_one_else(hypervisor, guests):
    bad, good = await guests("bad"), await guests("good")
    bad.page.out_prod = bad.page.out_cons + 5000          # more than the 2048-byte ring
    bad.hv.evtchn.send(bad.domid, bad.port)
    good.write(b"still here\r\n")
    await eventually(lambda: good.log().endswith(b"still here\r\n"), "the other domain's output")
    console = bad.hv.consoles.get(bad.domid)
    await eventually(lambda: console.broken, "the broken ring noticed")
    assert bad.log() == b""
    # Mended by the guest, it is served again.
    bad.page.out_prod = bad.page.out_cons
    bad.write(b"back\r\n")
    await eventually(lambda: bad.log() == b"back\r\n", "the mended ring served")
    assert console.broken == ""


async def test_destroying_a_domain_lets_go_of_its_console(hypervisor, guests):
    g = await guests("web")
    hv, d = hypervisor.hv, g.domid
    g.write(b"last words\r\n")
    log = hv.console_log(hv.domains.get(d))
    g.release()
    await hypervisor.toolstack.destroy_domain(d)
    assert hv.consoles.get(d) is None
    assert log.read_bytes().endswith(b"last words\r\n")
    assert not hv.xenstore.exists(f"/local/domain/0/backend/console/{d}")
    assert not hv.xenstore.exists("/local/domain/0/backend/console")
    assert invariant_violations(hv) == []
    with pytest.raises(XenError):
        hv.consoles.write(d, b"x")


async def test_console_write_is_domain_0s(hypervisor, guests):
    g = await guests("web")
    other = await guests("db")
    stub = console_pb2_grpc.ConsoleStub(other.client.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Write(console_pb2.ConsoleWriteRequest(
            domain=common_pb2.DomainRef(domid=g.domid), data=b"reboot\r"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    dom0 = console_pb2_grpc.ConsoleStub(hypervisor.dom0.channel)
    reply = await dom0.Write(console_pb2.ConsoleWriteRequest(
        domain=common_pb2.DomainRef(name="web"), data=b"uptime\r"))
    assert reply.accepted == 7
    await eventually(lambda: g.end.read() == b"uptime\r", "the keystrokes on the ring")


def test_the_console_page_is_among_the_guest_kernels_reserved_frames():
    from xenlab.domain.memory import RESERVED_FRAMES
    from xenlab.hypervisor.xenstored_ring import STORE_GFN
    assert xenconsoled.CONSOLE_GFN < RESERVED_FRAMES and xenconsoled.CONSOLE_GFN != STORE_GFN


async def test_the_guest_cannot_balloon_out_its_console_page(hypervisor, guests):
    from xenlab.proto import memory_pb2
    g = await guests("balloon")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await g.client.memory.DecreaseReservation(memory_pb2.DecreaseReservationRequest(
            domid=g.domid, gfns=[CONSOLE_GFN]))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "console ring" in info.value.details()
    g.write(b"still mapped\r\n")
    await eventually(lambda: g.log() == b"still mapped\r\n", "the console still served")


async def test_the_console_pty_named_in_tty_carries_both_ways(hypervisor, guests):
    """As on Xen, `screen $(xenstore-read /local/domain/D/console/tty)` works."""
    g = await guests("web")
    path = read(hypervisor.hv, f"/local/domain/{g.domid}/console/tty").decode()
    st = os.stat(path)
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, os.getuid())    # no one else may type into it
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        os.set_blocking(fd, False)
        g.write(b"login: ")
        got = bytearray()

        def shown() -> bool:
            try:
                got.extend(os.read(fd, 100))
            except BlockingIOError:
                pass
            return bytes(got) == b"login: "
        await eventually(shown, "the guest's output on the pty")
        os.write(fd, b"root\r")
        await eventually(lambda: g.end.readable() == 5, "the keystrokes on the ring")
        assert g.end.read() == b"root\r"      # raw: no echo, no CR translation
    finally:
        os.close(fd)


async def test_output_nobody_reads_off_the_pty_is_bounded(hypervisor, guests):
    g = await guests("web")
    console = hypervisor.hv.consoles.get(g.domid)
    console.limit = 4096
    sent = 0
    while sent < 200_000:
        await eventually(lambda: g.end.writable() >= 2000, "room on the ring")
        g.write(b"q" * 2000)
        sent += 2000
    await eventually(lambda: len(g.log()) == sent, "all of it in the log")
    assert len(console._pty_out) <= 4096
    assert console.pty_dropped > 0


async def test_start_info_names_the_console_log_not_the_console_object(hypervisor, guests):
    """start_info's console_log was the DomainConsole's repr (a variable
    shadowed): the launcher sent the domain's standard error to a file of
    that name in its working directory instead of its console log."""
    g = await guests("web")
    hv = hypervisor.hv
    dom = hv.domains.get(g.domid)
    info = hv._start_info(dom, "secret")
    assert info.console_log == str(hv.console_log(dom))
    assert (info.console_gfn, info.console_port) == (CONSOLE_GFN, g.port)
