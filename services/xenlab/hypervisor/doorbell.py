"""The hypervisor end of the event-channel doorbell.

A domain connects to a unix SOCK_SEQPACKET socket, says HELLO with its
credentials, and from then on sends SEND datagrams (EVTCHNOP_send, batched)
and COPY datagrams (GNTTABOP_copy, batched), and receives UPCALL datagrams
(the 0->1 edge of evtchn_upcall_pending on a vCPU) and one COPIED answer per
COPY. Domains that cannot reach the socket subscribe to the gRPC Upcalls
stream and copy through GrantTable.Copy instead; ``kick`` feeds both. The
wire format is xenlab.xen.doorbell.

The doorbell is a hypercall path like the gRPC one, with the same checks:
the connection is made as the domain HELLO authenticated, and every COPY
runs the grant-table core's validated copy as that caller, so each op gets
the very GNTST_* code GrantTable.Copy would give it.

Interdomain channels between two domains get a direct path too
(``link``): a unix SOCK_SEQPACKET pair per channel, one end handed to each
domain that asked for them in its HELLO (a CHANNEL datagram, SCM_RIGHTS),
so that EVTCHNOP_send on the port is a datagram straight to the peer's
kernel, which raises the port in its own shared_info. The pair is that one
channel and nothing else: an end reaches only its peer's port. The router
keeps both ends, and ``unlink`` (the core calls it when the channel is
closed, reset or rebound, or either domain is destroyed) shuts the pair
down, which every copy of it sees at once: a write fails, a read ends.
A socket pair rather than an eventfd because it can be revoked that way,
and an end can only be written to by the other end's holder. Domains that
do not ask (or whose CHANNEL could not be sent) notify through the router,
as before.

It listens on one socket per audience: the rundir's for Domain-0 and the
toolstack, and, where domains run under uids of their own, one in the
domains' directory that only their group may reach. A domain whose launcher
could not hand it its memory object (a container) asks for it in its HELLO;
``on_memory`` decides, for the domain HELLO authenticated only, and the OK
carries the descriptor (SCM_RIGHTS). Its paging pool (HELLO_PAGING) comes
the same way, from ``on_paging``, read-only.

Datagrams are handled in the socket's reader callback, with a budget per
wake-up counted in the work they ask for, not in datagrams: each port sent
and each copy op costs one unit, READ_BUDGET units per connection per
wake-up, so that one busy domain cannot starve the others (a SEND carries up
to 512 ports, a COPY up to 512 ops). A port SENT again while it still waits
to be delivered costs nothing more, as a send to an already-pending port
does not ring again in the 2-level ABI; ports left over when the budget runs
out are delivered on the next turn of the loop, after every other
connection's, and the connection is not read meanwhile. Nothing a domain
sends can stop the router: a malformed datagram closes that one connection,
and a SEND naming a bad port is counted and ignored. A domain that does not
read its answers stalls only itself: while a COPIED waits for room in its
socket, the router stops reading that connection.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import itertools
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import Callable, Sequence

from xenlab import eventloop
from xenlab.hypervisor.caller import Caller
from xenlab.rundir import bind_private
from xenlab.xen import abi
from xenlab.xen import doorbell as wire
from xenlab.xen.errors import XenError

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 5.0     # seconds a fresh connection may stay silent
UPCALL_QUEUE = 64       # per gRPC subscriber; see kick() for why overflow is safe
MAX_CONNECTIONS = 4     # per domain: one is normal; more only costs the host fds
# Ports and copy ops served for one connection per wake-up (a COPY is taken
# whole: up to 512 ops). 64 ports cost the loop about 0.25 ms.
READ_BUDGET = 64
DATAGRAM_BUDGET = 16    # datagrams read from one connection per wake-up
_UPCALLS = [wire.Upcall(v).encode() for v in range(abi.XEN_LEGACY_MAX_VCPUS)]

# GrantTables.copy_gnttab: (caller, gnttab_copy tuples) -> one GNTST_* per op.
CopyHandler = Callable[[Caller, Sequence[wire.GnttabCopy]], list[int]]
# (caller) -> a descriptor of the caller's own memory object, which the
# router sends and leaves open; XenError refuses.
MemoryHandler = Callable[[Caller], int]
# (caller) -> a read-only descriptor of the caller's paging pool object,
# likewise sent and left open.
PagingHandler = Callable[[Caller], int]


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    domid: int = -1
    expect: int = -1            # an adopted socket: the only domain that may HELLO on it
    caller: Caller | None = None
    task: asyncio.Task | None = None
    done: asyncio.Future | None = None
    # Datagrams waiting for room in the socket, in order, and the vCPUs
    # owed an UPCALL once they are out.
    out: collections.deque = field(default_factory=collections.deque)
    owed: set = field(default_factory=set)
    # Ports SENT and not yet delivered, in order (a dict as an ordered set).
    sends: dict = field(default_factory=dict)
    reading: bool = False
    writing: bool = False
    resuming: bool = False
    channels: bool = False      # HELLO_CHANNELS: hand it each channel's notification object


@dataclass(eq=False)
class _Link:
    """One interdomain channel's direct path: (domid, port) -> (its end, its vCPU)."""
    ends: dict[tuple[int, int], tuple[socket.socket, int]]
    handed: bool = False        # each domain has its end


