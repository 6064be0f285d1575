"""veth pairs between processes: two linked endpoints, frames in batches.

A veth pair joins a vif in the driver domain to a port of the bridge
service. Each end is a ``NetDevice``; a frame transmitted into one end comes
out of the other, in order. Frames cross in batches: one datagram carries
as many frames as fit in ``BATCH_BYTES``, never one message per frame.

Transports (the link under a pair):
* ``unix:PATH``: a unix SOCK_SEQPACKET socket, one datagram per batch: the
  fastest path measured between processes on one host;
* ``tcp:HOST:PORT``: a TCP stream carrying the same datagrams, each prefixed
  with its u32 length, for ends in other containers or hosts.

Wire format of a datagram (little endian): magic u16 0x7645, version u8,
op u8, count u16, reserved u16, then for FRAMES ``count`` u16 lengths and
after them the frames, back to back, in that order; for HELLO one JSON
object (utf-8); CARRIER has no body, its ``count`` is 1 when the sending
end is up, 0 when it is down (as veth_open/veth_close turn the peer's
carrier on and off).

Version 2 put the lengths up front (version 1 had a length before each
frame): both ends then pack and split a batch with one call each for the
lengths and the bytes, not a step per frame, which is most of what a
frame costs a veth end. An end of the other version is refused at its
hello, with both versions named.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import socket
import struct
from typing import Awaitable, Callable

from xenlab import eventloop
from xenlab.net.device import NetDevice
from xenlab.rundir import bind_private
from xenlab.xen.digits import is_decimal
import os

log = logging.getLogger(__name__)

MAGIC = 0x7645
VERSION = 2
OP_HELLO = 1
OP_FRAMES = 2
OP_BYE = 3
OP_CARRIER = 4
HEADER = struct.Struct("<HBBHH")
FRAME_LEN = struct.Struct("<H")        # one frame's length; FRAMES carries count of them
_ONE_FRAME = struct.Struct("<HBBHHH")  # the header and the length of a lone frame
STREAM_LEN = struct.Struct("<I")
MAX_FRAME = 0xFFFF
BATCH_BYTES = 60 * 1024             # one datagram, well under the default socket buffers
MAX_DATAGRAM = HEADER.size + FRAME_LEN.size + MAX_FRAME   # the longest: one frame of MAX_FRAME bytes
TX_QUEUE_FRAMES = 8192              # frames waiting for socket space before drops


class VethError(ValueError):
    """A malformed datagram: the link that sent it is closed."""


# -- wire format (pure) ---------------------------------------------------------
def encode_hello(info: dict) -> bytes:
    body = json.dumps(info, sort_keys=True).encode()
    return HEADER.pack(MAGIC, VERSION, OP_HELLO, 0, 0) + body


def encode_bye() -> bytes:
    return HEADER.pack(MAGIC, VERSION, OP_BYE, 0, 0)


def encode_carrier(up: bool) -> bytes:
    return HEADER.pack(MAGIC, VERSION, OP_CARRIER, 1 if up else 0, 0)


def encode_frames(frames: list[bytes], limit: int = BATCH_BYTES) -> list[bytes]:
    """Pack frames into as few datagrams as fit `limit` bytes each."""
    return [_frames_datagram(batch) for batch in batch_frames(frames, limit)]


def batch_frames(frames: list[bytes], limit: int = BATCH_BYTES) -> list[list[bytes]]:
    """The frames of each datagram `encode_frames` makes."""
    if len(frames) == 1 and len(frames[0]) <= MAX_FRAME:
        return [frames]               # a lone frame (a ping) goes alone, however long
    if frames:
        lengths = list(map(len, frames))
        if (max(lengths) <= MAX_FRAME
                and HEADER.size + FRAME_LEN.size * len(frames) + sum(lengths) <= limit):
            return [frames]           # the usual case: one datagram, no step per frame
    batches, batch, size = [], [], HEADER.size
    for frame in frames:
        if len(frame) > MAX_FRAME:
            raise ValueError(f"a frame of {len(frame)} bytes does not fit a veth (max {MAX_FRAME})")
        need = FRAME_LEN.size + len(frame)
        if batch and size + need > limit:
            batches.append(batch)
            batch, size = [], HEADER.size
        batch.append(frame)
        size += need
    if batch:
        batches.append(batch)
    return batches


def _frames_datagram(frames: list[bytes]) -> bytes:
    count = len(frames)
    if count == 1:                    # the same layout, without the batch's calls
        frame = frames[0]
        return _ONE_FRAME.pack(MAGIC, VERSION, OP_FRAMES, 1, 0, len(frame)) + frame
    return b"".join([HEADER.pack(MAGIC, VERSION, OP_FRAMES, count, 0),
                     struct.pack(f"<{count}H", *map(len, frames)), *frames])


def decode(datagram: bytes) -> tuple[int, object]:
    """(op, payload): FRAMES -> list of frames, HELLO -> dict, BYE -> None."""
    if len(datagram) < HEADER.size:
        raise VethError(f"datagram of {len(datagram)} bytes is shorter than the header")
    magic, version, op, count, reserved = HEADER.unpack_from(datagram)
    if magic != MAGIC or reserved:
        raise VethError("bad magic or reserved field")
    if version != VERSION:
        raise VethError(f"the peer speaks veth version {version}; this end speaks {VERSION}")
    if op == OP_FRAMES:
        return op, _decode_frames(bytes(datagram), count)
    body = memoryview(datagram)[HEADER.size:]
    if op == OP_HELLO:
        try:
            info = json.loads(bytes(body))
        except ValueError as err:
            raise VethError(f"bad hello: {err}") from None
        if not isinstance(info, dict):
            raise VethError("hello must be a JSON object")
        return op, info
    if op == OP_BYE:
        return op, None
    if op == OP_CARRIER:
        if count > 1 or len(body):
            raise VethError("a carrier datagram is a header whose count is 0 or 1")
        return op, bool(count)
    raise VethError(f"unknown op {op}")


def _decode_frames(datagram: bytes, count: int) -> list[bytes]:
    if count == 1 and len(datagram) >= _ONE_FRAME.size:
        (length,) = FRAME_LEN.unpack_from(datagram, HEADER.size)     # decode read the header
        if length != len(datagram) - _ONE_FRAME.size:
            raise VethError("the frame's length does not match the datagram's")
        return [datagram[_ONE_FRAME.size:]]
    start = HEADER.size + FRAME_LEN.size * count
    if start > len(datagram):
        raise VethError("frame lengths past the end of the datagram")
    lengths = struct.unpack_from(f"<{count}H", datagram, HEADER.size)
    end = start + sum(lengths)
    if end > len(datagram):
        raise VethError("frame past the end of the datagram")
    if end != len(datagram):
        raise VethError("trailing bytes after the last frame")
    bounds = list(itertools.accumulate(lengths, initial=start))
    return [datagram[a:b] for a, b in zip(bounds, bounds[1:])]


# -- links: how datagrams move ------------------------------------------------------
class _Link:
    """A connected, non-blocking socket that moves whole datagrams."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock = sock

    def send(self, datagram: bytes) -> bool:
        """False when the socket has no room now (try again when writable)."""
        raise NotImplementedError

    def recv(self) -> list[bytes] | None:
        """Datagrams ready now; None at end of stream."""
        raise NotImplementedError


