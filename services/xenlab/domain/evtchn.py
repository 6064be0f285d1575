"""The guest's event channels: the upcall loop and notifications (Linux's
drivers/xen/events).

Binding is a hypercall (xenlab.domain.hypercall.evtchn, the control plane).
Notifications and upcalls take the doorbell when the hypervisor's socket is
reachable: SEND datagrams out, UPCALL datagrams in (xenlab.xen.doorbell).
Otherwise they fall back to the EVTCHNOP_send hypercall and the hypervisor's
stream of upcalls.

Either way an upcall carries only a vCPU number. As a real guest's upcall
handler does, the loop then scans this domain's shared_info for pending,
unmasked ports and runs each port's handler; the scan clears the bits first,
so an event raised while a handler runs rings again rather than being lost.
Doorbell datagrams are read in the socket's reader callback and handlers run
right there, with no task in between; the UPCALLs read in one wake-up make
one scan.

A domain whose launcher could not hand it its memory object (a container)
takes it from the doorbell before anything else: ``connect_for_memory``
says HELLO asking for it, and the OK carries it; the connection, already
greeted, then serves as the domain's doorbell. Without a doorbell such a
domain has no memory to run in (gRPC carries no descriptors), and says so.

Interdomain channels take a shorter path still once the hypervisor hands
the domain their notification objects (a CHANNEL on the doorbell, asked
for with HELLO_CHANNELS): ``notify`` writes a datagram on the port's own
object, straight to the peer's kernel, and a datagram read on one sets
the port's pending bit in this domain's shared_info, which honours the
mask and upcalls on the 0->1 edge only, as the hypervisor's set_pending
would. An object the hypervisor revoked fails the write or ends the read;
the port then goes back to the doorbell's SEND, which the hypervisor
checks as ever.

The doorbell also carries GNTTABOP_copy (``copy``, used by
xenlab.domain.hypercall.gnttab): a COPY datagram out, its COPIED answer in,
matched by sequence number, so that several batches may be in flight.
Without a doorbell, or when it is lost with copies outstanding, the caller
makes the copy hypercall instead (a grant copy is idempotent, so running one
again is harmless).
"""
from __future__ import annotations

import asyncio
import collections
import errno
import inspect
import itertools
import logging
import os
import socket
from dataclasses import dataclass
from typing import Callable, Sequence

from xenlab import eventloop
from xenlab.domain.hypercall.evtchn import EventChannelOps
from xenlab.xen import doorbell as wire
from xenlab.xen.errors import XenError
from xenlab.xen.shared_info import SharedInfo

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
READ_BUDGET = 64        # datagrams taken per wake-up of the doorbell reader
# Signals read from one channel's object per wake-up: one is enough to set
# the bit; the rest are drained so that a storming peer fills only its own
# channel's socket, and what is left waits for the next turn of the loop.
SIGNAL_BUDGET = 64
_SIGNAL = b"\x01"

Handler = Callable[[int], object]


def welcome(data: bytes, domid: int) -> wire.Ok:
    """The hypervisor's answer to domain ``domid``'s HELLO: its OK, or the
    XenError it refused with."""
    if not data:
        raise ConnectionError("the hypervisor closed the doorbell during HELLO")
    reply = wire.decode(data)
    if isinstance(reply, wire.Error):
        raise XenError(reply.errno, reply.message)
    if not isinstance(reply, wire.Ok) or reply.domid != domid:
        raise wire.malformed(f"expected OK for d{domid}, got {reply}")
    return reply


def connect_for_memory(path: str, domid: int, secret: str,
                       timeout: float = CONNECT_TIMEOUT) -> tuple[socket.socket, int]:
    """Connect to the doorbell at ``path`` and say HELLO asking for this
    domain's memory object. Blocking: the domain process calls it before
    its event loop runs. Returns the connection, greeted (hand it to
    GuestEventChannels), and the object's descriptor, for the caller to
    map and close. Raises OSError, TimeoutError or XenError (refused)."""
    sock, handed = greet(path, domid, secret, wire.HELLO_MEMORY | wire.HELLO_CHANNELS, timeout)
    return sock, handed.memory


