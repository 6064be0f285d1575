"""The guest's event channels: the upcall loop and notifications.

Binding goes through gRPC (the control plane). Notifications and upcalls
take the doorbell when the hypervisor's socket is reachable: SEND datagrams
out, UPCALL datagrams in (xenlab.xen.doorbell). Otherwise they fall back to
gRPC ``Send`` calls and the ``Upcalls`` server stream.

Either way an upcall carries only a vCPU number. As a real guest's upcall
handler does, the loop then scans this domain's shared_info for pending,
unmasked ports and runs each port's handler; the scan clears the bits first,
so an event raised while a handler runs rings again rather than being lost.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import socket
from typing import Callable

import grpc

from xenlab.client import HypervisorClient
from xenlab.proto import common_pb2, evtchn_pb2
from xenlab.xen import doorbell as wire
from xenlab.xen.errors import XenError
from xenlab.xen.shared_info import SharedInfo

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0

Handler = Callable[[int], object]


class GuestEventChannels:
    def __init__(self, client: HypervisorClient, shared_info: SharedInfo,
                 doorbell_path: str | None, secret: str, timeout: float = CONNECT_TIMEOUT):
        self._client = client
        self._shared_info = shared_info
        self._doorbell_path = doorbell_path
        self._secret = secret
        self._timeout = timeout
        self._handlers: dict[int, Handler] = {}
        # Ports found pending before their handler was bound: bind_handler
        # delivers them, so an event racing the bind reply is not lost.
        self._early: set[int] = set()
        self._sock: socket.socket | None = None
        self._backlog: dict[int, None] = {}     # ports waiting for the socket to drain
        self._upcalls: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self.via_doorbell = False
        # upcall: upcalls taken; unhandled: pending ports with no handler yet;
        # handler_error: handlers that raised.
        self.stats: collections.Counter[str] = collections.Counter()

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        if self._doorbell_path and os.path.exists(self._doorbell_path):
            try:
                self._sock = await self._connect(self._doorbell_path)
            except (OSError, TimeoutError, ValueError, XenError) as err:
                log.warning("d%d: doorbell %s unusable (%s); using the gRPC fallback",
                            self._client.domid, self._doorbell_path, err)
        if self._sock is not None:
            self.via_doorbell = True
            self._upcalls = asyncio.create_task(self._doorbell_loop(), name="evtchn-doorbell")
            # Edges raised before we connected left upcall_pending set and
            # will not kick again until someone scans.
            self._scan_all()
        else:
            first = asyncio.get_running_loop().create_future()
            self._upcalls = asyncio.create_task(self._grpc_loop(first), name="evtchn-upcalls")
            # The stream's first upcall proves the subscription is live, so
            # no kick after start() returns can be missed.
            await asyncio.wait_for(first, self._timeout)

    async def close(self) -> None:
        self._closing = True
        tasks = [t for t in [self._upcalls, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._upcalls = None
        self._drop_socket()

    # -- handlers -----------------------------------------------------------------
    def bind_handler(self, port: int, handler: Handler) -> None:
        self._handlers[port] = handler
        if port in self._early:
            self._early.discard(port)
            asyncio.get_running_loop().call_soon(self._run, port, handler)

    def unbind_handler(self, port: int) -> None:
        self._handlers.pop(port, None)
        self._early.discard(port)

    # -- notifications -------------------------------------------------------------
    def notify(self, port: int) -> None:
        """EVTCHNOP_send, without waiting. Never blocks the caller."""
        if self._sock is None:
            self._grpc_send(port)
        elif self._backlog:
            self._backlog[port] = None          # a queued port is already going to ring
        else:
            self._ring((port,))

    def _ring(self, ports: tuple[int, ...]) -> None:
        try:
            self._sock.send(wire.Send(ports).encode())
        except BlockingIOError:
            self._backlog.update(dict.fromkeys(ports))
            asyncio.get_running_loop().add_writer(self._sock, self._flush)
        except OSError as err:
            self._doorbell_lost(f"send failed: {err}")
            for port in ports:
                self._grpc_send(port)

    def _flush(self) -> None:
        """The socket drained: send the backlog in as few datagrams as it takes."""
        sock = self._sock
        asyncio.get_running_loop().remove_writer(sock)
        ports = tuple(self._backlog)
        self._backlog.clear()
        for i in range(0, len(ports), wire.MAX_SEND_BATCH):
            if self._sock is not sock or self._backlog:
                self._requeue(ports[i:])
                return
            self._ring(ports[i:i + wire.MAX_SEND_BATCH])

    def _requeue(self, ports: tuple[int, ...]) -> None:
        if self._sock is None:
            for port in ports:
                self._grpc_send(port)
        else:
            self._backlog.update(dict.fromkeys(ports))

    def _grpc_send(self, port: int) -> None:
        self._spawn(self._client.evtchn.Send(evtchn_pb2.Port(port=port)), f"send on port {port}")

    # -- binding (control plane) -----------------------------------------------------
    async def alloc_unbound(self, remote_dom: int) -> int:
        reply = await self._client.evtchn.AllocUnbound(evtchn_pb2.AllocUnboundRequest(
            dom=self._client.domid, remote_dom=remote_dom))
        return reply.port

    async def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        reply = await self._client.evtchn.BindInterdomain(evtchn_pb2.BindInterdomainRequest(
            remote_dom=remote_dom, remote_port=remote_port))
        return reply.port

    async def bind_virq(self, virq: int, vcpu: int = 0) -> int:
        reply = await self._client.evtchn.BindVirq(evtchn_pb2.BindVirqRequest(virq=virq, vcpu=vcpu))
        return reply.port

    async def close_port(self, port: int) -> None:
        self.unbind_handler(port)
        await self._client.evtchn.Close(evtchn_pb2.Port(port=port))

    def mask(self, port: int) -> None:
        """Only the guest sets mask bits; a masked port stays pending, silently."""
        self._shared_info.mask(port)

    async def unmask(self, port: int) -> None:
        """EVTCHNOP_unmask: the hypervisor re-raises the port if it is pending."""
        await self._client.evtchn.Unmask(evtchn_pb2.Port(port=port))

    # -- upcalls ----------------------------------------------------------------------
    def _scan_all(self) -> None:
        for vcpu in range(self._shared_info.nr_vcpus):
            self._upcall(vcpu)

    def _upcall(self, vcpu: int) -> None:
        if not 0 <= vcpu < self._shared_info.nr_vcpus:
            log.warning("d%d: upcall for vcpu %d, which this domain does not have",
                        self._client.domid, vcpu)
            return
        self.stats["upcall"] += 1
        for port in self._shared_info.scan(vcpu):
            handler = self._handlers.get(port)
            if handler is None:
                self.stats["unhandled"] += 1
                self._early.add(port)
            else:
                self._run(port, handler)

    def _run(self, port: int, handler: Handler) -> None:
        try:
            result = handler(port)
        except Exception:
            self.stats["handler_error"] += 1
            log.exception("d%d: event-channel handler for port %d failed", self._client.domid, port)
            return
        if inspect.isawaitable(result):
            self._spawn(result, f"handler for port {port}")

    async def _doorbell_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(self._sock, wire.MAX_DATAGRAM + 1)
            except OSError as err:
                self._doorbell_lost(f"receive failed: {err}")
                return
            if not data:
                self._doorbell_lost("the hypervisor closed it")
                return
            try:
                msg = wire.decode(data)
            except XenError as err:
                log.warning("d%d: doorbell: %s", self._client.domid, err.message)
                continue
            if isinstance(msg, wire.Upcall):
                self._upcall(msg.vcpu)
            else:
                log.warning("d%d: doorbell: unexpected %s", self._client.domid, type(msg).__name__)

    async def _grpc_loop(self, first: asyncio.Future | None) -> None:
        call = self._client.evtchn.Upcalls(common_pb2.Empty())
        try:
            async for upcall in call:
                if first is not None and not first.done():
                    first.set_result(None)
                self._upcall(upcall.vcpu)
            log.info("d%d: the hypervisor ended the upcall stream", self._client.domid)
        except grpc.aio.AioRpcError as err:
            if first is not None and not first.done():
                first.set_exception(err)
                return
            if err.code() != grpc.StatusCode.CANCELLED:
                log.warning("d%d: upcall stream failed: %s", self._client.domid, err.details())
        finally:
            call.cancel()
            if first is not None and not first.done():
                first.set_exception(ConnectionError("the upcall stream ended before its first upcall"))

    # -- the doorbell connection -----------------------------------------------------------
    async def _connect(self, path: str) -> socket.socket:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, path), self._timeout)
            await loop.sock_sendall(sock, wire.Hello(self._client.domid, self._secret).encode())
            data = await asyncio.wait_for(loop.sock_recv(sock, wire.MAX_DATAGRAM + 1), self._timeout)
            if not data:
                raise ConnectionError("the hypervisor closed the doorbell during HELLO")
            reply = wire.decode(data)
            if isinstance(reply, wire.Error):
                raise XenError(reply.errno, reply.message)
            if not isinstance(reply, wire.Ok) or reply.domid != self._client.domid:
                raise wire.malformed(f"expected OK for d{self._client.domid}, got {reply}")
        except BaseException:
            sock.close()
            raise
        return sock

    def _doorbell_lost(self, why: str) -> None:
        """Keep working over gRPC; if the domain is gone, that fails too and says so."""
        if self._closing or self._sock is None:
            return
        log.warning("d%d: doorbell lost (%s); switching to the gRPC fallback", self._client.domid, why)
        self._drop_socket()
        self.via_doorbell = False
        for port in self._backlog:
            self._grpc_send(port)
        self._backlog.clear()
        self._upcalls = asyncio.get_running_loop().create_task(self._grpc_loop(None),
                                                               name="evtchn-upcalls")

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            asyncio.get_running_loop().remove_writer(sock)
        except RuntimeError:
            pass
        sock.close()

    def _spawn(self, aw, what: str) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._reap(t, what))

    def _reap(self, task: asyncio.Task, what: str) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            detail = err.details() if isinstance(err, grpc.aio.AioRpcError) else err
            log.warning("d%d: %s failed: %s", self._client.domid, what, detail)
