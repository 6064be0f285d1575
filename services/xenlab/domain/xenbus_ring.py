"""The guest kernel's way to xenstored: its store ring (Linux's
xenbus_comms.c, and the request half of xenbus_xs.c), or, for Domain-0,
xenstored's unix socket.

start_info names the store page and the store port, which the toolstack
set up and xenstored bound at creation. Requests go onto the ring as
xs_wire.h messages, each with a req_id; replies are matched back by it;
watch events arrive unsolicited. A notification on the store port says
xenstored moved something; one from us says we did.

Domain-0 has no store ring from the toolstack: xenstored runs beside it
(here in the hypervisor's process; in a Linux Domain-0, in its user space,
which its kernel reaches locally, XS_LOCAL, and its tools through the
socket). Its kernel speaks the same xs_wire.h messages over xenstored's
socket (start_info's ``xenstored``): the cost of a request there is
xenstored's own work, where the gRPC service adds a call's worth of
HTTP/2 and protobuf to each one, in the hypervisor and in Domain-0.

``WireXenStore`` is a XenStoreTransport (xenlab.domain.hypercall.xenstore)
over either carrier: it answers XenbusClient's calls as the hypervisor's
XenStore service answers them (the same errno for the same refusal), so
that XenbusClient and the drivers run on any of the three unchanged. The
service stays for clients outside the lab.
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import logging
from typing import Callable, Sequence

from xenlab.xen import xs_wire as w
from xenlab.xen.errors import XenError, XenStoreError
from xenlab.xen.xs_ring import XsRingEnd, XsRingError, XsRingPage
from xenlab.xen.xs_wire import XsMessage, XsType

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF


def _failure(err: int, what: str) -> XenStoreError:
    """xenstored's refusal, as the XenStore service words it."""
    return XenStoreError(err, f"{w.error_name(err)}: {what}")


def _lost(reason: str, closing: bool = False) -> XenStoreError:
    return XenStoreError(errno.ECANCELED if closing else errno.ENOTCONN,
                         f"xenstore connection lost: {reason}")


class _Requests:
    """What every carrier shares (xenbus_xs.c): requests out with a req_id
    each, replies matched back by it, watch events to ``on_event``, and
    every caller told once the connection is lost. A carrier moves
    ``_out`` and feeds ``reader`` in ``_pump``."""

    def __init__(self) -> None:
        self.reader = w.MessageReader()
        self._out = bytearray()
        self._waiting: dict[int, tuple[asyncio.Future, Callable[[XsMessage], None] | None]] = {}
        self._ids = itertools.count(1)
        self.on_event: Callable[[str, str], None] | None = None
        self.on_lost: Callable[[XenError], None] | None = None
        self.lost: XenError | None = None

    def call(self, type_: int, payload: bytes, tx: int = 0,
             on_reply: Callable[[XsMessage], None] | None = None) -> asyncio.Future:
        """Send a request; the future gets its reply message. ``on_reply``
        runs as the reply is read, before any event after it."""
        fut = asyncio.get_running_loop().create_future()
        if self.lost is not None:
            fut.set_exception(self.lost)
            return fut
        req_id = self._next_id()
        self._waiting[req_id] = (fut, on_reply)
        self._out += w.encode(XsMessage(type_, req_id, tx, payload))
        self._pump()
        return fut

    def _pump(self) -> None:
        raise NotImplementedError

    def _next_id(self) -> int:
        while True:
            req_id = next(self._ids) & _U32
            if req_id and req_id not in self._waiting:
                return req_id

    def _received(self, data: bytes) -> None:
        """Bytes from xenstored: every whole message in them handled, the
        rest kept for the next; raises WireError on what is not xs_wire."""
        self.reader.feed(data)
        while (msg := self.reader.next()) is not None:
            self._dispatch(msg)

    def _dispatch(self, msg: XsMessage) -> None:
        if msg.type == XsType.WATCH_EVENT:
            parts = w.strings(msg.payload)
            if len(parts) >= 2 and self.on_event is not None:
                self.on_event(parts[0].decode("latin-1"), parts[1].decode("latin-1"))
            return
        waiter = self._waiting.pop(msg.req_id, None)
        if waiter is None:
            log.warning("xenbus: a reply to request %d, which is not outstanding", msg.req_id)
            return
        fut, on_reply = waiter
        if on_reply is not None:
            on_reply(msg)
        if not fut.done():
            fut.set_result(msg)

    def _lose(self, reason: str, closing: bool = False) -> None:
        if not closing:
            log.error("xenbus: %s", reason)
        self.lost = _lost(reason, closing)
        waiting, self._waiting = self._waiting, {}
        for fut, _ in waiting.values():
            if not fut.done():
                fut.set_exception(self.lost)
        if self.on_lost is not None:
            self.on_lost(self.lost)


