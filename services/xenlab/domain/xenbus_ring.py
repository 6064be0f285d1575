"""The guest kernel's way to xenstored: its store ring (Linux's
xenbus_comms.c, and the request half of xenbus_xs.c).

start_info names the store page and the store port, which the toolstack
set up and xenstored bound at creation. Requests go onto the ring as
xs_wire.h messages, each with a req_id; replies are matched back by it;
watch events arrive unsolicited. A notification on the store port says
xenstored moved something; one from us says we did.

``RingXenStore`` answers the XenStore service's calls (Read, Write, Rm,
Directory, TransactionStart/End, WatchStream) from the ring, failing as the
gRPC service fails (the same status for the same errno, through
xenlab.rpc.grpc_status), so that XenbusClient and the drivers run on either
unchanged. gRPC's XenStore stays for clients outside the lab.
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import logging
from dataclasses import dataclass
from typing import Callable

import grpc

from xenlab.proto import common_pb2, xenstore_pb2
from xenlab.xen import xs_wire as w
from xenlab.rpc import grpc_status
from xenlab.xen.errors import XenStoreError
from xenlab.xen.xs_ring import XsRingEnd, XsRingError, XsRingPage
from xenlab.xen.xs_wire import XsMessage, XsType

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF


def _failure(err: int, what: str) -> grpc.aio.AioRpcError:
    """The error the gRPC service would have raised for ``err``."""
    status = grpc_status(XenStoreError(err))
    return grpc.aio.AioRpcError(status, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                details=f"{w.error_name(err)}: {what}")


def _lost(reason: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                details=f"xenstore connection lost: {reason}")


class StoreRing:
    """The guest's end of its store ring: requests out, replies matched by
    req_id, watch events to ``on_event``."""

    def __init__(self, frame: memoryview, port: int, evtchn) -> None:
        self._frame = frame
        self.page = XsRingPage(frame)
        self.end = XsRingEnd(self.page, server=False)
        self.port = port
        self.evtchn = evtchn
        self.reader = w.MessageReader()
        self._out = bytearray()
        self._waiting: dict[int, tuple[asyncio.Future, Callable[[XsMessage], None] | None]] = {}
        self._ids = itertools.count(1)
        self.on_event: Callable[[str, str], None] | None = None
        self.on_lost: Callable[[grpc.aio.AioRpcError], None] | None = None
        self.lost: grpc.aio.AioRpcError | None = None
        evtchn.bind_handler(port, self._on_notify)

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

    def _next_id(self) -> int:
        while True:
            req_id = next(self._ids) & _U32
            if req_id and req_id not in self._waiting:
                return req_id

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
                    self.reader.feed(data)
                    progressed = True
                    while (msg := self.reader.next()) is not None:
                        self._dispatch(msg)
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
        self.lost = _lost(reason, grpc.StatusCode.CANCELLED if closing else grpc.StatusCode.UNAVAILABLE)
        waiting, self._waiting = self._waiting, {}
        for fut, _ in waiting.values():
            if not fut.done():
                fut.set_exception(self.lost)
        if self.on_lost is not None:
            self.on_lost(self.lost)

    def close(self) -> None:
        """Every call still waiting fails (CANCELLED), watch callbacks
        blocked on one included."""
        self.evtchn.unbind_handler(self.port)
        if self.lost is None:
            self._lose("closed", closing=True)
        self.page.release()
        self._frame.release()


class RingXenStore:
    """The XenStore service's calls, over the store ring."""

    def __init__(self, ring: StoreRing) -> None:
        self.ring = ring
        self._stream: _RingWatchStream | None = None
        ring.on_event = self._event
        ring.on_lost = self._lost

    async def _request(self, type_: int, payload: bytes, tx: int, what: str) -> bytes:
        msg = await self.ring.call(type_, payload, tx)
        if msg.type == XsType.ERROR:
            raise _failure(w.error_from_payload(msg.payload), what)
        return msg.payload

    @staticmethod
    def _path(path: str) -> bytes:
        return path.encode("latin-1") + b"\0"

    async def Read(self, request, timeout=None):
        value = await self._request(XsType.READ, self._path(request.path), request.tx, request.path)
        return xenstore_pb2.Value(value=value)

    async def Write(self, request, timeout=None):
        await self._request(XsType.WRITE, self._path(request.path) + request.value, request.tx,
                            request.path)
        return common_pb2.Empty()

    async def Mkdir(self, request, timeout=None):
        await self._request(XsType.MKDIR, self._path(request.path), request.tx, request.path)
        return common_pb2.Empty()

    async def Rm(self, request, timeout=None):
        await self._request(XsType.RM, self._path(request.path), request.tx, request.path)
        return common_pb2.Empty()

    async def Directory(self, request, timeout=None):
        path = self._path(request.path)
        msg = await self.ring.call(XsType.DIRECTORY, path, request.tx)
        if msg.type != XsType.ERROR:
            names = w.strings(msg.payload)
        elif w.error_from_payload(msg.payload) == errno.E2BIG:
            names = await self._directory_part(path, request)     # as xs_directory does
        else:
            raise _failure(w.error_from_payload(msg.payload), request.path)
        return xenstore_pb2.Children(names=[n.decode("latin-1") for n in names])

    async def _directory_part(self, path: bytes, request) -> list[bytes]:
        """libxenstore's xs_directory_part: the list a piece at a time,
        started over if its generation changes."""
        got, gen = b"", None
        while True:
            answer = await self._request(XsType.DIRECTORY_PART, path + str(len(got)).encode() + b"\0",
                                         request.tx, request.path)
            part_gen, _, part = answer.partition(b"\0")
            if gen is not None and part_gen != gen:
                got, gen = b"", None
                continue
            gen, got = part_gen, got + part
            if len(got) <= 1 or got.endswith(b"\0\0"):
                return w.strings(got[:-1]) if len(got) > 1 else []

    async def GetPerms(self, request, timeout=None):
        answer = await self._request(XsType.GET_PERMS, self._path(request.path), request.tx,
                                     request.path)
        perms = [w.perm_from_string(p) for p in w.strings(answer)]
        return xenstore_pb2.Perms(perms=[xenstore_pb2.Perm(domid=d, perm=p) for d, p in perms])

    async def SetPerms(self, request, timeout=None):
        strings = b"".join(w.perm_to_string(p.domid, p.perm) + b"\0" for p in request.perms)
        await self._request(XsType.SET_PERMS, self._path(request.path) + strings, request.tx,
                            request.path)
        return common_pb2.Empty()

    async def TransactionStart(self, request, timeout=None):
        answer = await self._request(XsType.TRANSACTION_START, b"\0", 0, "transaction")
        return xenstore_pb2.Transaction(tx=int(answer.rstrip(b"\0")))

    async def TransactionEnd(self, request, timeout=None):
        await self._request(XsType.TRANSACTION_END, b"T\0" if request.commit else b"F\0",
                            request.tx, f"transaction {request.tx}")
        return common_pb2.Empty()

    def WatchStream(self, request_iterator) -> "_RingWatchStream":
        if self._stream is not None:
            self._stream.cancel()
        self._stream = _RingWatchStream(self, request_iterator)
        return self._stream

    def _event(self, path: str, token: str) -> None:
        if self._stream is not None:
            self._stream.put(xenstore_pb2.WatchEvent(path=path, token=token))

    def _lost(self, err: grpc.aio.AioRpcError) -> None:
        if self._stream is not None:
            self._stream.end(err)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        self.ring.close()


