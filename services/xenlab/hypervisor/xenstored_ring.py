"""xenstored's end of each domain's store ring (xenstored_domain.c).

The toolstack gives every domain a store page and an unbound event channel
offered to the store domain, and introduces the domain; xenstored then maps
the page and binds the channel. Here xenstored is part of the hypervisor, so
"mapping" is a view of the domain's frame and "binding" makes the
hypervisor the channel's consumer (EventChannels.bind_consumer). Each ring
is one ``XsConnection``, acting as its domain.

The ring is the guest's to write, and nothing on it is trusted: xenstored's
own indexes are private (xen.xs_ring), the guest's are checked on every
pass (check_indexes), and each byte is copied out once before the
connection parses it. A guest that breaks the ring (an index past it, a
length past XENSTORE_PAYLOAD_MAX, a consumer index going backwards) loses
its connection, with the reason in the page's ``error`` field
(XENSTORE_SERVER_FEATURE_ERROR), as xenstored's ignore_connection does;
nothing else notices. While the page is xenstored's, the guest cannot give
it back to the hypervisor (as a mapped page cannot be freed).
"""
from __future__ import annotations

import asyncio
import errno
import logging
from typing import Callable

from xenlab.hypervisor.evtchn import EventChannels
from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.memory import MachineMemory
from xenlab.hypervisor.xenstored import StoreDomain, Xenstored
from xenlab.xen import xs_wire as w
from xenlab.xen.errors import XenError, XenStoreError
from xenlab.xen.xs_ring import XsRingEnd, XsRingError, XsRingPage

log = logging.getLogger(__name__)

# The domain builder's xenstore page: one of the frames the guest kernel
# keeps for itself (xenlab.domain.memory.RESERVED_FRAMES), as Xen's domain
# builders place it among the special pages.
STORE_GFN = 15
# libxl's store_domid: the domain xenstored runs in, to which the store
# port is offered. xenlab's xenstored is the hypervisor, standing in Domain-0.
STORE_DOMID = 0
SERVER_FEATURES = w.XENSTORE_SERVER_FEATURE_ERROR
# Passes over a ring per wake-up before other rings and sockets get a turn.
ROUNDS = 8


class RingConnection:
    """One domain's ring, bound to an XsConnection."""

    def __init__(self, rings: "StoreRings", dom: StoreDomain, view: memoryview,
                 page: XsRingPage, privileged: bool) -> None:
        self.rings = rings
        self.domid = dom.domid
        self.gfn = dom.gfn
        self.port = dom.port
        self._view = view
        self.page = page
        self.end = XsRingEnd(page, server=True)
        self.conn = rings.daemon.connect(Caller(dom.domid, privileged, dom.target),
                                         wake=self.kick, name=f"d{dom.domid} ring")
        self.closed = False
        self._scheduled = False
        self.stats = {"kicks": 0, "passes": 0, "bytes_in": 0, "bytes_out": 0}

    def kick(self) -> None:
        """An event from the guest, or output to send: service the ring soon
        (never from inside the caller, which may be a core request)."""
        self.stats["kicks"] += 1
        if not self._scheduled and not self.closed:
            self._scheduled = True
            self.rings.call_soon(self.service)

    def service(self) -> None:
        self._scheduled = False
        if self.closed or self.conn.closed:
            return
        self.stats["passes"] += 1
        moved = False
        try:
            for _ in range(ROUNDS):
                progressed = self._round()
                moved |= progressed
                if not progressed or self.conn.closed:
                    break
            else:
                self.kick()         # more to do: after the others
        except XsRingError as err:
            self._broken(err.code, str(err))
            moved = True
        if self.conn.closed and not self.closed and self.conn.error:
            self._broken(self.conn.error, self.conn.reason or "protocol error")
            moved = True
        if moved:
            self._notify()

    def _round(self) -> bool:
        progressed = False
        if self.conn.pending_output:
            room = self.end.writable()
            if room:
                data = self.conn.take(room)
                if self.end.write(data) != len(data):
                    raise XsRingError("the domain moved rsp_cons backwards while we wrote")
                self.stats["bytes_out"] += len(data)
                progressed = True
        if self.conn.wants_input:
            data = self.end.read()
            if data:
                self.stats["bytes_in"] += len(data)
                self.conn.receive(data)
                progressed = True
        if self.conn.process():
            progressed = True
        return progressed

    def _broken(self, code: int, reason: str) -> None:
        """ignore_connection: the error goes in the page; nothing more is
        read or written."""
        log.warning("xenstored: d%d broke its store ring: %s", self.domid, reason)
        self.page.error = code
        self.conn.fail(code, reason)
        self.closed = True

    def _notify(self) -> None:
        self.rings.evtchn.notify_from_hypervisor(self.domid, self.port)

    def close(self) -> None:
        """xenstored lets go: the channel is unbound, the page unmapped."""
        self.closed = True
        self.conn.close()
        try:
            self.rings.evtchn.unbind_consumer(self.domid, self.port, STORE_DOMID)
        except XenError:
            pass
        self.page.release()
        self._view.release()