class StoreRing(_Requests):
    """The guest's end of its store ring."""

    carrier = "its store ring"

    def __init__(self, frame: memoryview, port: int, evtchn) -> None:
        super().__init__()
        self._frame = frame
        self.page = XsRingPage(frame)
        self.end = XsRingEnd(self.page, server=False)
        self.port = port
        self.evtchn = evtchn
        evtchn.bind_handler(port, self._on_notify)

    def _on_notify(self, port: int) -> None:
        self._pump()

    def _pump(self) -> None:
        if self.lost is not None:
            return
        moved = False
        try:
            while True:
                progressed = False
                if self._out:
                    n = self.end.write(bytes(self._out[:w.XENSTORE_RING_SIZE]))
                    del self._out[:n]
                    progressed |= n > 0
                data = self.end.read()
                if data:
                    self._received(data)
                    progressed = True
                moved |= progressed
                if not progressed:
                    break
            if self.page.error:
                raise XsRingError(f"xenstored ended our connection (error {self.page.error})",
                                  self.page.error)
        except (XsRingError, w.WireError) as err:
            self._lose(str(err))
            return
        if moved:
            self.evtchn.notify(self.port)

    def close(self) -> None:
        """Every call still waiting fails (CANCELLED), watch callbacks
        blocked on one included."""
        self.evtchn.unbind_handler(self.port)
        if self.lost is None:
            self._lose("closed", closing=True)
        self.page.release()
        self._frame.release()


class StoreSocket(_Requests, asyncio.Protocol):
    """Domain-0's end of xenstored's unix socket: the same messages as on
    a ring, carried by a stream; asyncio's flow control holds back what
    xenstored is not reading."""

    carrier = "xenstored's socket"

    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None
        self._writable = True

    @classmethod
    async def connect(cls, path: str) -> "StoreSocket":
        """Raises OSError if xenstored is not listening at ``path``."""
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_unix_connection(cls, path)
        return protocol

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.lost is not None:
            return
        try:
            self._received(data)
        except w.WireError as err:
            self._lose(f"xenstored sent what is not xs_wire: {err}")
            self.transport.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        if self.lost is None:
            self._lose(f"xenstored closed its socket{f' ({exc})' if exc else ''}")

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._pump()

    def _pump(self) -> None:
        if self.lost is None and self._writable and self._out:
            self.transport.write(bytes(self._out))
            self._out.clear()

    def close(self) -> None:
        if self.lost is None:
            self._lose("closed", closing=True)
        if self.transport is not None:
            self.transport.close()