_END = object()


class _RingWatchStream:
    """WatchStream: WatchControls in, acks and watch events out, in the
    order xenstored answered and fired them."""

    def __init__(self, store: RingXenStore, controls) -> None:
        self.store = store
        self.queue: asyncio.Queue = asyncio.Queue()
        self._ending: grpc.aio.AioRpcError | None = None
        self._controls = asyncio.get_running_loop().create_task(self._send(controls))

    async def _send(self, controls) -> None:
        async for control in controls:
            op = XsType.WATCH if control.op == xenstore_pb2.WatchControl.WATCH else XsType.UNWATCH
            payload = w.join(control.path.encode("latin-1"), control.token.encode("latin-1"))
            # The ack is queued as its reply is read, ahead of the event a
            # new watch fires right after it.
            try:
                await self.store.ring.call(op, payload,
                                           on_reply=lambda msg, c=control: self._ack(c, msg))
            except grpc.aio.AioRpcError:
                return          # the connection is gone: the stream ends with it

    def _ack(self, control, msg: XsMessage) -> None:
        ack = xenstore_pb2.WatchEvent(path=control.path, token=control.token, ack=True)
        if msg.type == XsType.ERROR:
            err = w.error_from_payload(msg.payload)
            ack.errno = err
            ack.error = f"{w.error_name(err)}: {control.path}"
        self.put(ack)

    def put(self, event) -> None:
        self.queue.put_nowait(event)

    def end(self, err: grpc.aio.AioRpcError) -> None:
        self._ending = err
        self._controls.cancel()
        self.queue.put_nowait(_END)

    def cancel(self) -> bool:
        if self._ending is None:
            self.end(grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(),
                                          grpc.aio.Metadata(), details="cancelled"))
        return True

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.queue.get()
        if item is _END:
            self.queue.put_nowait(_END)
            raise self._ending
        return item


@dataclass
class RingTransport:
    """What XenbusClient takes from a HypervisorClient: its ``xenstore``."""
    xenstore: RingXenStore

    @classmethod
    def open(cls, memory, evtchn, gfn: int, port: int) -> "RingTransport":
        return cls(RingXenStore(StoreRing(memory.frame(gfn), port, evtchn)))

    def close(self) -> None:
        self.xenstore.close()
