"""The doorbell: its wire format, and UpcallRouter over a real SEQPACKET socket."""
from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import stat
import struct
import tempfile

import pytest

from xenlab.hypervisor.doorbell import MAX_CONNECTIONS, UpcallRouter
from xenlab.hypervisor.caller import Caller
from xenlab.xen import abi
from xenlab.xen import doorbell as wire
from xenlab.xen.errors import AuthError, XenError

SECRETS = {1: "s3cret-one", 2: "s3cret-two"}


# -- wire format -----------------------------------------------------------------
@pytest.mark.parametrize("msg", [
    wire.Hello(7, "abc"), wire.Hello(7, "abc", wire.HELLO_MEMORY), wire.Ok(7),
    wire.Ok(7, wire.OK_MEMORY), wire.Error(errno.EACCES, "no"),
    wire.Send((1,)), wire.Send(tuple(range(1, wire.MAX_SEND_BATCH + 1))), wire.Upcall(3),
])
def test_messages_round_trip(msg):
    assert wire.decode(msg.encode()) == msg


def test_send_batches_split_at_the_limit():
    datagrams = wire.send_batches(range(1, 2 * wire.MAX_SEND_BATCH + 2))
    ports = [p for d in datagrams for p in wire.decode(d).ports]
    assert len(datagrams) == 3 and ports == list(range(1, 2 * wire.MAX_SEND_BATCH + 2))


def _bad_datagrams():
    good_send = wire.Send((1, 2)).encode()
    return {
        "empty": b"",
        "short header": good_send[:3],
        "bad magic": b"\x00" + good_send[1:],
        "bad version": good_send[:1] + b"\x09" + good_send[2:],
        "reserved byte": good_send[:3] + b"\x01" + good_send[4:],
        "unknown op": good_send[:2] + b"\x63" + good_send[3:],
        "send count too big": good_send[:4] + struct.pack("<H", 3) + good_send[6:],
        "send count zero": good_send[:4] + struct.pack("<H", 0) + good_send[6:8],
        "send trailing": good_send + b"\x00",
        "hello secret overrun": wire.Hello(1, "abc").encode()[:-1],
        "hello reserved domid": wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.OP_HELLO)
                                + struct.pack("<HHHH", 0x7FF0, 1, 0, 0) + b"x",
        "hello not utf-8": wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.OP_HELLO)
                           + struct.pack("<HHHH", 1, 1, 0, 0) + b"\xff",
        "hello unknown flag": wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.OP_HELLO)
                              + struct.pack("<HHHH", 1, 1, 0x8000, 0) + b"x",
        "hello of version 1": wire.HEADER.pack(wire.MAGIC, 1, wire.OP_HELLO)
                              + struct.pack("<HH", 1, 1) + b"x",
        "ok unknown flag": wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.OP_OK)
                           + struct.pack("<HH", 1, 0x10),
        "upcall vcpu": wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.OP_UPCALL)
                       + struct.pack("<I", 99),
        "oversized": b"\xec\x01\x04\x00" + b"\x00" * wire.MAX_DATAGRAM,
        "channel port past the 2-level ABI": wire.Channel(abi.EVTCHN_2L_NR_CHANNELS, 0).encode(),
        "channel vcpu": wire.Channel(1, abi.XEN_LEGACY_MAX_VCPUS).encode(),
        "channel short": wire.Channel(1, 0).encode()[:-1],
    }


def test_channel_and_hello_channels_round_trip():
    assert wire.decode(wire.Channel(4095, 31).encode()) == wire.Channel(4095, 31)
    hello = wire.decode(wire.Hello(3, "s", wire.HELLO_CHANNELS | wire.HELLO_MEMORY).encode())
    assert hello.wants_channels and hello.wants_memory


def test_hello_paging_and_ok_paging_round_trip():
    hello = wire.decode(wire.Hello(3, "s", wire.HELLO_PAGING | wire.HELLO_MEMORY).encode())
    assert hello.wants_paging and hello.wants_memory and not hello.wants_channels
    ok = wire.decode(wire.Ok(3, wire.OK_MEMORY | wire.OK_PAGING).encode())
    assert ok.carries_paging and ok.carries_memory and ok.descriptors == 2
    assert wire.Ok(3, wire.OK_PAGING).descriptors == 1 and wire.Ok(3).descriptors == 0
    with pytest.raises(XenError):           # no HELLO_* bit past HELLO_PAGING
        wire.decode(wire._header(wire.OP_HELLO) + wire._HELLO.pack(3, 1, 0x8) + b"s")


@pytest.mark.parametrize("name", sorted(_bad_datagrams()))
def test_malformed_datagrams_raise_eproto(name):
    with pytest.raises(XenError) as exc:
        wire.decode(_bad_datagrams()[name])
    assert exc.value.errno == errno.EPROTO


