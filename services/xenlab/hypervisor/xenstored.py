"""xenstored: the server side of xenstore's wire protocol, on the XenStore core.

The same core (xenlab.hypervisor.xenstore) serves the gRPC XenStore service;
this module speaks what Xen's own tools and guest kernels speak instead
(xen/include/public/io/xs_wire.h, docs/misc/xenstore.txt), with C
xenstored's behaviour (tools/xenstore/xenstored_core.c, _domain.c,
_control.c of Xen 4.17) where the documents leave it open.

Sans I/O. An ``XsConnection`` is one client: bytes in (``receive``), bytes
out (``take``). It answers its requests in order, each reply carrying the
request's req_id and tx_id; watch events, from any connection's change, are
queued between replies unsolicited. An adapter moves the bytes: a unix
socket (xenstored_socket), or a domain's store ring.

``Xenstored`` holds the connections and xenstored's domain table (which
domains are introduced), for INTRODUCE, RELEASE, IS_DOMAIN_INTRODUCED,
RESUME and SET_TARGET.

Limits. Every connection stops taking requests while ``backlog`` bytes of
its replies are unsent, so a client that writes without reading stalls
itself (as xenstored's quota-outstanding); watch events cannot be held back
that way, and a client that leaves ``output`` bytes unread is dropped, as
the gRPC WatchStream is. Watches and transactions are capped per
connection as well as per domain (the core's quotas), because the socket's
clients are Domain-0, whom the core's quotas exempt.
"""
from __future__ import annotations

import collections
import errno
import hashlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable

from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.xenstore import XenStore, home, parent_of
from xenlab.xen import abi
from xenlab.xen import xs_wire as w
from xenlab.xen.errors import XenError, XenStoreError
from xenlab.xen.xs_wire import XsMessage, XsType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    backlog: int = 64 * 1024        # unsent reply bytes past which requests wait
    input: int = 64 * 1024          # unread request bytes buffered before reading stops
    output: int = 1 << 20           # unsent bytes past which the client is dropped
    watches: int = 4096             # per connection (XS_WATCH answers E2BIG past it)
    transactions: int = 64          # open per connection (ENOSPC past it)
    batch: int = 256                # requests handled before other connections get a turn


@dataclass
class StoreDomain:
    """An introduced domain (xenstored_domain.c's struct domain)."""
    domid: int
    gfn: int = 0
    port: int = 0
    target: int | None = None       # SET_TARGET: the domain this one acts for