class UpcallRouter:
    def __init__(self, authenticate: Callable[[int, str], Caller],
                 on_send: Callable[[int, int], None], hello_timeout: float = HELLO_TIMEOUT,
                 on_copy: CopyHandler | None = None, on_memory: MemoryHandler | None = None,
                 ops: collections.Counter | None = None,
                 on_paging: PagingHandler | None = None):
        """``on_copy(caller, ops)`` is GNTTABOP_copy (GrantTables.copy_gnttab); without
        it a COPY is an unknown message and closes the connection, so that
        the domain falls back to gRPC. ``on_memory(caller)`` answers a HELLO
        asking for the caller's memory object, ``on_paging(caller)`` one
        asking for its paging pool; without them such a HELLO is refused."""
        self._authenticate = authenticate
        self._on_send = on_send
        self._on_copy = on_copy
        self._on_memory = on_memory
        self._on_paging = on_paging
        self._hello_timeout = hello_timeout
        self._listeners: dict[str, tuple[socket.socket, asyncio.Task]] = {}   # path -> ...
        self._pending: set[_Connection] = set()             # accepted, not yet authenticated
        self._conns: dict[int, set[_Connection]] = {}
        self._subs: dict[int, set[asyncio.Queue]] = {}
        self._links: dict[tuple[int, int], _Link] = {}      # (domid, port) -> its channel's
        # bad_send: SENDs the core refused; dropped_kick: kicks not queued
        # because an upcall was already waiting; malformed: connections closed;
        # copy, copy_ops: COPY datagrams answered and the ops in them; send,
        # upcall: ports SENT and UPCALLs written; coalesced: ports SENT while
        # still waiting to be delivered; deferred: wake-ups that left ports
        # for the next turn.
        self.stats: collections.Counter[str] = collections.Counter()
        # Every datagram handled, by "doorbell/<OP>" (Hypervisor.ops).
        self.ops = ops if ops is not None else collections.Counter()

    # -- lifecycle ------------------------------------------------------------
    @property
    def path(self) -> str | None:
        """The first socket it listens on."""
        return next(iter(self._listeners), None)

    async def start(self, path: str, group: int | None = None) -> None:
        """Listen on ``path`` as well (call once per socket). Only the
        hypervisor's user may connect, and with ``group`` that group too
        (mode 0660): the directory holding the socket must be as closed,
        which covers the moment before the chmod."""
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            # Only the hypervisor's user may connect (and with ``group``,
            # that group too: opened to it only once bound privately).
            bind_private(sock, path)
            if group is not None:
                os.chown(path, -1, group)
                os.chmod(path, 0o660)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        task = asyncio.create_task(self._accept_loop(sock), name="doorbell-accept")
        self._listeners[path] = (sock, task)
        log.info("event-channel doorbell listening on %s", path)

    async def close(self) -> None:
        if self.stats:
            log.info("doorbell: %s", ", ".join(f"{k} {v}" for k, v in sorted(self.stats.items())))
        listeners, self._listeners = self._listeners, {}
        for _, task in listeners.values():
            task.cancel()
        await asyncio.gather(*(task for _, task in listeners.values()), return_exceptions=True)
        for path, (sock, _) in listeners.items():
            sock.close()
            if os.path.exists(path):
                os.unlink(path)
        conns = list(self._pending) + [c for cs in self._conns.values() for c in cs]
        tasks = [c.task for c in conns if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for domid in list(self._subs):
            self._end_streams(domid)
        for key in list(self._links):
            self.unlink(*key)

    # -- delivery ---------------------------------------------------------------
    def kick(self, domid: int, vcpu: int) -> None:
        """Tell every doorbell connection and gRPC subscriber of `domid` that
        `vcpu` has an upcall. Never blocks.

        A connection whose socket is full gets the UPCALL once it drains, and
        only one per vCPU however many kicks came meanwhile; the others are
        dropped, as are kicks past a full subscriber queue. That is safe:
        evtchn_upcall_pending is level-triggered, so one UPCALL still to come
        is enough, and the guest's scan of shared_info after reading it
        finds every port pending by then.
        """
        data = _UPCALLS[vcpu] if 0 <= vcpu < len(_UPCALLS) else wire.Upcall(vcpu).encode()
        for conn in list(self._conns.get(domid, ())):
            if conn.out or conn.owed:
                if vcpu in conn.owed:
                    self.stats["dropped_kick"] += 1
                else:
                    conn.owed.add(vcpu)
                continue
            self.stats["upcall"] += 1
            try:
                conn.sock.send(data)
            except BlockingIOError:
                conn.owed.add(vcpu)
                self._want_write(conn)
            except OSError as err:
                log.debug("d%d doorbell send failed (%s); closing it", domid, err)
                self._close(conn)
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
            self._close(conn)
        self._end_streams(domid)

    def connections(self, domid: int) -> int:
        return len(self._conns.get(domid, ()))

    def peer_pid(self, domid: int) -> int:
        """The pid (in our PID namespace; 0 if it is not visible there) of
        the process on the other end of the domain's doorbell: how the
        hypervisor finds a kernel it did not start (Domain-0's)."""
        for conn in self._conns.get(domid, ()):
            try:
                cred = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                            struct.calcsize("3i"))
            except OSError:
                continue
            pid = struct.unpack("3i", cred)[0]
            if pid > 0:
                return pid
        return 0

    # -- the direct path of interdomain channels ------------------------------------
    def link(self, a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
        """Ends ``(domid, port, vcpu)`` a and b are one channel: a socket
        pair for it, an end to each domain once both take them. Without
        descriptors to spare, the channel keeps the router's path."""
        self.unlink(a[0], a[1])
        self.unlink(b[0], b[1])
        try:
            sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as err:
            log.warning("no direct path for d%d port %d <-> d%d port %d: %s",
                        a[0], a[1], b[0], b[1], err)
            return
        for sock in (sa, sb):
            sock.setblocking(False)
        link = _Link({(a[0], a[1]): (sa, a[2]), (b[0], b[1]): (sb, b[2])})
        for key in link.ends:
            self._links[key] = link
        self.stats["link"] += 1
        self._hand_both(link)

    def _takes_channels(self, domid: int) -> list[_Connection]:
        return [c for c in self._conns.get(domid, ()) if c.channels]

    def _hand_both(self, link: _Link) -> None:
        """Hand each end to its domain, only when both domains take them: an
        end whose peer keeps the router's path would signal no one. If an end
        cannot be sent, neither is used: the pair is shut down before
        anything could be written on it."""
        if link.handed or not all(self._takes_channels(d) for d, _ in link.ends):
            return
        for (domid, port), (sock, vcpu) in link.ends.items():
            sent = [self._hand(conn, port, vcpu, sock) for conn in self._takes_channels(domid)]
            if not any(sent):
                self.unlink(domid, port)
                return
        link.handed = True

    def unlink(self, domid: int, port: int) -> list[tuple[int, int]]:
        """Revoke the channel with end (domid, port): shut its pair down,
        which every holder of either end sees at once. The ends that had
        signals queued, unread: the caller delivers them."""
        link = self._links.get((domid, port))
        if link is None:
            return []
        for key in link.ends:
            del self._links[key]
        self.stats["unlink"] += 1
        for sock, _ in link.ends.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        unread = []
        for key, (sock, _) in link.ends.items():
            try:
                if sock.recv(16):
                    unread.append(key)
            except OSError:
                pass
            sock.close()
        return unread

    def links(self) -> list[tuple[tuple[int, int, int], ...]]:
        """Every direct path, as its two ends (domid, port, vcpu)."""
        seen = {id(link): link for link in self._links.values()}
        return [tuple((d, p, v) for (d, p), (_, v) in link.ends.items()) for link in seen.values()]

    def linked(self, domid: int) -> list[int]:
        """The ports of ``domid`` that have a direct path."""
        return sorted(port for d, port in self._links if d == domid)

    def _hand(self, conn: _Connection, port: int, vcpu: int, sock: socket.socket) -> bool:
        try:
            socket.send_fds(conn.sock, [wire.Channel(port, vcpu).encode()], [sock.fileno()])
            self.stats["channel"] += 1
            return True
        except BlockingIOError:
            self.stats["channel_unsent"] += 1
        except OSError as err:
            log.debug("d%d doorbell send failed (%s); closing it", conn.domid, err)
            self._close(conn)
        return False

    # -- connections ------------------------------------------------------------
    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as err:
                # EMFILE and friends: keep serving the connections we have.
                log.warning("doorbell accept failed: %s", err)
                await asyncio.sleep(0.1)
                continue
            self._serve_new(_Connection(sock))

    def adopt(self, sock: socket.socket, domid: int) -> None:
        """Serve one end of a socket pair whose other end the launcher hands
        to domain ``domid``: the domain needs no path to the doorbell, and
        only ``domid`` may say HELLO on it (with its secret, as on any)."""
        sock.setblocking(False)
        self._serve_new(_Connection(sock, expect=domid))

    def _serve_new(self, conn: _Connection) -> None:
        self._pending.add(conn)
        conn.task = asyncio.create_task(self._serve(conn), name="doorbell-conn")

    async def _serve(self, conn: _Connection) -> None:
        try:
            caller = await self._hello(conn)
            self._pending.discard(conn)
            if caller is None:
                return
            conn.domid = caller.domid
            conn.caller = caller
            self._conns.setdefault(caller.domid, set()).add(conn)
            if conn.channels:
                for (domid, port), link in list(self._links.items()):
                    if domid != caller.domid or self._links.get((domid, port)) is not link:
                        continue
                    if link.handed:
                        sock, vcpu = link.ends[(domid, port)]
                        self._hand(conn, port, vcpu, sock)
                    else:
                        self._hand_both(link)
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
            data = await eventloop.wait_for(loop.sock_recv(conn.sock, wire.MAX_DATAGRAM + 1),
                                          self._hello_timeout)
        except (TimeoutError, OSError) as err:
            log.info("doorbell connection closed before HELLO: %s", err or "timeout")
            return None
        if not data:
            return None
        self.ops["doorbell/HELLO"] += 1
        try:
            msg = self._decode(data)
            if not isinstance(msg, wire.Hello):
                raise wire.malformed(f"expected HELLO, got {type(msg).__name__.upper()}")
            if conn.expect >= 0 and msg.domid != conn.expect:
                raise XenError(errno.EPERM, f"this doorbell was handed to d{conn.expect}, "
                                            f"not d{msg.domid}")
            caller = self._authenticate(msg.domid, msg.secret)
            if self.connections(caller.domid) >= MAX_CONNECTIONS:
                raise XenError(errno.EMFILE,
                               f"d{caller.domid} already has {MAX_CONNECTIONS} doorbell connections")
            # Paging first: a refusal there must not spend the memory
            # object, which a domain is handed once.
            paging = self._paging_for(caller) if msg.wants_paging else None
            memory = self._memory_for(caller) if msg.wants_memory else None
            conn.channels = msg.wants_channels
        except XenError as err:
            log.info("doorbell HELLO refused: %s", err.message)
            self._reply(conn, wire.Error(err.errno, err.message))
            return None
        fds = [fd for fd in (memory, paging) if fd is not None]
        if not fds:
            self._reply(conn, wire.Ok(caller.domid))
            return caller
        flags = (wire.OK_MEMORY if memory is not None else 0) | \
            (wire.OK_PAGING if paging is not None else 0)
        try:
            socket.send_fds(conn.sock, [wire.Ok(caller.domid, flags).encode()], fds)
        except OSError as err:
            log.warning("d%d: its memory or paging object could not be sent: %s",
                        caller.domid, err)
            return None
        return caller

    def _memory_for(self, caller: Caller) -> int:
        """The descriptor of the authenticated caller's own memory object:
        looked up by the caller's domid alone, never by anything it sent."""
        if self._on_memory is None:
            raise XenError(errno.EOPNOTSUPP, "this doorbell hands out no memory")
        return self._on_memory(caller)

    def _paging_for(self, caller: Caller) -> int:
        """A read-only descriptor of the authenticated caller's own paging
        pool, looked up by its domid alone."""
        if self._on_paging is None:
            raise XenError(errno.EOPNOTSUPP, "this doorbell hands out no paging pool")
        return self._on_paging(caller)

    async def _pump(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        conn.done = loop.create_future()
        self._read(conn, True)
        try:
            await conn.done
        finally:
            self._read(conn, False)
            if conn.writing:
                loop.remove_writer(conn.sock)
                conn.writing = False

    def _read(self, conn: _Connection, on: bool) -> None:
        if on != conn.reading and conn.sock.fileno() >= 0:
            loop = asyncio.get_running_loop()
            if on:
                loop.add_reader(conn.sock, self._on_readable, conn)
            else:
                loop.remove_reader(conn.sock)
            conn.reading = on

    def _close(self, conn: _Connection) -> None:
        if conn.done is not None:
            if not conn.done.done():
                conn.done.set_result(None)
        elif conn.task is not None:
            conn.task.cancel()

    def _on_readable(self, conn: _Connection) -> None:
        budget = READ_BUDGET
        for _ in range(DATAGRAM_BUDGET):
            if len(conn.sends) >= budget or conn.out:
                break
            try:
                data = conn.sock.recv(wire.MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                log.debug("d%d doorbell connection lost: %s", conn.domid, err)
                self._close(conn)
                return
            if not data:
                self._close(conn)
                return
            try:
                msg = self._decode(data)
                self.ops[f"doorbell/{type(msg).__name__.upper()}"] += 1
                if isinstance(msg, wire.Send):
                    before = len(conn.sends)
                    conn.sends.update(dict.fromkeys(msg.ports))
                    self.stats["send"] += len(msg.ports)
                    self.stats["coalesced"] += before + len(msg.ports) - len(conn.sends)
                elif isinstance(msg, wire.Copy) and self._on_copy is not None:
                    # Sends read before it may be delivered after it: a
                    # notification late is safe, early would not be.
                    budget -= len(msg.ops)
                    self._send(conn, self._copy(conn, msg))
                else:
                    raise wire.malformed(f"unexpected {type(msg).__name__.upper()}")
            except XenError as err:
                self.stats["malformed"] += 1
                log.warning("d%d doorbell: %s; closing the connection", conn.domid, err.message)
                self._close(conn)
                return
            if budget <= 0:
                break
        self._deliver_sends(conn, max(budget, 0))
        if conn.sends:
            self._defer(conn)
        elif conn.out:
            # The domain is not reading its answers: stop taking requests
            # until it does (_flush resumes).
            self._read(conn, False)

    def _deliver_sends(self, conn: _Connection, budget: int) -> None:
        if len(conn.sends) <= budget:
            ports, conn.sends = conn.sends, {}
        else:
            ports = dict.fromkeys(itertools.islice(conn.sends, budget))
            conn.sends = dict.fromkeys(itertools.islice(conn.sends, budget, None))
        for port in ports:
            self._deliver(conn.domid, port)

    def _defer(self, conn: _Connection) -> None:
        """Ports are left after this wake-up's budget: stop reading the
        connection and deliver them on the loop's next turn, after the
        callbacks of every other connection ready now."""
        self.stats["deferred"] += 1
        self._read(conn, False)
        if not conn.resuming:
            conn.resuming = True
            asyncio.get_running_loop().call_soon(self._resume, conn)

    def _resume(self, conn: _Connection) -> None:
        conn.resuming = False
        if conn.done is None or conn.done.done():
            return
        if not conn.out:
            self._read(conn, True)
        self._on_readable(conn)

    def _copy(self, conn: _Connection, msg: wire.Copy) -> bytes:
        """GNTTABOP_copy as the connection's caller: one GNTST_* per op."""
        self.stats["copy"] += 1
        self.stats["copy_ops"] += len(msg.ops)
        try:
            statuses = self._on_copy(conn.caller, msg.ops)
        except XenError as err:
            # The whole call failed (the caller's domain is going away):
            # as a failed GrantTable.Copy call, every op failed.
            log.debug("d%d doorbell COPY refused: %s", conn.domid, err.message)
            statuses = [abi.GNTST_general_error] * len(msg.ops)
        return wire.Copied(msg.seq, tuple(statuses)).encode()

    def _send(self, conn: _Connection, data: bytes) -> None:
        if not conn.out:
            try:
                conn.sock.send(data)
                return
            except BlockingIOError:
                pass
            except OSError as err:
                log.debug("d%d doorbell send failed (%s); closing it", conn.domid, err)
                self._close(conn)
                return
        conn.out.append(data)
        self._want_write(conn)

    def _want_write(self, conn: _Connection) -> None:
        if not conn.writing and conn.done is not None and not conn.done.done():
            asyncio.get_running_loop().add_writer(conn.sock, self._flush, conn)
            conn.writing = True

    def _flush(self, conn: _Connection) -> None:
        """The socket has room: answers first, in order, then owed UPCALLs."""
        try:
            while conn.out:
                conn.sock.send(conn.out[0])
                conn.out.popleft()
            while conn.owed:
                vcpu = min(conn.owed)
                conn.sock.send(wire.Upcall(vcpu).encode())
                conn.owed.discard(vcpu)
        except BlockingIOError:
            return
        except OSError as err:
            log.debug("d%d doorbell send failed (%s); closing it", conn.domid, err)
            self._close(conn)
            return
        asyncio.get_running_loop().remove_writer(conn.sock)
        conn.writing = False
        if not conn.done.done():
            self._read(conn, True)
            if conn.sends and not conn.resuming:
                conn.resuming = True
                asyncio.get_running_loop().call_soon(self._resume, conn)

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