def test_encode_refuses_what_decode_would():
    with pytest.raises(ValueError):
        wire.Send(()).encode()
    with pytest.raises(ValueError):
        wire.Hello(1, "").encode()
    with pytest.raises(ValueError):
        wire.Hello(0x7FF0, "x").encode()
    with pytest.raises(ValueError):
        wire.Hello(1, "x", 0x8000).encode()
    with pytest.raises(ValueError):
        wire.Ok(1, 0x10).encode()


# -- the router ---------------------------------------------------------------------
def authenticate(domid: int, secret: str) -> Caller:
    if SECRETS.get(domid) != secret:
        raise AuthError(f"bad credentials for d{domid}")
    return Caller(domid)


class Harness:
    def __init__(self, path: str):
        self.path = path
        self.sent: list[tuple[int, int]] = []
        self.sent_event = asyncio.Event()
        # Each domain's memory object: a memfd that starts with its domid.
        self.memory = {domid: _memory_object(domid) for domid in SECRETS}
        self.memory_asked: list[int] = []
        self.router = UpcallRouter(authenticate, self.on_send, hello_timeout=2.0,
                                   on_memory=self.on_memory)

    def on_memory(self, caller: Caller) -> int:
        self.memory_asked.append(caller.domid)
        return self.memory[caller.domid]

    def close(self) -> None:
        for fd in self.memory.values():
            os.close(fd)

    def on_send(self, domid: int, port: int) -> None:
        if port == 666:
            raise XenError(errno.EINVAL, "bad port")
        self.sent.append((domid, port))
        self.sent_event.set()

    async def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, self.path)
        return sock

    async def hello(self, domid: int, secret: str) -> tuple[socket.socket, wire.Message]:
        sock = await self.connect()
        sock.send(wire.Hello(domid, secret).encode())
        return sock, wire.decode(await recv(sock))

    async def wait_sent(self, n: int) -> None:
        while len(self.sent) < n:
            self.sent_event.clear()
            await self.sent_event.wait()


def _memory_object(domid: int) -> int:
    fd = os.memfd_create(f"d{domid}")
    os.pwrite(fd, f"memory of d{domid}".encode().ljust(4096, b"\0"), 0)
    return fd


async def hello_for_memory(path: str, domid: int, secret: str) -> tuple[wire.Message, list[int]]:
    """HELLO asking for the memory object; the answer and the descriptors
    that came with it."""
    def exchange():
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.send(wire.Hello(domid, secret, wire.HELLO_MEMORY).encode())
            data, fds, _, _ = socket.recv_fds(sock, wire.MAX_DATAGRAM + 1, 4)
            return wire.decode(data), fds
    return await asyncio.to_thread(exchange)


async def recv(sock: socket.socket) -> bytes:
    return await asyncio.wait_for(
        asyncio.get_running_loop().sock_recv(sock, wire.MAX_DATAGRAM + 1), 5)


@pytest.fixture
async def bell():
    d = tempfile.mkdtemp(prefix="xl-db-", dir="/tmp")
    h = Harness(os.path.join(d, "evtchn.sock"))
    await h.router.start(h.path)
    try:
        yield h
    finally:
        await h.router.close()
        h.close()
        shutil.rmtree(d, ignore_errors=True)