class Xenstored:
    """The connections and the domain table. ``domain_exists`` is the
    hypervisor's word on which domains there are."""

    def __init__(self, store: XenStore, domain_exists: Callable[[int], bool],
                 limits: ConnectionLimits = ConnectionLimits(),
                 ops: collections.Counter | None = None) -> None:
        self.store = store
        # Every request handled, by "xenstored/<type>": the hypervisor's
        # count of the messages it handles (Hypervisor.ops).
        self.ops = ops if ops is not None else collections.Counter()
        self.limits = limits
        self._domain_exists = domain_exists
        self.domains: dict[int, StoreDomain] = {0: StoreDomain(0)}     # dom0_init
        self.connections: set[XsConnection] = set()
        # The domains' store rings (xenstored_ring.StoreRings sets itself
        # here); without it, INTRODUCE only records the domain.
        self.rings = None
        self._names = 0

    def connect(self, caller: Caller, wake: Callable[[], None] | None = None,
                name: str = "") -> "XsConnection":
        self._names += 1
        conn = XsConnection(self, caller, wake, name or f"d{caller.domid}#{self._names}")
        self.connections.add(conn)
        return conn

    # -- the domain table --------------------------------------------------------
    def is_introduced(self, domid: int) -> bool:
        return domid in self.domains

    def introduce(self, domid: int, gfn: int = 0, port: int = 0) -> StoreDomain:
        """XS_INTRODUCE, and the toolstack introducing a domain it created.
        Introducing a domain again only records its new event channel, as
        xenstored rebinds it."""
        dom = self.domains.get(domid)
        if dom is not None:
            if port and port != dom.port and self.rings is not None:
                self.rings.rebind(dom, port)
            dom.port = port or dom.port
            return dom
        if not self._domain_exists(domid):
            raise XenStoreError(errno.ENOENT, f"there is no domain {domid} to introduce")
        dom = StoreDomain(domid, gfn, port)
        if port and self.rings is not None:
            self.rings.attach(dom)
        self.domains[domid] = dom
        self.store.introduce_domain(domid)
        return dom

    def release(self, domid: int) -> None:
        """XS_RELEASE, and a domain's destruction: its transactions and
        watches end, the nodes it owns pass to Domain-0 and @releaseDomain
        fires (the core's release_domain, as xenstored's destroy_domain)."""
        self.domains.pop(domid, None)
        if self.rings is not None:
            self.rings.detach(domid)
        for dom in self.domains.values():
            if dom.target == domid:         # a later domain with its id is not theirs
                dom.target = None
                self.retarget(dom)
        for conn in [c for c in self.connections if c.caller.domid == domid and domid != 0]:
            conn.fail(w.XENSTORE_ERROR_COMM, "the domain was released")
        self.store.release_domain(domid)

    def domain_shutdown(self, domid: int) -> None:
        """VIRQ_DOM_EXC told xenstored that a domain shut down: @releaseDomain
        fires for an introduced one, as domain.c's do_check_domain does
        (once: the hypervisor reports a shutdown once)."""
        if domid in self.domains:
            self.store.fire_release_domain()

    def retarget(self, dom: StoreDomain) -> None:
        """SET_TARGET: the domain's connections act for its target too
        (the core's access(), as xenstored's perm_for_conn)."""
        for conn in self.connections:
            if conn.caller.domid == dom.domid:
                conn.caller = Caller(dom.domid, conn.caller.privileged, dom.target)

    def find(self, domid: int) -> StoreDomain:
        """find_connected_domain: an introduced domain, or ENOENT."""
        dom = self.domains.get(domid)
        if dom is None:
            raise XenStoreError(errno.ENOENT, f"domain {domid} is not introduced")
        return dom

    def _closed(self, conn: "XsConnection") -> None:
        self.connections.discard(conn)


def _text(raw: bytes) -> str:
    """A path or token off the wire. latin-1 keeps every byte as it came, so
    an event gives a token back byte for byte; the core refuses a path with
    anything outside [A-Za-z0-9-/_@]."""
    return raw.decode("latin-1")


def _wire(text: str) -> bytes:
    return text.encode("latin-1")


def _einval(message: str) -> XenStoreError:
    return XenStoreError(errno.EINVAL, message)


def _arg(payload: bytes, what: str) -> bytes:
    arg = w.onearg(payload)
    if arg is None:
        raise _einval(f"{what}: the payload must be one NUL-terminated string")
    return arg


def _domid(raw: bytes) -> int:
    try:
        return w.parse_domid(raw)
    except ValueError as err:
        raise _einval(str(err)) from None


def _real_domid(raw: bytes) -> int:
    """onearg_domain: a domain id that is not Domain-0."""
    domid = _domid(raw)
    if domid == 0:
        raise _einval("Domain-0 cannot be introduced, released or resumed")
    return domid


_PRIVILEGED = frozenset({XsType.CONTROL, XsType.INTRODUCE, XsType.RELEASE,
                         XsType.IS_DOMAIN_INTRODUCED, XsType.RESUME, XsType.SET_TARGET})
_NO_TX = frozenset({XsType.WATCH, XsType.UNWATCH})     # XS_FLAG_NOTID: tx_id ignored