@dataclass
class Handed:
    """The descriptors an OK brought (-1: not asked for), the caller's to close."""
    memory: int = -1
    paging: int = -1


def greet(doorbell: str | int, domid: int, secret: str, flags: int,
          timeout: float = CONNECT_TIMEOUT) -> tuple[socket.socket, Handed]:
    """Say HELLO with ``flags`` (HELLO_*) on the doorbell at a path, or on
    the connection handed over as a descriptor, and take the descriptors
    its OK brings: the memory object (HELLO_MEMORY), then the paging pool,
    read-only (HELLO_PAGING). Blocking, before the event loop runs. Returns
    the connection, greeted (hand it to GuestEventChannels). Raises
    OSError, TimeoutError or XenError (refused)."""
    if isinstance(doorbell, int):
        sock = socket.socket(fileno=doorbell)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds: list[int] = []
    try:
        sock.settimeout(timeout)
        if not isinstance(doorbell, int):
            sock.connect(doorbell)
        sock.sendall(wire.Hello(domid, secret, flags).encode())
        data, fds, msg_flags, _ = socket.recv_fds(sock, wire.MAX_DATAGRAM + 1, 2)
        ok = welcome(data, domid)
        wanted = bool(flags & wire.HELLO_MEMORY) + bool(flags & wire.HELLO_PAGING)
        if (msg_flags & socket.MSG_CTRUNC or len(fds) != wanted or ok.descriptors != wanted
                or ok.carries_memory != bool(flags & wire.HELLO_MEMORY)):
            raise wire.malformed(f"the OK carries {len(fds)} descriptors (flags {ok.flags:#x}), "
                                 f"not the {wanted} asked for")
        handed = Handed(memory=fds.pop(0) if ok.carries_memory else -1,
                        paging=fds.pop(0) if ok.carries_paging else -1)
        return sock, handed
    except BaseException:
        for fd in fds:
            os.close(fd)
        sock.close()
        raise


