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
from collections import Counter

from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.xenstore import XenStoreQuotas
from xenlab.proto import common_pb2, xenstore_pb2, xenstore_pb2_grpc
from xenlab.rpc import handles_xen_errors
from xenlab.xen.errors import XenError, XenStoreError

log = logging.getLogger(__name__)

# Events a stream may fall behind by before it is closed with
# RESOURCE_EXHAUSTED; dropping events silently would break xenbus clients.
EVENT_QUEUE_LIMIT = 4096
# What a queued event costs beyond its path and token (the message object).
EVENT_OVERHEAD = 128

_OVERFLOW = object()


def event_size(event: xenstore_pb2.WatchEvent) -> int:
    return len(event.path) + len(event.token) + len(event.error) + EVENT_OVERHEAD


class _EventQueue(asyncio.Queue):
    """A connection's outgoing events; taking one out gives its bytes back
    to the domain's budget (asyncio.Queue's _get hook, as PriorityQueue's)."""

    def __init__(self, conn: "XenStoreConnection") -> None:
        super().__init__()
        self._conn = conn

    def _get(self):
        event = super()._get()
        self._conn._taken(event)
        return event


class XenStoreConnection:
    """One WatchStream: the domain it acts as and its outgoing events.

    As C xenstored does for a connection (send_event), a watch event
    identical to one still queued on the connection is not queued again:
    the watcher reads the node when it gets the first. Every queued event
    counts against the domain's byte budget (``XenStoreConnections``)."""

    def __init__(self, caller: Caller, limit: int = EVENT_QUEUE_LIMIT,
                 owner: "XenStoreConnections | None" = None) -> None:
        self.caller = caller
        self.limit = limit
        self.owner = owner
        self.queue: asyncio.Queue = _EventQueue(self)
        self.overflowed = False
        self.overflow_reason = ""
        # Why the stream ends, once it must: raised by the servicer.
        self.end_error: XenError | None = None
        self.bytes = 0                  # queued, not yet taken
        self.coalesced = 0
        self._pending: Counter = Counter()   # (path, token) of queued watch events
        self._held: list | None = None

    def deliver(self, event: xenstore_pb2.WatchEvent) -> None:
        if self.overflowed:
            return
        if not event.ack and self._pending[(event.path, event.token)]:
            self.coalesced += 1
            return
        if not self._admit(event):
            return
        if self._held is not None:
            self._held.append(event)
        else:
            self.queue.put_nowait(event)

    def _admit(self, event: xenstore_pb2.WatchEvent) -> bool:
        """Count the event as queued, or close the stream if it does not fit."""
        if self.queue.qsize() + len(self._held or ()) >= self.limit:
            self._overflow(XenStoreError(errno.ENOSPC, f"the watch stream fell {self.limit} "
                                                       "events behind; reconnect and re-read"))
            return False
        size = event_size(event)
        refusal = self.owner.charge(self, size) if self.owner is not None else None
        if refusal:
            self._overflow(XenStoreError(errno.ENOSPC, refusal))
            return False
        self.bytes += size
        if not event.ack:
            self._pending[(event.path, event.token)] += 1
        return True

    def _taken(self, event) -> None:
        if event is _OVERFLOW:
            return
        size = event_size(event)
        self.bytes -= size
        if self.owner is not None:
            self.owner.discharge(self, size)
        if not event.ack:
            key = (event.path, event.token)
            self._pending[key] -= 1
            if not self._pending[key]:
                del self._pending[key]

    def hold(self) -> None:
        """Keep events back until `release`: a watch fires at registration,
        and xenstored sends the request's answer before that event."""
        self._held = []

    def release(self, ack: xenstore_pb2.WatchEvent) -> None:
        if self.overflowed or not self._admit(ack):
            self._held = None
            return
        held, self._held = self._held or [], None
        for event in (ack, *held):
            self.queue.put_nowait(event)

    def _overflow(self, error: XenError) -> None:
        """End the stream: drop what is queued (giving its bytes back) and
        leave only the marker that makes the servicer raise ``error``."""
        if self.overflowed:
            return
        self.overflowed = True
        self.overflow_reason = error.message
        self.end_error = error
        held, self._held = self._held or [], None
        for event in held:
            self._taken(event)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_OVERFLOW)

    def __repr__(self) -> str:
        return f"<XenStoreConnection d{self.caller.domid} {id(self):#x}>"


class XenStoreConnections:
    """The open WatchStreams; ``fire`` is the XenStore core's delivery
    callback. Per domain: at most ``watch_streams`` open at once, and at most
    ``watch_event_bytes`` of events queued over all of them (higher for a
    privileged domain). An event past the byte budget closes the stream it
    was for (RESOURCE_EXHAUSTED), which gives back what that stream held:
    xenstored drops such an event silently, but a xenbus client must know
    it missed one."""

    def __init__(self, limit: int = EVENT_QUEUE_LIMIT,
                 quotas: XenStoreQuotas = XenStoreQuotas()) -> None:
        self.limit = limit
        self.quotas = quotas
        self._open: set[XenStoreConnection] = set()
        self._streams: Counter = Counter()       # domid -> open streams
        self._bytes: Counter = Counter()         # domid -> bytes of events queued

    def open(self, caller: Caller) -> XenStoreConnection:
        most = self.quotas.privileged_watch_streams if caller.privileged \
            else self.quotas.watch_streams
        if self._streams[caller.domid] >= most:
            raise XenStoreError(errno.EDQUOT, f"d{caller.domid} has {most} watch streams open, "
                                              "the most allowed")
        conn = XenStoreConnection(caller, self.limit, owner=self)
        self._open.add(conn)
        self._streams[caller.domid] += 1
        return conn

    def close(self, conn: XenStoreConnection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            domid = conn.caller.domid
            self._streams[domid] -= 1
            if not self._streams[domid]:
                del self._streams[domid]
            conn.owner = None
            self._bytes[domid] -= conn.bytes
            if self._bytes[domid] <= 0:
                del self._bytes[domid]

    def charge(self, conn: XenStoreConnection, size: int) -> str | None:
        """Count `size` more bytes queued for the connection's domain, or
        say why not."""
        domid = conn.caller.domid
        budget = self.quotas.privileged_watch_event_bytes if conn.caller.privileged \
            else self.quotas.watch_event_bytes
        if self._bytes[domid] + size > budget:
            return (f"d{domid}'s watch streams have {self._bytes[domid]} bytes of events "
                    f"queued, {budget} at most; reconnect and re-read")
        self._bytes[domid] += size
        return None

    def discharge(self, conn: XenStoreConnection, size: int) -> None:
        domid = conn.caller.domid
        self._bytes[domid] -= size
        if self._bytes[domid] <= 0:
            del self._bytes[domid]

    def fire(self, conn: XenStoreConnection, path: str, token: str) -> None:
        if conn in self._open:
            conn.deliver(xenstore_pb2.WatchEvent(path=path, token=token))

    def disconnect(self, domid: int) -> None:
        """The domain is gone: end its streams (their watches went with it)."""
        for conn in [c for c in self._open if c.caller.domid == domid]:
            conn._overflow(XenStoreError(errno.ESRCH, f"d{domid} is gone"))

    def streams(self, domid: int) -> int:
        return self._streams[domid]

    def queued_bytes(self, domid: int) -> int:
        return self._bytes[domid]

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
                    raise conn.end_error
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