class SeqpacketLink(_Link):
    def send(self, datagram: bytes) -> bool:
        try:
            self.sock.send(datagram)
            return True
        except BlockingIOError:
            return False

    def recv(self) -> list[bytes] | None:
        out = []
        for _ in range(64):
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                break
            if not data:
                return out or None
            out.append(data)
        return out


class StreamLink(_Link):
    def __init__(self, sock: socket.socket):
        super().__init__(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._out = bytearray()
        self._in = bytearray()

    def send(self, datagram: bytes) -> bool:
        if self._out:
            self._flush()
            if self._out:
                return False
        self._out += STREAM_LEN.pack(len(datagram)) + datagram
        self._flush()
        return True

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except BlockingIOError:
            return
        del self._out[:sent]

    @property
    def pending(self) -> bool:
        return bool(self._out)

    def recv(self) -> list[bytes] | None:
        eof = False
        while True:
            try:
                data = self.sock.recv(256 * 1024)
            except BlockingIOError:
                break
            if not data:
                eof = True
                break
            self._in += data
        out = []
        while len(self._in) >= STREAM_LEN.size:
            (length,) = STREAM_LEN.unpack_from(self._in)
            if length > MAX_DATAGRAM:
                raise VethError(f"stream datagram of {length} bytes is too long")
            if len(self._in) < STREAM_LEN.size + length:
                break
            out.append(bytes(self._in[STREAM_LEN.size:STREAM_LEN.size + length]))
            del self._in[:STREAM_LEN.size + length]
        if eof and not out:
            return None
        return out


def parse_address(address: str) -> tuple[str, object]:
    if address.startswith("unix:"):
        return "unix", address[5:]
    if address.startswith("tcp:"):
        host, _, port = address[4:].rpartition(":")
        if not host or not is_decimal(port) or len(port) > 5:
            raise ValueError(f"bad veth address {address!r}: expected tcp:HOST:PORT")
        return "tcp", (host.strip("[]"), int(port))
    raise ValueError(f"bad veth address {address!r}: expected unix:PATH or tcp:HOST:PORT")


# -- the endpoint ---------------------------------------------------------------------
class VethEnd(NetDevice):
    """One end of a veth pair. transmit() sends to the peer end; frames from
    the peer are delivered to this end's receiver.

    Accounting (every frame sent is received or counted as a drop, across
    the pair): a frame counts as sent (tx_packets) once its datagram is in
    the socket, so that frames still queued when the link goes down are
    ``link_down`` drops and nothing else. An end closed on purpose first
    stops the peer sending (shutdown(SHUT_RD): the peer's next send fails
    with EPIPE) and then counts what the peer had sent but this end never
    read as ``closed_unread`` drops. Only a process that dies loses frames
    this way: with its counters.
    """

    def __init__(self, name: str, link: _Link, mac: bytes = b"\0" * 6, mtu: int = 1500,
                 peer_info: dict | None = None, pending: list[bytes] | None = None):
        super().__init__(name, mac, mtu)
        self.link = link
        self.peer_info = peer_info or {}
        self._queue: collections.deque[tuple[bytes, list[bytes]]] = collections.deque()
        self._queued_frames = 0
        self._writing = False
        self._closed = False
        self._announced = True            # what the peer last heard of our link
        self._room = asyncio.Event()       # set when the queue shrank (or the link went)
        self.closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(link.sock.fileno(), self._on_readable)
        if pending:
            # Datagrams that came with the peer's hello: once our owner has
            # attached a receiver (it does so before it next yields).
            self._loop.call_soon(self._take, pending)

    @property
    def state(self) -> str:
        return "down" if self._closed else "up"

    def tx_room(self) -> int | None:
        # A link that went has no bound: transmit() counts what it is given
        # as link_down drops, and a sender waiting for room must not wait
        # (or spin) on it.
        return None if self._closed else TX_QUEUE_FRAMES - self._queued_frames

    async def wait_room(self, frames: int) -> None:
        while not self._closed and self.tx_room() < frames:
            self._room.clear()
            await self._room.wait()

    def transmit(self, frames: list[bytes]) -> None:
        if self._closed:
            self.drop("link_down", len(frames))
            return
        if self.refuse_tx(frames):
            return
        room = TX_QUEUE_FRAMES - self._queued_frames
        if len(frames) > room:
            self.drop("tx_queue_full", len(frames) - max(room, 0))
            frames = frames[:max(room, 0)]
        if frames and max(map(len, frames)) > MAX_FRAME:
            kept = [f for f in frames if len(f) <= MAX_FRAME]
            self.drop("oversize", len(frames) - len(kept))
            frames = kept
        if not frames:
            return
        for batch in batch_frames(frames):
            self._queue.append((_frames_datagram(batch), batch))
        self._queued_frames += len(frames)
        self._flush()

    def _flush(self) -> None:
        while self._queue:
            datagram, batch = self._queue[0]
            try:
                ok = self.link.send(datagram)
            except OSError as err:
                self._fail(f"send failed: {err}")
                return
            if not ok:
                break
            self._queue.popleft()
            self._queued_frames -= len(batch)
            self.count_tx(batch)
            self._room.set()
        pending = bool(self._queue) or getattr(self.link, "pending", False)
        if pending and not self._writing:
            self._loop.add_writer(self.link.sock.fileno(), self._flush)
            self._writing = True
        elif not pending and self._writing:
            self._loop.remove_writer(self.link.sock.fileno())
            self._writing = False

    def _on_readable(self) -> None:
        try:
            datagrams = self.link.recv()
        except (OSError, VethError) as err:
            self._fail(str(err))
            return
        if datagrams is None:
            self._fail("peer closed")
            return
        self._take(datagrams)

    def _take(self, datagrams: list[bytes]) -> None:
        if self._closed:
            return
        for datagram in datagrams:
            try:
                op, payload = decode(datagram)
            except VethError as err:
                self.drop("malformed")
                self._fail(f"malformed datagram: {err}")
                return
            if op == OP_FRAMES:
                self.deliver(payload)
            elif op == OP_CARRIER:
                self.set_carrier(payload)
            elif op == OP_BYE:
                self._fail("peer said bye")
                return

    def announce(self, up: bool) -> None:
        """Tell the peer whether this end is up: its carrier follows."""
        if up == self._announced or self._closed:
            return
        self._announced = up
        # Behind the frames already queued, as the peer would have seen them first.
        self._queue.append((encode_carrier(up), []))
        self._flush()

    def _fail(self, why: str) -> None:
        if not self._closed:
            log.info("%s: link down: %s", self.name, why)
        self.close(say_bye=False)

    def close(self, say_bye: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if say_bye:
            try:
                self.link.send(encode_bye())
            except OSError:
                pass
        fd = self.link.sock.fileno()
        if fd >= 0:
            self._loop.remove_reader(fd)
            if self._writing:
                self._loop.remove_writer(fd)
        dropped = self._queued_frames
        if dropped:
            self.drop("link_down", dropped)
            self._queued_frames = 0
            self._queue.clear()
        self._drain_unread()
        self.link.sock.close()
        self._room.set()
        self.closed.set()

    def _drain_unread(self) -> None:
        """Stop the peer sending and count what it sent that we never read."""
        try:
            self.link.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        for _ in range(4096):           # bounded: the socket holds a finite backlog
            try:
                datagrams = self.link.recv()
            except (OSError, VethError):
                return
            if not datagrams:
                return
            for datagram in datagrams:
                try:
                    op, payload = decode(datagram)
                except VethError:
                    continue
                if op == OP_FRAMES and payload:
                    self.drop("closed_unread", len(payload))


async def _read_hello(sock: socket.socket, link: _Link, timeout: float) -> tuple[dict, list[bytes]]:
    """The peer's hello, and whatever it sent right after it."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise VethError("no hello in time")
            await eventloop.wait_for(asyncio.shield(ready), remaining)
            datagrams = link.recv()
            if datagrams is None:
                raise VethError("closed before hello")
            if datagrams:
                op, payload = decode(datagrams[0])
                if op != OP_HELLO:
                    raise VethError("the first datagram must be a hello")
                # The listener attaches its end as it answers, so frames (a
                # flood on the bridge) may follow the answer at once.
                return payload, datagrams[1:]
            ready = loop.create_future()
            loop.remove_reader(sock.fileno())
            loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    finally:
        loop.remove_reader(sock.fileno())


async def connect_veth(address: str, name: str, hello: dict, mac: bytes = b"\0" * 6,
                       mtu: int = 1500, timeout: float = 5.0) -> VethEnd:
    """Connect this end to a listening peer (the bridge service): send our
    hello, get the peer's hello back, return the end."""
    kind, where = parse_address(address)
    loop = asyncio.get_running_loop()
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            await eventloop.wait_for(loop.sock_connect(sock, where), timeout)
        except BaseException:
            sock.close()
            raise
        link: _Link = SeqpacketLink(sock)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in where[0] else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await eventloop.wait_for(loop.sock_connect(sock, where), timeout)
        except BaseException:
            sock.close()
            raise
        link = StreamLink(sock)
    try:
        if not link.send(encode_hello({**hello, "name": name})):
            raise VethError("no room to send hello")
        peer, pending = await _read_hello(sock, link, timeout)
        if peer.get("error"):
            raise VethError(str(peer["error"]))
    except BaseException:
        sock.close()
        raise
    return VethEnd(name, link, mac, mtu, peer, pending)


AcceptCallback = Callable[[dict], Awaitable[tuple[str, dict]] | tuple[str, dict]]
PortCallback = Callable[[VethEnd], None]


class VethListener:
    """The bridge service's side: accepts veth connections. For each, the
    `admit(hello)` callback returns (end name, reply info) or raises
    VethError(reason) to refuse; `attached(end)` gets the new end."""

    def __init__(self, address: str, admit: AcceptCallback, attached: PortCallback,
                 hello_timeout: float = 5.0):
        self.address = address
        self.admit = admit
        self.attached = attached
        self.hello_timeout = hello_timeout
        self.sock: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()
        self.bound_address = address

    async def start(self) -> None:
        kind, where = parse_address(self.address)
        if kind == "unix":
            if os.path.exists(where):
                os.unlink(where)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            bind_private(sock, where)
        else:
            sock = socket.socket(socket.AF_INET6 if ":" in where[0] else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(where)
            host, port = sock.getsockname()[:2]
            self.bound_address = f"tcp:{host}:{port}"
        sock.listen(128)
        sock.setblocking(False)
        self.sock = sock
        self._accepting = asyncio.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            task = asyncio.create_task(self._handshake(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        link = SeqpacketLink(conn) if conn.family == socket.AF_UNIX else StreamLink(conn)
        try:
            hello, pending = await _read_hello(conn, link, self.hello_timeout)
            result = self.admit(hello)
            if asyncio.iscoroutine(result):
                result = await result
            name, reply = result
        except (VethError, asyncio.TimeoutError, OSError) as err:
            log.warning("refused a veth connection: %s", err)
            try:
                link.send(encode_hello({"error": str(err)}))
            except OSError:
                pass
            conn.close()
            return
        link.send(encode_hello(reply))
        end = VethEnd(name, link, peer_info=hello, pending=pending)
        self.attached(end)

    async def close(self) -> None:
        if self.sock is None:
            return
        self._accepting.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(self._accepting, *self._tasks, return_exceptions=True)
        self.sock.close()
        kind, where = parse_address(self.address)
        if kind == "unix":
            try:
                os.unlink(where)
            except FileNotFoundError:
                pass
        self.sock = None