class WireXenStore:
    """xenstore requests in xs_wire messages (a XenStoreTransport), over a
    store ring or xenstored's socket."""

    def __init__(self, ring: StoreRing | StoreSocket) -> None:
        self.ring = ring
        self._on_event: Callable[[str, str], None] | None = None
        self._on_lost: Callable[[XenError], None] | None = None
        ring.on_event = self._event
        ring.on_lost = self._lost

    @classmethod
    def open(cls, memory, evtchn, gfn: int, port: int) -> "WireXenStore":
        """The store ring at our frame ``gfn``, notified on ``port``."""
        return cls(StoreRing(memory.frame(gfn), port, evtchn))

    @classmethod
    async def connect(cls, path: str) -> "WireXenStore":
        """xenstored's unix socket at ``path`` (Domain-0's); raises OSError."""
        return cls(await StoreSocket.connect(path))

    async def _request(self, type_: int, payload: bytes, tx: int, what: str) -> bytes:
        msg = await self.ring.call(type_, payload, tx)
        if msg.type == XsType.ERROR:
            raise _failure(w.error_from_payload(msg.payload), what)
        return msg.payload

    @staticmethod
    def _path(path: str) -> bytes:
        return path.encode("latin-1") + b"\0"

    async def read(self, path: str, tx: int = 0) -> bytes:
        return await self._request(XsType.READ, self._path(path), tx, path)

    async def write(self, path: str, value: bytes, tx: int = 0) -> None:
        await self._request(XsType.WRITE, self._path(path) + value, tx, path)

    async def mkdir(self, path: str, tx: int = 0) -> None:
        await self._request(XsType.MKDIR, self._path(path), tx, path)

    async def rm(self, path: str, tx: int = 0) -> None:
        await self._request(XsType.RM, self._path(path), tx, path)

    async def directory(self, path: str, tx: int = 0) -> list[str]:
        raw = self._path(path)
        msg = await self.ring.call(XsType.DIRECTORY, raw, tx)
        if msg.type != XsType.ERROR:
            names = w.strings(msg.payload)
        elif w.error_from_payload(msg.payload) == errno.E2BIG:
            names = await self._directory_part(raw, path, tx)     # as xs_directory does
        else:
            raise _failure(w.error_from_payload(msg.payload), path)
        return [n.decode("latin-1") for n in names]

    async def _directory_part(self, raw: bytes, path: str, tx: int) -> list[bytes]:
        """libxenstore's xs_directory_part: the list a piece at a time,
        started over if its generation changes."""
        got, gen = b"", None
        while True:
            answer = await self._request(XsType.DIRECTORY_PART, raw + str(len(got)).encode() + b"\0",
                                         tx, path)
            part_gen, _, part = answer.partition(b"\0")
            if gen is not None and part_gen != gen:
                got, gen = b"", None
                continue
            gen, got = part_gen, got + part
            if len(got) <= 1 or got.endswith(b"\0\0"):
                return w.strings(got[:-1]) if len(got) > 1 else []

    async def get_perms(self, path: str, tx: int = 0) -> list[tuple[int, str]]:
        answer = await self._request(XsType.GET_PERMS, self._path(path), tx, path)
        return [w.perm_from_string(p) for p in w.strings(answer)]

    async def set_perms(self, path: str, perms: Sequence[tuple[int, str]], tx: int = 0) -> None:
        strings = b"".join(w.perm_to_string(domid, perm) + b"\0" for domid, perm in perms)
        await self._request(XsType.SET_PERMS, self._path(path) + strings, tx, path)

    async def transaction_start(self) -> int:
        answer = await self._request(XsType.TRANSACTION_START, b"\0", 0, "transaction")
        return int(answer.rstrip(b"\0"))

    async def transaction_end(self, tx: int, commit: bool) -> None:
        await self._request(XsType.TRANSACTION_END, b"T\0" if commit else b"F\0", tx,
                            f"transaction {tx}")

    # -- watches ----------------------------------------------------------------------
    async def open_watches(self, on_event: Callable[[str, str], None],
                           on_lost: Callable[[XenError], None]) -> None:
        self._on_event, self._on_lost = on_event, on_lost
        if self.ring.lost is not None:
            on_lost(self.ring.lost)

    async def watch(self, path: str, token: str) -> None:
        # Acknowledged as its reply is read, ahead of the event the new
        # watch fires right after it.
        await self._request(XsType.WATCH, w.join(path.encode("latin-1"), token.encode("latin-1")),
                            0, path)

    async def unwatch(self, path: str, token: str) -> None:
        await self._request(XsType.UNWATCH, w.join(path.encode("latin-1"), token.encode("latin-1")),
                            0, path)

    def _event(self, path: str, token: str) -> None:
        if self._on_event is not None:
            self._on_event(path, token)

    def _lost(self, err: XenError) -> None:
        if self._on_lost is not None:
            self._on_lost(err)

    async def close(self) -> None:
        self.ring.close()
