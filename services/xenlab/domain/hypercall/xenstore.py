"""xenstore requests as a domain's kernel makes them, typed: what
XenbusClient (xenlab.domain.xenbus) needs of xenstored, whichever way it is
reached. A guest reaches it over its store ring (xenlab.domain.xenbus_ring);
a kernel started without one, or a tool, over the hypervisor's XenStore
service (``GrpcXenStore`` here). Both answer the same calls the same way:
values as bytes, paths absolute, a refusal a XenStoreError with xenstored's
errno (ENOENT, EACCES, EAGAIN for a transaction that must be retried...),
and a lost connection ENOTCONN (ECANCELED once closed on purpose).

Watch events go to ``on_event(path, token)`` in the order xenstored fired
them; a watch's acknowledgement comes before the event the new watch fires
at once, as xs_watch returns before it. ``on_lost(error)`` is told once the
connection is gone.
"""
from __future__ import annotations

import asyncio
import collections
import errno
from typing import Callable, Protocol, Sequence

import grpc

from xenlab.proto import common_pb2, xenstore_pb2
from xenlab.rpc import call, xen_error
from xenlab.xen.errors import XenError, XenStoreError

EventCallback = Callable[[str, str], None]
LostCallback = Callable[[XenError], None]


class XenStoreTransport(Protocol):
    async def read(self, path: str, tx: int = 0) -> bytes: ...
    async def write(self, path: str, value: bytes, tx: int = 0) -> None: ...
    async def mkdir(self, path: str, tx: int = 0) -> None: ...
    async def rm(self, path: str, tx: int = 0) -> None: ...
    async def directory(self, path: str, tx: int = 0) -> list[str]: ...
    async def get_perms(self, path: str, tx: int = 0) -> list[tuple[int, str]]: ...
    async def set_perms(self, path: str, perms: Sequence[tuple[int, str]], tx: int = 0) -> None: ...
    async def transaction_start(self) -> int: ...
    async def transaction_end(self, tx: int, commit: bool) -> None: ...
    async def open_watches(self, on_event: EventCallback, on_lost: LostCallback) -> None: ...
    async def watch(self, path: str, token: str) -> None: ...
    async def unwatch(self, path: str, token: str) -> None: ...
    async def close(self) -> None: ...


class GrpcXenStore:
    """xenstore over the XenStore service, as this domain; watches over
    one WatchStream."""

    def __init__(self, stub):
        self._stub = stub
        self._outgoing: asyncio.Queue | None = None
        self._acks: collections.deque[asyncio.Future] = collections.deque()
        self._call = None
        self._reader: asyncio.Task | None = None
        self._lost: XenError | None = None

    async def read(self, path: str, tx: int = 0) -> bytes:
        reply = await call(self._stub.Read(xenstore_pb2.PathRequest(path=path, tx=tx)),
                           XenStoreError)
        return reply.value

    async def write(self, path: str, value: bytes, tx: int = 0) -> None:
        await call(self._stub.Write(xenstore_pb2.WriteRequest(path=path, value=value, tx=tx)),
                   XenStoreError)

    async def mkdir(self, path: str, tx: int = 0) -> None:
        await call(self._stub.Mkdir(xenstore_pb2.PathRequest(path=path, tx=tx)), XenStoreError)

    async def rm(self, path: str, tx: int = 0) -> None:
        await call(self._stub.Rm(xenstore_pb2.PathRequest(path=path, tx=tx)), XenStoreError)

    async def directory(self, path: str, tx: int = 0) -> list[str]:
        reply = await call(self._stub.Directory(xenstore_pb2.PathRequest(path=path, tx=tx)),
                           XenStoreError)
        return list(reply.names)

    async def get_perms(self, path: str, tx: int = 0) -> list[tuple[int, str]]:
        reply = await call(self._stub.GetPerms(xenstore_pb2.PathRequest(path=path, tx=tx)),
                           XenStoreError)
        return [(p.domid, p.perm) for p in reply.perms]

    async def set_perms(self, path: str, perms: Sequence[tuple[int, str]], tx: int = 0) -> None:
        await call(self._stub.SetPerms(xenstore_pb2.SetPermsRequest(
            path=path, tx=tx, perms=[xenstore_pb2.Perm(domid=d, perm=p) for d, p in perms])),
            XenStoreError)

    async def transaction_start(self) -> int:
        return (await call(self._stub.TransactionStart(common_pb2.Empty()), XenStoreError)).tx

    async def transaction_end(self, tx: int, commit: bool) -> None:
        await call(self._stub.TransactionEnd(xenstore_pb2.TransactionEndRequest(
            tx=tx, commit=commit)), XenStoreError)

    # -- watches ----------------------------------------------------------------------
    async def open_watches(self, on_event: EventCallback, on_lost: LostCallback) -> None:
        self._outgoing = asyncio.Queue()
        self._call = self._stub.WatchStream(self._requests())
        self._reader = asyncio.get_running_loop().create_task(
            self._read(on_event, on_lost), name="xenstore watches")

    async def _requests(self):
        while True:
            item = await self._outgoing.get()
            if item is None:
                return
            yield item

    async def _read(self, on_event: EventCallback, on_lost: LostCallback) -> None:
        lost: XenError = XenStoreError(errno.ENOTCONN, "the hypervisor ended the watch stream")
        try:
            async for event in self._call:
                if not event.ack:
                    on_event(event.path, event.token)
                elif self._acks:
                    ack = self._acks.popleft()
                    if not ack.done():
                        ack.set_result(event)
        except grpc.aio.AioRpcError as err:
            lost = xen_error(err, XenStoreError)
        except asyncio.CancelledError:
            lost = XenStoreError(errno.ECANCELED, "closed")
            raise
        finally:
            self._lost = lost
            acks, self._acks = self._acks, collections.deque()
            for ack in acks:
                if not ack.done():
                    ack.set_exception(lost)
            on_lost(lost)

    async def _control(self, op, path: str, token: str) -> None:
        if self._lost is not None:
            raise self._lost
        if self._outgoing is None:
            raise XenStoreError(errno.ENOTCONN, "watches are not open")
        ack = asyncio.get_running_loop().create_future()
        # The stream carries controls in the order queued and xenstored
        # acknowledges them in that order.
        self._acks.append(ack)
        self._outgoing.put_nowait(xenstore_pb2.WatchControl(op=op, path=path, token=token))
        event = await ack
        if event.error:
            raise XenStoreError(event.errno or errno.EINVAL, event.error)

    async def watch(self, path: str, token: str) -> None:
        await self._control(xenstore_pb2.WatchControl.WATCH, path, token)

    async def unwatch(self, path: str, token: str) -> None:
        await self._control(xenstore_pb2.WatchControl.UNWATCH, path, token)

    async def close(self) -> None:
        if self._outgoing is not None:
            self._outgoing.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