class XsConnection:
    """One client of xenstored, as bytes in and bytes out."""

    def __init__(self, daemon: Xenstored, caller: Caller, wake: Callable[[], None] | None,
                 name: str) -> None:
        self.daemon = daemon
        self.store = daemon.store
        self.limits = daemon.limits
        self.caller = caller
        self.wake = wake
        self.name = name
        self.reader = w.MessageReader()
        self.closed = False
        self.error = w.XENSTORE_ERROR_NONE
        self.reason = ""
        self.stats = {"requests": 0, "errors": 0, "events": 0, "events_merged": 0,
                      "events_too_long": 0}
        self._out: deque[tuple[bytes, bytes | None]] = deque()
        self._out_bytes = 0
        self._head_sent = 0
        self._queued_events: set[bytes] = set()
        self._held: list[tuple[str, str]] | None = None
        self._transactions: set[int] = set()
        self._watches = 0

    def __repr__(self) -> str:
        return f"<XsConnection {self.name}>"

    # -- the adapter's side ------------------------------------------------------
    def receive(self, data: bytes) -> int:
        """Bytes from the client; handles what whole requests it may now.
        Returns how many it handled."""
        if self.closed:
            return 0
        self.reader.feed(data)
        return self.process()

    def process(self) -> int:
        """Handle buffered requests while the reply backlog allows, at most
        ``limits.batch`` of them. Call it from the event loop, never from
        within a core request (a watch event's ``wake``)."""
        handled = 0
        while not self.closed and handled < self.limits.batch and self._out_bytes < self.limits.backlog:
            try:
                msg = self.reader.next()
            except w.WireError as err:
                self.fail(err.code, str(err))
                break
            if msg is None:
                break
            self._handle(msg)
            handled += 1
        return handled

    def take(self, limit: int | None = None) -> bytes:
        """Up to ``limit`` bytes of replies and events, in order; a message
        may be split across calls (the store ring is a byte stream)."""
        out = bytearray()
        while self._out and (limit is None or len(out) < limit):
            data, event = self._out[0]
            if event is not None and self._head_sent == 0:
                self._queued_events.discard(event)
            end = len(data) if limit is None else min(len(data), self._head_sent + limit - len(out))
            out += data[self._head_sent:end]
            self._head_sent = end
            if end == len(data):
                self._out.popleft()
                self._head_sent = 0
        self._out_bytes -= len(out)
        return bytes(out)

    @property
    def pending_output(self) -> int:
        return self._out_bytes

    @property
    def wants_input(self) -> bool:
        """Whether the adapter should read more from the client now."""
        return (not self.closed and self._out_bytes < self.limits.backlog
                and self.reader.buffered < self.limits.input)

    def fail(self, code: int, reason: str) -> None:
        """End the connection on the client's fault (xenstored's
        ignore_connection): nothing more is read or sent."""
        if self.closed:
            return
        log.warning("xenstored: dropping %s: %s", self.name, reason)
        self.error = code
        self.reason = reason
        self._out.clear()
        self._out_bytes = 0
        self.close()

    def close(self) -> None:
        """The client went away: its watches and open transactions go."""
        if self.closed:
            return
        self.closed = True
        self._end_all()
        self.daemon._closed(self)
        self._wake()

    # -- the core's side -----------------------------------------------------------
    def fire(self, path: str, token: str) -> None:
        """A watch event for this connection (the core's fire callback)."""
        if self.closed:
            return
        if self._held is not None:
            self._held.append((path, token))
        else:
            self._queue_event(path, token)

    # -- internals: output ---------------------------------------------------------
    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()

    def _queue(self, data: bytes, event: bytes | None = None) -> None:
        if self.closed:
            return
        self._out.append((data, event))
        self._out_bytes += len(data)
        if self._out_bytes > self.limits.output:
            self.fail(w.XENSTORE_ERROR_COMM, f"{self._out_bytes} bytes of replies and watch "
                                             f"events unread (the most is {self.limits.output})")
            return
        self._wake()

    def _queue_event(self, path: str, token: str) -> None:
        payload = w.join(_wire(path), _wire(token))
        if len(payload) > w.XENSTORE_PAYLOAD_MAX:
            # send_event: "Don't try to send over-long events."
            self.stats["events_too_long"] += 1
            log.warning("xenstored: %s: a watch event for %s is longer than a payload; dropped",
                        self.name, path)
            return
        if not path.startswith("@") and payload in self._queued_events:
            # send_event: an identical event not sent yet says it all.
            self.stats["events_merged"] += 1
            return
        self.stats["events"] += 1
        self._queued_events.add(payload)
        self._queue(w.encode(XsMessage(XsType.WATCH_EVENT, 0, 0, payload)), payload)

    # -- internals: requests ----------------------------------------------------------
    def _handle(self, msg: XsMessage) -> None:
        self.stats["requests"] += 1
        self.daemon.ops[f"xenstored/{msg.type_name}"] += 1
        self._held = []
        try:
            reply_type, payload = msg.type, self._dispatch(msg)
            if len(payload) > w.XENSTORE_PAYLOAD_MAX:
                raise XenStoreError(errno.E2BIG, f"the answer to {msg.type_name} is "
                                                 f"{len(payload)} bytes, more than a payload")
        except XenError as err:
            self.stats["errors"] += 1
            reply_type, payload = XsType.ERROR, w.error_payload(self._wire_errno(msg.type, err.errno))
            log.debug("xenstored: %s: %s req %d: %s", self.name, msg.type_name, msg.req_id, err)
        held, self._held = self._held, None
        self._queue(w.encode(XsMessage(reply_type, msg.req_id, msg.tx_id, payload)))
        for path, token in held:
            self._queue_event(path, token)

    @staticmethod
    def _wire_errno(msg_type: int, err: int) -> int:
        """The core's errno as xenstored would answer it: its quotas say
        E2BIG for watches and ENOSPC for the rest (EDQUOT is not in
        xsd_errors); an unknown domain is ENOENT."""
        if err == errno.EDQUOT:
            return errno.E2BIG if msg_type == XsType.WATCH else errno.ENOSPC
        if err == errno.ESRCH:
            return errno.ENOENT
        return err

    def _dispatch(self, msg: XsMessage) -> bytes:
        handler = _HANDLERS.get(msg.type)
        if handler is None:
            raise XenStoreError(errno.ENOSYS, f"{msg.type_name} is not a request xenstored serves")
        if msg.type in _PRIVILEGED and not self.caller.privileged:
            raise XenStoreError(errno.EACCES, f"{msg.type_name} is for the toolstack only")
        tx = 0 if msg.type in _NO_TX else msg.tx_id
        if tx and tx not in self._transactions:
            raise XenStoreError(errno.ENOENT, f"this connection has no transaction {tx}")
        return handler(self, msg.payload, tx)

    def _end_all(self) -> None:
        self.store.drop_connection(self)
        self._watches = 0
        for tx in sorted(self._transactions):
            try:
                self.store.transaction_end(self.caller, tx, commit=False)
            except XenError:
                pass        # the core already ended it (its domain was released)
        self._transactions.clear()

    # -- the requests (docs/misc/xenstore.txt) -----------------------------------------
    def _read(self, payload: bytes, tx: int) -> bytes:
        return self.store.read(self.caller, _text(_arg(payload, "READ")), tx)

    def _write(self, payload: bytes, tx: int) -> bytes:
        end = payload.find(b"\0")
        if end < 0:
            raise _einval("WRITE: the path must be NUL-terminated")
        self.store.write(self.caller, _text(payload[:end]), payload[end + 1:], tx)
        return w.OK

    def _mkdir(self, payload: bytes, tx: int) -> bytes:
        self.store.mkdir(self.caller, _text(_arg(payload, "MKDIR")), tx)
        return w.OK

    def _rm(self, payload: bytes, tx: int) -> bytes:
        path = _text(_arg(payload, "RM"))
        try:
            self.store.rm(self.caller, path, tx)
        except XenStoreError as err:
            # do_rm: a node already gone is fine, if its parent is there.
            if err.errno != errno.ENOENT:
                raise
            absolute = path if path.startswith("/") else f"{home(self.caller.domid)}/{path}"
            try:
                self.store.get_perms(self.caller, parent_of(absolute), tx)
            except XenError:
                raise err from None
        return w.OK

    def _children(self, path: str, tx: int) -> list[bytes]:
        return [_wire(name) for name in self.store.directory(self.caller, path, tx)]

    def _directory(self, payload: bytes, tx: int) -> bytes:
        return w.join(*self._children(_text(_arg(payload, "DIRECTORY")), tx))

    def _directory_part(self, payload: bytes, tx: int) -> bytes:
        """send_directory_part: the children from a byte offset into their
        NUL-separated list, as much as fits, after a generation count; an
        extra NUL marks the end. The generation is a digest of the list: it
        changes whenever the list does, which is what clients compare it for."""
        if w.count_strings(payload) != 2:
            raise _einval("DIRECTORY_PART: expected a path and an offset")
        raw_path, raw_off = w.strings(payload)
        if not raw_off.isdigit():
            raise _einval(f"DIRECTORY_PART: bad offset {raw_off!r}")
        blob = w.join(*self._children(_text(raw_path), tx))
        gen = str(int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big")).encode() + b"\0"
        off = int(raw_off)
        if off >= len(blob):
            return gen + b"\0"
        room = w.XENSTORE_PAYLOAD_MAX - len(gen) - 1
        end = off
        while end < len(blob):
            nul = blob.find(b"\0", end)
            if nul - off >= room:
                break
            end = nul + 1
        return gen + blob[off:end] + (b"\0" if end == len(blob) else b"")

    def _get_perms(self, payload: bytes, tx: int) -> bytes:
        perms = self.store.get_perms(self.caller, _text(_arg(payload, "GET_PERMS")), tx)
        return w.join(*(w.perm_to_string(domid, letter) for domid, letter in perms))

    def _set_perms(self, payload: bytes, tx: int) -> bytes:
        parts = w.strings(payload)
        if len(parts) < 2:
            raise _einval("SET_PERMS: expected a path and at least one permission")
        try:
            perms = [w.perm_from_string(p) for p in parts[1:]]
        except ValueError as err:
            raise _einval(str(err)) from None
        self.store.set_perms(self.caller, _text(parts[0]), perms, tx)
        return w.OK

    def _watch(self, payload: bytes, tx: int) -> bytes:
        parts = w.strings(payload)
        if len(parts) != 2:
            raise _einval("WATCH: expected a path and a token")
        if self._watches >= self.limits.watches:
            raise XenStoreError(errno.E2BIG, f"this connection has {self._watches} watches, "
                                             f"the most allowed")
        self.store.watch(self.caller, self, _text(parts[0]), _text(parts[1]))
        self._watches += 1
        return w.OK

    def _unwatch(self, payload: bytes, tx: int) -> bytes:
        parts = w.strings(payload)
        if len(parts) != 2:
            raise _einval("UNWATCH: expected a path and a token")
        self.store.unwatch(self.caller, self, _text(parts[0]), _text(parts[1]))
        self._watches -= 1
        return w.OK

    def _transaction_start(self, payload: bytes, tx: int) -> bytes:
        if tx:
            raise XenStoreError(errno.EBUSY, "TRANSACTION_START inside a transaction")
        if len(self._transactions) >= self.limits.transactions:
            raise XenStoreError(errno.ENOSPC, f"this connection has {len(self._transactions)} "
                                              f"transactions open, the most allowed")
        new = self.store.transaction_start(self.caller)
        self._transactions.add(new)
        return f"{new}".encode() + b"\0"

    def _transaction_end(self, payload: bytes, tx: int) -> bytes:
        arg = w.onearg(payload)
        if arg not in (b"T", b"F"):
            raise _einval("TRANSACTION_END: the payload is T (commit) or F (abort)")
        if not tx:
            raise XenStoreError(errno.ENOENT, "TRANSACTION_END outside a transaction")
        self._transactions.discard(tx)
        self.store.transaction_end(self.caller, tx, commit=arg == b"T")
        return w.OK

    def _get_domain_path(self, payload: bytes, tx: int) -> bytes:
        return _wire(home(_domid(_arg(payload, "GET_DOMAIN_PATH")))) + b"\0"

    def _is_domain_introduced(self, payload: bytes, tx: int) -> bytes:
        domid = _domid(_arg(payload, "IS_DOMAIN_INTRODUCED"))
        return b"T\0" if domid == abi.DOMID_SELF or self.daemon.is_introduced(domid) else b"F\0"

    def _introduce(self, payload: bytes, tx: int) -> bytes:
        parts = w.strings(payload)
        if len(parts) < 3:
            raise _einval("INTRODUCE: expected a domain id, a gfn and an event channel")
        domid = _real_domid(parts[0])
        if domid >= abi.DOMID_FIRST_RESERVED:
            raise _einval(f"INTRODUCE: {domid} is not a real domain id")
        gfn, port = parts[1], parts[2]
        if not gfn.lstrip(b"-").isdigit() or not port.isdigit() or int(port) <= 0:
            raise _einval("INTRODUCE: the gfn and the event channel are decimal numbers, "
                          "the channel above 0")
        self.daemon.introduce(domid, int(gfn), int(port))
        return w.OK

    def _release(self, payload: bytes, tx: int) -> bytes:
        domid = _real_domid(_arg(payload, "RELEASE"))
        self.daemon.find(domid)
        self.daemon.release(domid)
        return w.OK

    def _resume(self, payload: bytes, tx: int) -> bytes:
        self.daemon.find(_real_domid(_arg(payload, "RESUME")))
        return w.OK

    def _set_target(self, payload: bytes, tx: int) -> bytes:
        parts = w.strings(payload)
        if len(parts) < 2:
            raise _einval("SET_TARGET: expected two domain ids")
        dom = self.daemon.find(_domid(parts[0]))
        dom.target = self.daemon.find(_domid(parts[1])).domid
        self.daemon.retarget(dom)
        return w.OK

    def _reset_watches(self, payload: bytes, tx: int) -> bytes:
        self._end_all()
        return w.OK

    def _control(self, payload: bytes, tx: int) -> bytes:
        parts = w.strings(payload)
        if not parts:
            raise _einval("CONTROL: expected a command")
        command, params = _text(parts[0]), [_text(p) for p in parts[1:]]
        run = _CONTROL.get(command)
        if run is None:
            raise _einval(f"CONTROL: unknown command {command!r} (try help)")
        return run(self, params)

    # -- CONTROL commands (xenstored_control.c) ---------------------------------------
    def _control_print(self, params: list[str]) -> bytes:
        if len(params) != 1:
            raise _einval("CONTROL print: expected one string")
        log.info("control: %s", params[0])
        return w.OK

    def _control_help(self, params: list[str]) -> bytes:
        if params:
            raise _einval("CONTROL help takes no parameter")
        return "".join(f"{name}\t{usage}\n" for name, (_, usage) in _CONTROL_COMMANDS.items()
                       ).encode() + b"\0"

    def _control_quota(self, params: list[str]) -> bytes:
        q = self.store.quotas
        if not params:
            text = (f"Nodes per domain: {q.nodes}\nWatches per domain: {q.watches}\n"
                    f"Transactions per domain: {q.transactions}\nMax. size of a node: {q.entry_size}\n"
                    f"Max. length of a node path: {q.path_max}\n"
                    f"Max. number of permissions per node: {q.perms}\n")
        elif len(params) == 1 and params[0].isdigit():
            domid = int(params[0])
            self.daemon.find(domid)
            text = (f"Domain {domid}:\nnodes: {self.store.node_count(domid)}\n"
                    f"watches: {self.store.watch_count(domid)}\n"
                    f"transactions: {self.store.open_transactions(domid)}\n")
        else:
            raise _einval("CONTROL quota: no parameter, or a domain id (the quotas are "
                          "set when the hypervisor starts)")
        return text.encode() + b"\0"


_CONTROL_COMMANDS: dict[str, tuple[Callable, str]] = {
    "print": (XsConnection._control_print, "<string>"),
    "quota": (XsConnection._control_quota, "[<domid>]"),
    "help": (XsConnection._control_help, ""),
}
_CONTROL = {name: run for name, (run, _) in _CONTROL_COMMANDS.items()}

_HANDLERS: dict[int, Callable[[XsConnection, bytes, int], bytes]] = {
    XsType.CONTROL: XsConnection._control,
    XsType.DIRECTORY: XsConnection._directory,
    XsType.READ: XsConnection._read,
    XsType.GET_PERMS: XsConnection._get_perms,
    XsType.WATCH: XsConnection._watch,
    XsType.UNWATCH: XsConnection._unwatch,
    XsType.TRANSACTION_START: XsConnection._transaction_start,
    XsType.TRANSACTION_END: XsConnection._transaction_end,
    XsType.INTRODUCE: XsConnection._introduce,
    XsType.RELEASE: XsConnection._release,
    XsType.GET_DOMAIN_PATH: XsConnection._get_domain_path,
    XsType.WRITE: XsConnection._write,
    XsType.MKDIR: XsConnection._mkdir,
    XsType.RM: XsConnection._rm,
    XsType.SET_PERMS: XsConnection._set_perms,
    XsType.IS_DOMAIN_INTRODUCED: XsConnection._is_domain_introduced,
    XsType.RESUME: XsConnection._resume,
    XsType.SET_TARGET: XsConnection._set_target,
    XsType.RESET_WATCHES: XsConnection._reset_watches,
    XsType.DIRECTORY_PART: XsConnection._directory_part,
}