async def test_socket_is_private(bell):
    mode = os.stat(bell.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


async def test_hello_ok_then_send_reaches_on_send(bell):
    sock, reply = await bell.hello(1, SECRETS[1])
    assert reply == wire.Ok(1)
    sock.send(wire.Send((5,)).encode())
    sock.send(wire.Send((6, 7, 8)).encode())
    await bell.wait_sent(4)
    assert bell.sent == [(1, 5), (1, 6), (1, 7), (1, 8)]
    sock.close()


async def test_bad_secret_gets_error_and_close(bell):
    sock, reply = await bell.hello(1, "wrong")
    assert isinstance(reply, wire.Error) and reply.errno == errno.EACCES
    assert "bad credentials" in reply.message
    assert await recv(sock) == b""          # closed by the hypervisor
    sock.close()


async def test_connections_per_domain_are_limited(bell):
    socks = [(await bell.hello(1, SECRETS[1]))[0] for _ in range(MAX_CONNECTIONS)]
    extra, reply = await bell.hello(1, SECRETS[1])
    assert isinstance(reply, wire.Error) and reply.errno == errno.EMFILE
    assert bell.router.connections(1) == MAX_CONNECTIONS
    for sock in socks + [extra]:
        sock.close()


async def test_first_message_must_be_hello(bell):
    sock = await bell.connect()
    sock.send(wire.Send((1,)).encode())
    reply = wire.decode(await recv(sock))
    assert isinstance(reply, wire.Error) and reply.errno == errno.EPROTO
    assert await recv(sock) == b""
    sock.close()


async def test_kick_sends_upcall_to_that_domain_only(bell):
    s1, _ = await bell.hello(1, SECRETS[1])
    s2, _ = await bell.hello(2, SECRETS[2])
    bell.router.kick(1, 1)
    assert wire.decode(await recv(s1)) == wire.Upcall(1)
    bell.router.kick(2, 0)
    assert wire.decode(await recv(s2)) == wire.Upcall(0)
    bell.router.kick(9, 0)                  # nobody listening: silently nothing
    s1.close()
    s2.close()


async def test_malformed_message_closes_only_that_connection(bell):
    s1, _ = await bell.hello(1, SECRETS[1])
    s2, _ = await bell.hello(2, SECRETS[2])
    s1.send(b"\xec\x01\x04\x00garbage")
    assert await recv(s1) == b""
    assert bell.router.stats["malformed"] == 1
    s2.send(wire.Send((3,)).encode())
    await bell.wait_sent(1)
    bell.router.kick(2, 0)
    assert wire.decode(await recv(s2)) == wire.Upcall(0)
    assert bell.sent == [(2, 3)]
    s1.close()
    s2.close()


async def test_refused_port_does_not_close_the_connection(bell):
    sock, _ = await bell.hello(1, SECRETS[1])
    sock.send(wire.Send((666, 4)).encode())
    await bell.wait_sent(1)
    assert bell.sent == [(1, 4)]
    assert bell.router.stats["bad_send"] == 1
    assert bell.router.connections(1) == 1
    sock.close()


async def test_full_socket_drops_redundant_kicks_without_blocking(bell):
    sock, _ = await bell.hello(1, SECRETS[1])
    for _ in range(100_000):
        bell.router.kick(1, 0)
        if bell.router.stats["dropped_kick"]:
            break
    assert bell.router.stats["dropped_kick"] == 1
    assert wire.decode(await recv(sock)) == wire.Upcall(0)
    assert bell.router.connections(1) == 1
    sock.close()


async def test_disconnect_closes_connections_and_streams(bell):
    sock, _ = await bell.hello(1, SECRETS[1])
    queue = bell.router.subscribe(1)
    bell.router.kick(1, 0)
    assert await queue.get() == 0
    bell.router.disconnect(1)
    assert await queue.get() is None
    assert wire.decode(await recv(sock)) == wire.Upcall(0)
    assert await recv(sock) == b""
    sock.close()


async def test_subscriber_queue_overflow_is_dropped(bell):
    queue = bell.router.subscribe(2)
    for _ in range(queue.maxsize + 5):
        bell.router.kick(2, 0)
    assert queue.qsize() == queue.maxsize
    assert bell.router.stats["dropped_kick"] == 5
    bell.router.unsubscribe(2, queue)
    bell.router.kick(2, 0)
    assert queue.qsize() == queue.maxsize


async def test_silent_connection_times_out(bell):
    bell.router._hello_timeout = 0.05
    sock = await bell.connect()
    assert await recv(sock) == b""
    sock.close()


async def test_stale_socket_is_replaced_but_other_files_are_not(tmp_path):
    d = tempfile.mkdtemp(prefix="xl-db-", dir="/tmp")
    try:
        path = os.path.join(d, "evtchn.sock")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stale.bind(path)
        stale.close()
        router = UpcallRouter(authenticate, lambda d, p: None)
        await router.start(path)
        await router.close()
        assert not os.path.exists(path)
        open(path, "w").close()
        with pytest.raises(FileExistsError):
            await UpcallRouter(authenticate, lambda d, p: None).start(path)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- the memory object, for a domain that could not be handed it ---------------------
async def test_the_memory_object_comes_with_ok_to_the_authenticated_domain_only(bell):
    reply, fds = await hello_for_memory(bell.path, 1, SECRETS[1])
    assert reply == wire.Ok(1, wire.OK_MEMORY) and len(fds) == 1
    try:
        assert os.pread(fds[0], 12, 0) == b"memory of d1"
    finally:
        os.close(fds[0])
    # d2, with its own secret, gets its own object and never d1's.
    reply, fds = await hello_for_memory(bell.path, 2, SECRETS[2])
    try:
        assert reply == wire.Ok(2, wire.OK_MEMORY) and os.pread(fds[0], 12, 0) == b"memory of d2"
    finally:
        for fd in fds:
            os.close(fd)
    assert bell.memory_asked == [1, 2]


@pytest.mark.parametrize("domid, secret", [(1, "wrong"), (2, SECRETS[1]), (3, SECRETS[1])])
async def test_a_hello_with_the_wrong_secret_gets_no_memory_object(bell, domid, secret):
    reply, fds = await hello_for_memory(bell.path, domid, secret)
    assert isinstance(reply, wire.Error) and reply.errno == errno.EACCES
    assert fds == [] and bell.memory_asked == []


async def test_a_hello_that_does_not_ask_gets_no_memory_object(bell):
    sock, reply = await bell.hello(1, SECRETS[1])
    assert reply == wire.Ok(1) and bell.memory_asked == []
    sock.close()


async def test_an_adopted_doorbell_gives_memory_only_to_the_domain_it_was_made_for(bell):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    bell.router.adopt(ours, 1)
    with theirs:
        theirs.send(wire.Hello(2, SECRETS[2], wire.HELLO_MEMORY).encode())
        data, fds, _, _ = await asyncio.to_thread(socket.recv_fds, theirs, wire.MAX_DATAGRAM + 1, 4)
    reply = wire.decode(data)
    assert isinstance(reply, wire.Error) and reply.errno == errno.EPERM
    assert fds == [] and bell.memory_asked == []


async def test_a_router_without_on_memory_refuses_to_hand_any(tmp_path):
    d = tempfile.mkdtemp(prefix="xl-db-", dir="/tmp")
    router = UpcallRouter(authenticate, lambda d, p: None)
    path = os.path.join(d, "evtchn.sock")
    try:
        await router.start(path)
        reply, fds = await hello_for_memory(path, 1, SECRETS[1])
        assert isinstance(reply, wire.Error) and reply.errno == errno.EOPNOTSUPP and fds == []
    finally:
        await router.close()
        shutil.rmtree(d, ignore_errors=True)


async def test_a_second_listener_for_a_group_serves_the_same_domains(bell):
    """The domains' doorbell (DomainsDir): mode 0660 and the given group."""
    path = os.path.join(os.path.dirname(bell.path), "domains.sock")
    group = os.getgid()
    await bell.router.start(path, group=group)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group
    reply, fds = await hello_for_memory(path, 2, SECRETS[2])
    for fd in fds:
        os.close(fd)
    assert reply == wire.Ok(2, wire.OK_MEMORY)
    await bell.router.close()
    assert not os.path.exists(path) and not os.path.exists(bell.path)


# -- the read budget counts ports (issue "Hold the boundaries", item 5) ----------------------
async def test_a_send_storm_does_not_hold_back_another_connection(bell):
    from xenlab.hypervisor.doorbell import READ_BUDGET
    storm, _ = await bell.hello(1, SECRETS[1])
    victim, _ = await bell.hello(2, SECRETS[2])
    datagram = wire.Send(tuple(range(1, wire.MAX_SEND_BATCH + 1))).encode()
    queued = 0
    for _ in range(48):              # what the socket takes without blocking
        try:
            storm.send(datagram)
            queued += 1
        except BlockingIOError:
            break
    assert queued >= 8
    victim.send(wire.Send((7,)).encode())
    while (2, 7) not in bell.sent:
        bell.sent_event.clear()
        await bell.sent_event.wait()
    storm_before = bell.sent.index((2, 7))
    # The victim's port went out after at most a wake-up's worth of the storm
    # (two, if the storm's socket was read first twice), not a whole backlog.
    assert storm_before <= 2 * READ_BUDGET < queued * wire.MAX_SEND_BATCH
    await bell.wait_sent(queued * wire.MAX_SEND_BATCH + 1)
    storm.close()
    victim.close()


async def test_duplicate_ports_in_a_wakeup_are_delivered_once(bell):
    sock, _ = await bell.hello(1, SECRETS[1])
    sock.send(wire.Send((5,) * wire.MAX_SEND_BATCH).encode())
    sock.send(wire.Send((6, 5, 6)).encode())
    await bell.wait_sent(2)
    await asyncio.sleep(0.05)
    assert bell.sent == [(1, 5), (1, 6)]
    assert bell.router.stats["coalesced"] == wire.MAX_SEND_BATCH + 3 - 2
    sock.close()


async def test_ports_left_over_are_delivered_without_more_datagrams(bell):
    from xenlab.hypervisor.doorbell import READ_BUDGET
    sock, _ = await bell.hello(1, SECRETS[1])
    ports = [p for p in range(1, 8 * READ_BUDGET + 2) if p != 666]     # 666: refused
    # uneven datagrams, so that a wake-up reads past its budget
    cuts = [0, READ_BUDGET // 2, 2 * READ_BUDGET, 5 * READ_BUDGET, len(ports)]
    for start, stop in zip(cuts, cuts[1:]):
        sock.send(wire.Send(tuple(ports[start:stop])).encode())
    await bell.wait_sent(len(ports))
    assert [p for _, p in bell.sent] == ports
    assert bell.router.stats["deferred"] > 0
    sock.close()