class GuestEventChannels:
    def __init__(self, ops: EventChannelOps, shared_info: SharedInfo,
                 doorbell: str | int | socket.socket | None, secret: str,
                 timeout: float = CONNECT_TIMEOUT):
        """``ops``: the domain's event-channel hypercalls; ``doorbell``: the
        hypervisor's socket path, or a descriptor of a doorbell connection
        the launcher handed over, or a connection already greeted
        (connect_for_memory), or None (hypercalls only)."""
        self._ops = ops
        self.domid = ops.domid
        self._shared_info = shared_info
        self._doorbell = doorbell
        self._secret = secret
        self._timeout = timeout
        self._handlers: dict[int, Handler] = {}
        # Ports found pending before their handler was bound: bind_handler
        # delivers them, so an event racing the bind reply is not lost.
        self._early: set[int] = set()
        self._sock: socket.socket | None = None
        self._backlog: dict[int, None] = {}     # ports waiting for the socket to drain
        self._out: collections.deque[bytes] = collections.deque()   # COPYs, likewise
        self._writing = False
        self._copies: dict[int, tuple] = {}     # seq -> (answer, number of ops, lost)
        self._seq = itertools.count(1)
        self._upcalls: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self.via_doorbell = False
        # port -> (its notification object, the vCPU its events go to)
        self._direct: dict[int, tuple[socket.socket, int]] = {}
        # upcall: upcalls taken; unhandled: pending ports with no handler yet;
        # handler_error: handlers that raised; direct_send, direct_signal:
        # notifications written and read on channels' own objects;
        # direct_coalesced: writes that found the peer's queue full (it has
        # unread signals, which is all a send would say); revoked: objects
        # the hypervisor took back.
        self.stats: collections.Counter[str] = collections.Counter()

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        doorbell = self._doorbell
        if isinstance(doorbell, socket.socket):
            doorbell.setblocking(False)
            self._sock = doorbell
        elif isinstance(doorbell, int) or (doorbell and os.path.exists(doorbell)):
            try:
                self._sock = await self._connect(doorbell)
            except (OSError, TimeoutError, ValueError, XenError) as err:
                log.warning("d%d: doorbell %s unusable (%s); using the hypercall fallback",
                            self.domid, doorbell, err)
        if self._sock is not None:
            self.via_doorbell = True
            asyncio.get_running_loop().add_reader(self._sock, self._on_doorbell)
            # Edges raised before we connected left upcall_pending set and
            # will not kick again until someone scans.
            self._scan_all()
        else:
            first = asyncio.get_running_loop().create_future()
            self._upcalls = asyncio.create_task(self._upcall_stream(first), name="evtchn-upcalls")
            # The stream's first upcall proves the subscription is live, so
            # no kick after start() returns can be missed.
            await eventloop.wait_for(first, self._timeout)

    async def close(self) -> None:
        self._closing = True
        tasks = [t for t in [self._upcalls, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._upcalls = None
        for port in list(self._direct):
            self._drop_direct(port)
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
        direct = self._direct.get(port)
        if direct is not None:
            try:
                direct[0].send(_SIGNAL)
                self.stats["direct_send"] += 1
                return
            except BlockingIOError:
                self.stats["direct_coalesced"] += 1
                return
            except OSError:
                self._drop_direct(port, revoked=True)
        if self._sock is None:
            self._hypercall_send(port)
        elif self._backlog or self._out:
            self._backlog[port] = None          # a queued port is already going to ring
        else:
            self._ring((port,))

    def _ring(self, ports: tuple[int, ...]) -> None:
        try:
            self._sock.send(wire.Send(ports).encode())
        except BlockingIOError:
            self._backlog.update(dict.fromkeys(ports))
            self._want_write()
        except OSError as err:
            self._doorbell_lost(f"send failed: {err}")
            for port in ports:
                self._hypercall_send(port)

    def _want_write(self) -> None:
        if not self._writing:
            asyncio.get_running_loop().add_writer(self._sock, self._flush)
            self._writing = True

    def _flush(self) -> None:
        """The socket drained: COPYs in order, then the ports in as few SENDs as it takes."""
        sock = self._sock
        try:
            while self._out:
                sock.send(self._out[0])
                self._out.popleft()
            ports = tuple(self._backlog)
            while ports:
                sock.send(wire.Send(ports[:wire.MAX_SEND_BATCH]).encode())
                for port in ports[:wire.MAX_SEND_BATCH]:
                    del self._backlog[port]
                ports = ports[wire.MAX_SEND_BATCH:]
        except BlockingIOError:
            return
        except OSError as err:
            self._doorbell_lost(f"send failed: {err}")
            return
        asyncio.get_running_loop().remove_writer(sock)
        self._writing = False

    # -- GNTTABOP_copy -----------------------------------------------------------------
    def copy(self, ops: Sequence[wire.GnttabCopy], answer: asyncio.Future,
             lost: Callable[[], None]) -> bool:
        """Send one COPY of 1..wire.MAX_COPY_BATCH ops; its statuses become
        ``answer``'s result. If the doorbell goes before answering, ``lost()``
        is called instead. False: there is no doorbell (nothing was sent)."""
        if self._sock is None:
            return False
        seq = next(self._seq) & 0xFFFFFFFF
        data = wire.Copy(seq, tuple(ops)).encode()
        self._copies[seq] = (answer, len(ops), lost)
        if self._out or self._backlog:
            self._out.append(data)
            return True
        try:
            self._sock.send(data)
        except BlockingIOError:
            self._out.append(data)
            self._want_write()
        except OSError as err:
            self._doorbell_lost(f"send failed: {err}")
        return True

    def _copied(self, msg: wire.Copied) -> None:
        entry = self._copies.pop(msg.seq, None)
        if entry is None:
            log.warning("d%d: doorbell: COPIED for seq %d, which is not outstanding",
                        self.domid, msg.seq)
            return
        answer, n, lost = entry
        if answer.done():
            return
        if len(msg.statuses) != n:
            log.warning("d%d: doorbell: COPIED seq %d has %d statuses for %d ops",
                        self.domid, msg.seq, len(msg.statuses), n)
            lost()
            return
        answer.set_result(list(msg.statuses))

    def _hypercall_send(self, port: int) -> None:
        self._spawn(self._ops.send(port), f"send on port {port}")

    # -- binding (control plane) -----------------------------------------------------
    async def alloc_unbound(self, remote_dom: int) -> int:
        return await self._ops.alloc_unbound(remote_dom)

    async def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        return await self._ops.bind_interdomain(remote_dom, remote_port)

    async def bind_virq(self, virq: int, vcpu: int = 0) -> int:
        return await self._ops.bind_virq(virq, vcpu)

    async def bind_ipi(self, vcpu: int = 0) -> int:
        return await self._ops.bind_ipi(vcpu)

    async def close_port(self, port: int) -> None:
        self.unbind_handler(port)
        self._drop_direct(port)
        await self._ops.close(port)

    async def status(self, port: int):
        """EVTCHNOP_status of one of our ports."""
        return await self._ops.status(port)

    def mask(self, port: int) -> None:
        """Only the guest sets mask bits; a masked port stays pending, silently."""
        self._shared_info.mask(port)

    async def unmask(self, port: int) -> None:
        """EVTCHNOP_unmask: the hypervisor re-raises the port if it is pending."""
        await self._ops.unmask(port)

    # -- upcalls ----------------------------------------------------------------------
    def _scan_all(self) -> None:
        for vcpu in range(self._shared_info.nr_vcpus):
            self._upcall(vcpu)

    def _upcall(self, vcpu: int) -> None:
        if not 0 <= vcpu < self._shared_info.nr_vcpus:
            log.warning("d%d: upcall for vcpu %d, which this domain does not have",
                        self.domid, vcpu)
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
            log.exception("d%d: event-channel handler for port %d failed", self.domid, port)
            return
        if result is not None and inspect.isawaitable(result):    # (most return None)
            self._spawn(result, f"handler for port {port}")

    # -- the direct path of interdomain channels ----------------------------------------
    def direct_ports(self) -> list[int]:
        """The ports that notify their peer without the hypervisor."""
        return sorted(self._direct)

    def _take_channel(self, msg: wire.Channel, fds: list[int]) -> None:
        if len(fds) != 1:
            log.warning("d%d: doorbell: CHANNEL for port %d with %d descriptors",
                        self.domid, msg.port, len(fds))
            for fd in fds:
                os.close(fd)
            return
        sock = socket.socket(fileno=fds[0])
        if sock.type != socket.SOCK_SEQPACKET:
            log.warning("d%d: doorbell: CHANNEL for port %d is not a socket pair", self.domid, msg.port)
            sock.close()
            return
        sock.setblocking(False)
        self._drop_direct(msg.port)
        self._direct[msg.port] = (sock, msg.vcpu)
        asyncio.get_running_loop().add_reader(sock, self._on_signal, msg.port, sock)

    def _on_signal(self, port: int, sock: socket.socket) -> None:
        entry = self._direct.get(port)
        if entry is None or entry[0] is not sock:
            return
        got = 0
        for _ in range(SIGNAL_BUDGET):
            try:
                data = sock.recv(16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                # Revoked: what was read before the end was sent before it.
                self._drop_direct(port, revoked=True)
                break
            got += 1
        if got:
            self.stats["direct_signal"] += got
            vcpu = entry[1]
            if self._shared_info.set_pending(port, vcpu):
                self._upcall(vcpu)

    def _drop_direct(self, port: int, revoked: bool = False) -> None:
        entry = self._direct.pop(port, None)
        if entry is None:
            return
        if revoked:
            self.stats["revoked"] += 1
        sock = entry[0]
        try:
            asyncio.get_running_loop().remove_reader(sock)
        except RuntimeError:
            pass
        sock.close()

    def _on_doorbell(self) -> None:
        vcpus: set[int] = set()
        sock = self._sock
        for _ in range(READ_BUDGET):
            fds: list[int] = []
            try:
                data, fds, _, _ = socket.recv_fds(sock, wire.MAX_DATAGRAM + 1, 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                self._doorbell_lost(f"receive failed: {err}")
                break
            if not data:
                self._doorbell_lost("the hypervisor closed it")
                break
            try:
                msg = wire.decode(data)
            except XenError as err:
                log.warning("d%d: doorbell: %s", self.domid, err.message)
                msg = None
            if isinstance(msg, wire.Channel):
                self._take_channel(msg, fds)
                continue
            for fd in fds:
                os.close(fd)
            if msg is None:
                continue
            if isinstance(msg, wire.Upcall):
                vcpus.add(msg.vcpu)
            elif isinstance(msg, wire.Copied):
                self._copied(msg)
            else:
                log.warning("d%d: doorbell: unexpected %s", self.domid, type(msg).__name__)
        for vcpu in sorted(vcpus):
            self._upcall(vcpu)

    async def _upcall_stream(self, first: asyncio.Future | None) -> None:
        upcalls = self._ops.upcalls()
        try:
            async for vcpu in upcalls:
                if first is not None and not first.done():
                    first.set_result(None)
                self._upcall(vcpu)
            log.info("d%d: the hypervisor ended the upcall stream", self.domid)
        except XenError as err:
            if first is not None and not first.done():
                first.set_exception(err)
                return
            if err.errno != errno.ECANCELED:
                log.warning("d%d: upcall stream failed: %s", self.domid, err.message)
        finally:
            await upcalls.aclose()
            if first is not None and not first.done():
                first.set_exception(ConnectionError("the upcall stream ended before its first upcall"))

    # -- the doorbell connection -----------------------------------------------------------
    async def _connect(self, doorbell: str | int) -> socket.socket:
        """Connect to the socket at a path, or take the connection handed
        over as a descriptor; then say HELLO on it either way."""
        loop = asyncio.get_running_loop()
        if isinstance(doorbell, int):
            sock = socket.socket(fileno=doorbell)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            if not isinstance(doorbell, int):
                await eventloop.wait_for(loop.sock_connect(sock, doorbell), self._timeout)
            await loop.sock_sendall(sock, wire.Hello(self.domid, self._secret,
                                                     wire.HELLO_CHANNELS).encode())
            data = await eventloop.wait_for(loop.sock_recv(sock, wire.MAX_DATAGRAM + 1), self._timeout)
            welcome(data, self.domid)
        except BaseException:
            sock.close()
            raise
        return sock

    def _doorbell_lost(self, why: str) -> None:
        """Keep working over hypercalls; if the domain is gone, they fail too and say so."""
        if self._closing or self._sock is None:
            return
        log.warning("d%d: doorbell lost (%s); switching to the hypercall fallback", self.domid, why)
        self._drop_socket()
        self.via_doorbell = False
        for port in self._backlog:
            self._hypercall_send(port)
        self._backlog.clear()
        self._upcalls = asyncio.get_running_loop().create_task(self._upcall_stream(None),
                                                               name="evtchn-upcalls")

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        self._out.clear()
        copies, self._copies = self._copies, {}
        for answer, _, lost in copies.values():
            if answer.done():
                continue
            if self._closing:
                answer.cancel()
            else:
                lost()
        if sock is None:
            return
        try:
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock)
            loop.remove_writer(sock)
        except RuntimeError:
            pass
        self._writing = False
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
            detail = err.message if isinstance(err, XenError) else err
            log.warning("d%d: %s failed: %s", self.domid, what, detail)
