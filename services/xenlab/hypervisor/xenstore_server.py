"""gRPC adapter for xenlab.proto.XenStore.

A WatchStream is one xenstore connection: its watches live as long as the
stream. The core delivers events through ``XenStoreConnections.fire``, so the
glue wires the two together:

    connections = XenStoreConnections()
    xs = XenStore(fire=connections.fire)
    XenStoreServicer(hv, connections)       # hv.xenstore is xs
"""
from __future__ import annotations

import asyncio
import errno
import logging

from xenlab.hypervisor.identity import Caller
from xenlab.proto import common_pb2, xenstore_pb2, xenstore_pb2_grpc
from xenlab.rpc import handles_xen_errors
from xenlab.xen.errors import XenError, XenStoreError

log = logging.getLogger(__name__)

# Events a stream may fall behind by before it is closed with
# RESOURCE_EXHAUSTED; dropping events silently would break xenbus clients.
EVENT_QUEUE_LIMIT = 4096

_OVERFLOW = object()


class XenStoreConnection:
    """One WatchStream: the domain it acts as and its outgoing events."""

    def __init__(self, caller: Caller, limit: int = EVENT_QUEUE_LIMIT) -> None:
        self.caller = caller
        self.limit = limit
        self.queue: asyncio.Queue = asyncio.Queue()
        self.overflowed = False
        self._held: list | None = None

    def deliver(self, event: xenstore_pb2.WatchEvent) -> None:
        if self.overflowed:
            return
        pending = self.queue.qsize() + len(self._held or ())
        if pending >= self.limit:
            self._overflow()
        elif self._held is not None:
            self._held.append(event)
        else:
            self.queue.put_nowait(event)

    def hold(self) -> None:
        """Keep events back until `release`: a watch fires at registration,
        and xenstored sends the request's answer before that event."""
        self._held = []

    def release(self, ack: xenstore_pb2.WatchEvent) -> None:
        held, self._held = self._held or [], None
        for event in (ack, *held):
            self.deliver(event)

    def _overflow(self) -> None:
        self.overflowed = True
        self._held = None
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_OVERFLOW)

    def __repr__(self) -> str:
        return f"<XenStoreConnection d{self.caller.domid} {id(self):#x}>"


class XenStoreConnections:
    """The open WatchStreams; ``fire`` is the XenStore core's delivery callback."""

    def __init__(self, limit: int = EVENT_QUEUE_LIMIT) -> None:
        self.limit = limit
        self._open: set[XenStoreConnection] = set()

    def open(self, caller: Caller) -> XenStoreConnection:
        conn = XenStoreConnection(caller, self.limit)
        self._open.add(conn)
        return conn

    def close(self, conn: XenStoreConnection) -> None:
        self._open.discard(conn)

    def fire(self, conn: XenStoreConnection, path: str, token: str) -> None:
        if conn in self._open:
            conn.deliver(xenstore_pb2.WatchEvent(path=path, token=token))

    def __len__(self) -> int:
        return len(self._open)


def _perms_to_pb(perms) -> list[xenstore_pb2.Perm]:
    return [xenstore_pb2.Perm(domid=d, perm=p) for d, p in perms]


class XenStoreServicer(xenstore_pb2_grpc.XenStoreServicer):
    def __init__(self, hv, connections: XenStoreConnections) -> None:
        self.hv = hv
        self.connections = connections

    @property
    def xs(self):
        return self.hv.xenstore

    @handles_xen_errors
    async def Read(self, request, context):
        caller = self.hv.identity.authenticate(context)
        return xenstore_pb2.Value(value=self.xs.read(caller, request.path, request.tx))

    @handles_xen_errors
    async def Write(self, request, context):
        caller = self.hv.identity.authenticate(context)
        self.xs.write(caller, request.path, request.value, request.tx)
        return common_pb2.Empty()

    @handles_xen_errors
    async def Mkdir(self, request, context):
        caller = self.hv.identity.authenticate(context)
        self.xs.mkdir(caller, request.path, request.tx)
        return common_pb2.Empty()

    @handles_xen_errors
    async def Rm(self, request, context):
        caller = self.hv.identity.authenticate(context)
        self.xs.rm(caller, request.path, request.tx)
        return common_pb2.Empty()

    @handles_xen_errors
    async def Directory(self, request, context):
        caller = self.hv.identity.authenticate(context)
        return xenstore_pb2.Children(names=self.xs.directory(caller, request.path, request.tx))

    @handles_xen_errors
    async def GetPerms(self, request, context):
        caller = self.hv.identity.authenticate(context)
        perms = self.xs.get_perms(caller, request.path, request.tx)
        return xenstore_pb2.Perms(perms=_perms_to_pb(perms))

    @handles_xen_errors
    async def SetPerms(self, request, context):
        caller = self.hv.identity.authenticate(context)
        perms = [(p.domid, p.perm) for p in request.perms]
        self.xs.set_perms(caller, request.path, perms, request.tx)
        return common_pb2.Empty()

    @handles_xen_errors
    async def TransactionStart(self, request, context):
        caller = self.hv.identity.authenticate(context)
        return xenstore_pb2.Transaction(tx=self.xs.transaction_start(caller))

    @handles_xen_errors
    async def TransactionEnd(self, request, context):
        caller = self.hv.identity.authenticate(context)
        self.xs.transaction_end(caller, request.tx, request.commit)
        return common_pb2.Empty()

    @handles_xen_errors
    async def WatchStream(self, request_iterator, context):
        caller = self.hv.identity.authenticate(context)
        conn = self.connections.open(caller)
        reader = asyncio.create_task(self._read_controls(conn, request_iterator))
        reader.add_done_callback(_log_reader_failure)
        try:
            while True:
                event = await conn.queue.get()
                if event is _OVERFLOW:
                    raise XenStoreError(errno.ENOSPC, f"the watch stream fell {conn.limit} "
                                                      f"events behind; reconnect and re-read")
                yield event
        finally:
            # A half-closed request side leaves the stream delivering events;
            # the watches go when the stream itself ends.
            reader.cancel()
            self.connections.close(conn)
            self.xs.drop_connection(conn)

    async def _read_controls(self, conn: XenStoreConnection, request_iterator) -> None:
        async for control in request_iterator:
            self._control(conn, control)

    def _control(self, conn: XenStoreConnection, control) -> None:
        """Carry out one WatchControl and queue its ack ahead of the events it
        fired; a failure is reported in the ack and does not end the stream."""
        ack = xenstore_pb2.WatchEvent(path=control.path, token=control.token, ack=True)
        conn.hold()
        try:
            if control.op == xenstore_pb2.WatchControl.WATCH:
                self.xs.watch(conn.caller, conn, control.path, control.token)
            elif control.op == xenstore_pb2.WatchControl.UNWATCH:
                self.xs.unwatch(conn.caller, conn, control.path, control.token)
            else:
                raise XenStoreError(errno.EINVAL, f"unknown watch operation {control.op}")
        except XenError as err:
            ack.error = err.message
            ack.errno = err.errno
        finally:
            conn.release(ack)


def _log_reader_failure(task: asyncio.Task) -> None:
    if task.cancelled():
        return
    err = task.exception()
    if err is not None:
        # The stream still delivers events, but its controls go unanswered.
        log.warning("watch stream stopped reading controls: %r", err, exc_info=err)