class StoreRings:
    """Every introduced domain's ring; the Xenstored's ``rings``."""

    def __init__(self, daemon: Xenstored, memory: MachineMemory, evtchn: EventChannels,
                 is_privileged: Callable[[int], bool],
                 call_soon: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.daemon = daemon
        self.memory = memory
        self.evtchn = evtchn
        self._is_privileged = is_privileged
        self._call_soon = call_soon
        self.rings: dict[int, RingConnection] = {}
        memory.add_busy_check(self._busy)
        daemon.rings = self

    def call_soon(self, callback: Callable[[], None]) -> None:
        if self._call_soon is not None:
            self._call_soon(callback)
        else:
            asyncio.get_running_loop().call_soon(callback)

    def attach(self, dom: StoreDomain) -> None:
        """Map the domain's store page and bind its port (introduce_domain)."""
        try:
            view = self.memory.frame(dom.domid, dom.gfn)
        except XenError as err:
            raise XenStoreError(errno.EINVAL, f"d{dom.domid}'s store page gfn {dom.gfn}: "
                                              f"{err.message}") from None
        page = XsRingPage(view)
        ring = RingConnection(self, dom, view, page, self._is_privileged(dom.domid))
        try:
            self.evtchn.bind_consumer(dom.domid, dom.port, STORE_DOMID, ring.kick)
        except XenError as err:
            ring.closed = True
            ring.conn.close()
            page.release()
            view.release()
            raise XenStoreError(errno.EINVAL, f"d{dom.domid}'s store port {dom.port}: "
                                              f"{err.message}") from None
        self.rings[dom.domid] = ring
        page.server_features = SERVER_FEATURES
        page.connection = w.XENSTORE_CONNECTED
        # Whatever the guest wrote before we were there (a domain introduced
        # again); the pass notifies it if it answers anything. A new domain
        # gets no event: it looks at its ring when it boots.
        ring.kick()

    def rebind(self, dom: StoreDomain, port: int) -> None:
        """INTRODUCE of a domain already introduced: "recreating the xenbus
        event-channel", the old one let go."""
        ring = self.rings.get(dom.domid)
        if ring is None:
            return
        try:
            self.evtchn.bind_consumer(dom.domid, port, STORE_DOMID, ring.kick)
        except XenError as err:
            raise XenStoreError(errno.EINVAL, f"d{dom.domid}'s store port {port}: "
                                              f"{err.message}") from None
        self.evtchn.unbind_consumer(dom.domid, ring.port, STORE_DOMID)
        ring.port = port

    def detach(self, domid: int) -> None:
        ring = self.rings.pop(domid, None)
        if ring is not None:
            ring.close()

    def _busy(self, domid: int, gfn: int) -> str | None:
        ring = self.rings.get(domid)
        if ring is not None and ring.gfn == gfn:
            return "is its xenstore ring page, which xenstored has mapped"
        return None
