"""The hypervisor end of the event-channel doorbell.

A domain connects to a unix SOCK_SEQPACKET socket, says HELLO with its
credentials, and from then on sends SEND datagrams (EVTCHNOP_send, batched)
and receives UPCALL datagrams (the 0->1 edge of evtchn_upcall_pending on a
vCPU). Domains that cannot reach the socket subscribe to the gRPC Upcalls
stream instead; ``kick`` feeds both. The wire format is xenlab.xen.doorbell.

Nothing a domain sends can stop the router: a malformed datagram closes that
one connection, and a SEND naming a bad port is counted and ignored.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass
from typing import Callable

from xenlab.hypervisor.identity import Caller
from xenlab.xen import doorbell as wire
from xenlab.xen.errors import XenError

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 5.0     # seconds a fresh connection may stay silent
UPCALL_QUEUE = 64       # per gRPC subscriber; see kick() for why overflow is safe
MAX_CONNECTIONS = 4     # per domain: one is normal; more only costs the host fds


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    domid: int = -1
    task: asyncio.Task | None = None


class UpcallRouter:
    def __init__(self, authenticate: Callable[[int, str], Caller],
                 on_send: Callable[[int, int], None], hello_timeout: float = HELLO_TIMEOUT):
        self._authenticate = authenticate
        self._on_send = on_send
        self._hello_timeout = hello_timeout
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self._pending: set[_Connection] = set()             # accepted, not yet authenticated
        self._conns: dict[int, set[_Connection]] = {}
        self._subs: dict[int, set[asyncio.Queue]] = {}
        self.path: str | None = None
        # bad_send: SENDs the core refused; dropped_kick: kicks not queued
        # because an upcall was already waiting; malformed: connections closed.
        self.stats: collections.Counter[str] = collections.Counter()

    # -- lifecycle ------------------------------------------------------------
    async def start(self, path: str) -> None:
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            sock.bind(path)
            # Only the hypervisor's user may connect; the rundir holding the
            # socket is private too, which covers the moment before chmod.
            os.chmod(path, 0o600)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self.path = path
        self._accept_task = asyncio.create_task(self._accept_loop(), name="doorbell-accept")
        log.info("event-channel doorbell listening on %s", path)

    async def close(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.gather(self._accept_task, return_exceptions=True)
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.path and os.path.exists(self.path):
                os.unlink(self.path)
        conns = list(self._pending) + [c for cs in self._conns.values() for c in cs]
        tasks = [c.task for c in conns if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for domid in list(self._subs):
            self._end_streams(domid)

    # -- delivery ---------------------------------------------------------------
    def kick(self, domid: int, vcpu: int) -> None:
        """Tell every doorbell connection and gRPC subscriber of `domid` that
        `vcpu` has an upcall. Never blocks.

        Dropping a kick when a connection's socket buffer (or a subscriber's
        queue) is full is safe: evtchn_upcall_pending is level-triggered, so
        an UPCALL is already waiting there, and the guest's scan of
        shared_info after reading it finds every port pending by then.
        """
        data = wire.Upcall(vcpu).encode()
        for conn in list(self._conns.get(domid, ())):
            try:
                conn.sock.send(data)
            except BlockingIOError:
                self.stats["dropped_kick"] += 1
            except OSError as err:
                log.debug("d%d doorbell send failed (%s); closing it", domid, err)
                if conn.task is not None:
                    conn.task.cancel()
        for queue in self._subs.get(domid, ()):
            try:
                queue.put_nowait(vcpu)
            except asyncio.QueueFull:
                self.stats["dropped_kick"] += 1

    def subscribe(self, domid: int) -> asyncio.Queue:
        """A queue of vCPU numbers for the gRPC Upcalls stream; None ends it."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=UPCALL_QUEUE)
        self._subs.setdefault(domid, set()).add(queue)
        return queue

    def unsubscribe(self, domid: int, queue: asyncio.Queue) -> None:
        subs = self._subs.get(domid)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self._subs[domid]

    def disconnect(self, domid: int) -> None:
        """The domain is gone: close its doorbell connections and end its streams."""
        for conn in list(self._conns.get(domid, ())):
            if conn.task is not None:
                conn.task.cancel()
        self._end_streams(domid)

    def connections(self, domid: int) -> int:
        return len(self._conns.get(domid, ()))

    # -- connections ------------------------------------------------------------
    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except OSError as err:
                # EMFILE and friends: keep serving the connections we have.
                log.warning("doorbell accept failed: %s", err)
                await asyncio.sleep(0.1)
                continue
            conn = _Connection(sock)
            self._pending.add(conn)
            conn.task = asyncio.create_task(self._serve(conn), name="doorbell-conn")

    async def _serve(self, conn: _Connection) -> None:
        try:
            caller = await self._hello(conn)
            self._pending.discard(conn)
            if caller is None:
                return
            conn.domid = caller.domid
            self._conns.setdefault(caller.domid, set()).add(conn)
            await self._pump(conn)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("doorbell connection of d%d failed", conn.domid)
        finally:
            self._forget(conn)
            conn.sock.close()

    async def _hello(self, conn: _Connection) -> Caller | None:
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(conn.sock, wire.MAX_DATAGRAM + 1),
                                          self._hello_timeout)
        except (TimeoutError, OSError) as err:
            log.info("doorbell connection closed before HELLO: %s", err or "timeout")
            return None
        if not data:
            return None
        try:
            msg = self._decode(data)
            if not isinstance(msg, wire.Hello):
                raise wire.malformed(f"expected HELLO, got {type(msg).__name__.upper()}")
            caller = self._authenticate(msg.domid, msg.secret)
            if self.connections(caller.domid) >= MAX_CONNECTIONS:
                raise XenError(errno.EMFILE,
                               f"d{caller.domid} already has {MAX_CONNECTIONS} doorbell connections")
        except XenError as err:
            log.info("doorbell HELLO refused: %s", err.message)
            self._reply(conn, wire.Error(err.errno, err.message))
            return None
        self._reply(conn, wire.Ok(caller.domid))
        return caller

    async def _pump(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(conn.sock, wire.MAX_DATAGRAM + 1)
            except OSError as err:
                log.debug("d%d doorbell connection lost: %s", conn.domid, err)
                return
            if not data:
                return
            try:
                msg = self._decode(data)
                if not isinstance(msg, wire.Send):
                    raise wire.malformed(f"expected SEND, got {type(msg).__name__.upper()}")
            except XenError as err:
                self.stats["malformed"] += 1
                log.warning("d%d doorbell: %s; closing the connection", conn.domid, err.message)
                return
            for port in msg.ports:
                self._deliver(conn.domid, port)

    def _deliver(self, domid: int, port: int) -> None:
        try:
            self._on_send(domid, port)
        except XenError as err:
            self.stats["bad_send"] += 1
            log.debug("d%d doorbell SEND port %d refused: %s", domid, port, err.message)
        except Exception:
            log.exception("d%d doorbell SEND port %d failed", domid, port)

    @staticmethod
    def _decode(data: bytes) -> wire.Message:
        if len(data) > wire.MAX_DATAGRAM:
            raise wire.malformed("datagram longer than any message")
        return wire.decode(data)

    @staticmethod
    def _reply(conn: _Connection, msg) -> None:
        try:
            conn.sock.send(msg.encode())
        except OSError as err:
            log.debug("doorbell reply lost: %s", err)

    def _forget(self, conn: _Connection) -> None:
        self._pending.discard(conn)
        conns = self._conns.get(conn.domid)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._conns[conn.domid]

    def _end_streams(self, domid: int) -> None:
        for queue in self._subs.pop(domid, ()):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)


def _remove_stale_socket(path: str) -> None:
    """A hypervisor that died leaves its socket behind; anything else at
    that path is not ours to delete."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)
