"""Hostile peers for fuzzing xenlab's split network drivers, or your own.

* ``HostileFrontend``: a domU that performs netfront's half of the vif
  handshake itself (grants, event channel, the xenstore keys), then writes
  whatever it is told into its shared tx and rx rings: raw slots, any
  producer index, slots changed after they were published, floods of
  notifications. Netback, or any backend serving the vif, must answer
  every request it consumes or disable the vif, and only that vif.
* ``HostileBackend``: an unprivileged driver domain that performs netback's
  half of the handshake for a vif of another domain, then answers its
  netfront with whatever it is told: responses with bad ids, sizes past the
  page, offsets out of range, producer indexes past what was asked.
* ``TxFuzzer`` and ``RxFuzzer``: seeded, pure generators of hostile rounds
  for each, with what the driver on the other side must do about them
  (Linux's netback and netfront rules, as xenlab's drivers document them).

Both peers are domains of an in-process hypervisor (``xenlab.testing``'s
``hypervisor`` fixture, an ``InProcessLab``): each boots a DomainKernel with
no drivers, with that domain's credentials, and the toolstack (Domain-0's
calls, ``toolstack(lab)``) attaches the vif, as ``xl network-attach`` does.
They act through the kernel's typed hypercall layer, as drivers do.

The floods of the hypervisor itself are in xenlab.testing_floods.

    front = await HostileFrontend.start(lab, "evil", bridge="xenbr0")
    start = front.put([TxRequest(gref, 0, 0, 999, 60).pack()])   # id out of range
    front.publish()
    front.kick()
    outcome = await front.wait(start + 1)      # "answered" or "disabled"
"""
from __future__ import annotations

import asyncio
import collections
import errno
import random
import struct
import time
from dataclasses import dataclass, field

from xenlab import eventloop
from xenlab.domain.hypercall import DomainOps, Hypercalls, Page, VifInfo
from xenlab.domain.kernel import DomainKernel
from xenlab.xen.start_info import StartInfo
from xenlab.xen import abi
from xenlab.xen.abi import XenbusState
from xenlab.xen.errors import XenError
from xenlab.xen.netif import (FEATURE_XENLAB_PERSISTENT, ExtraInfo, GsoInfo, RxRequest, RxResponse, TxRequest,
                              TxResponse, make_rx_ring, make_tx_ring)

PAGE = abi.PAGE_SIZE
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF
WAIT = 10.0                # seconds before a peer that never answers is a hang
STATE_POLL = 0.05          # seconds between xenstore checks while waiting


class HostileError(XenError):
    """The handshake with the driver under test did not complete."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


def toolstack(lab) -> DomainOps:
    """The toolstack's calls (xl create, network-attach...), as Domain-0."""
    return Hypercalls(lab.dom0).domains


async def boot_domain(lab, name: str, *, memory_mb: int = 16, drivers=None) -> DomainKernel:
    """Create a domain through the toolstack (launcher none) and boot its
    kernel in this process; ``drivers(kernel)`` gives its xenbus drivers
    (none by default). It runs no guest agent: its peers drive the
    interfaces themselves."""
    reply = await toolstack(lab).create(name, memory_mb, launcher="none")
    start = StartInfo(domid=reply.domid, name=name, secret=reply.secret,
                      hypervisor=lab.address, doorbell=str(lab.rundir / "evtchn.sock"), vcpus=1,
                      console_log="", agent=reply.agent, agent_token=reply.agent_token)
    kernel = DomainKernel(start, drivers=drivers or (lambda k: []))
    await kernel.boot()
    return kernel


def _u32_ahead(a: int, b: int) -> bool:
    """a is at or past b, in free-running u32 ring arithmetic."""
    return ((a - b) & _U32) < 0x80000000


class SwitchHotplug:
    """A backend's hotplug (xenlab.drivers.netback.interface.Hotplug) for tests: each
    bridge hands a frame to the vif whose guest owns its destination MAC, a
    broadcast to every other vif, and counts (and drops) the rest. Frames
    from a vif named in ``only_byte`` must consist of that byte alone
    (a HostileFrontend's pattern); any other content is kept in
    ``foreign_bytes``."""

    BROADCAST = b"\xff" * 6

    def __init__(self):
        self.ports: dict[str, list] = collections.defaultdict(list)
        self.unknown: collections.Counter = collections.Counter()      # by source vif
        self.from_vif: collections.Counter = collections.Counter()
        self.only_byte: dict[str, int] = {}
        self.foreign_bytes: list[tuple[str, bytes]] = []

    async def online(self, vif, bridge: str, backend_path: str) -> None:
        self.ports[bridge].append(vif)
        vif.receiver = lambda frames, src=vif, br=bridge: self._forward(br, src, frames)

    async def offline(self, vif) -> None:
        for ports in self.ports.values():
            if vif in ports:
                ports.remove(vif)
        vif.receiver = None

    def _forward(self, bridge: str, src, frames: list[bytes]) -> None:
        only = self.only_byte.get(src.name)
        for frame in frames:
            self.from_vif[src.name] += 1
            if only is not None and set(frame) - {only}:
                self.foreign_bytes.append((src.name, bytes(frame[:64])))
            dst = bytes(frame[:6])
            targets = [p for p in self.ports[bridge] if p is not src
                       and (dst == self.BROADCAST or p.mac == dst)]
            if not targets:
                self.unknown[src.name] += 1
            for port in targets:
                port.transmit([frame])


class _Peer:
    """What both hostile ends share: a kernel, the toolstack, the other end's
    state followed through a xenstore watch, and a wake-up event for the
    event channel and the watch."""

    def __init__(self, kernel: DomainKernel, toolstack: DomainOps):
        self.kernel = kernel
        self.toolstack = toolstack
        self.woken = asyncio.Event()
        self.other_state = XenbusState.Unknown
        self.port: int | None = None
        self.kicks = 0
        self._watch: str | None = None

    async def _follow(self, path: str) -> None:
        async def changed(_path: str) -> None:
            self.other_state = await self._state(path)
            self.woken.set()
        self._watch = await self.kernel.xenbus.watch(path, changed)

    async def _unfollow(self) -> None:
        token, self._watch = self._watch, None
        if token is not None:
            try:
                await self.kernel.xenbus.unwatch(token)
            except Exception:       # the stream may be gone with the domain
                pass

    async def _state(self, path: str) -> XenbusState:
        text = await self.kernel.xenbus.read(path)
        try:
            return XenbusState(int(text))
        except (TypeError, ValueError):
            return XenbusState.Unknown

    async def _wait_state(self, want: set[XenbusState], timeout: float = WAIT) -> XenbusState:
        deadline = time.monotonic() + timeout
        while self.other_state not in want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HostileError(f"the other end stayed {self.other_state.name}; "
                                   f"expected {sorted(s.name for s in want)}")
            self.woken.clear()
            try:
                await eventloop.wait_for(self.woken.wait(), min(left, STATE_POLL * 4))
            except asyncio.TimeoutError:
                pass
        return self.other_state

    def _on_event(self, _port: int) -> None:
        self.woken.set()

    def kick(self, times: int = 1) -> None:
        """EVTCHNOP_send, ``times`` times in a row (a flood if many)."""
        for _ in range(times):
            self.kernel.evtchn.notify(self.port)
        self.kicks += times

    async def _write_keys(self, directory: str, keys: dict[str, object]) -> None:
        async def body(tx: int) -> None:
            for key, value in keys.items():
                await self.kernel.xenbus.write(f"{directory}/{key}", str(value), tx=tx)
        await self.kernel.xenbus.transaction(body)

    async def _end_grants(self, refs: list[int], timeout: float = WAIT) -> None:
        """End our grants, waiting for the other end to unmap the rings."""
        deadline = time.monotonic() + timeout
        while refs:
            try:
                refs = self.kernel.gnttab.end_access(refs)
            except XenError as err:
                raise HostileError(f"ending grants {refs[:4]}...: {err.message}") from None
            if refs and time.monotonic() > deadline:
                raise HostileError(f"grants {refs[:4]}... are still mapped")
            if refs:
                await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------
# The hostile frontend
# ----------------------------------------------------------------------------
@dataclass
class FrontendRefs:
    """The grant refs a HostileFrontend holds, by what the backend may do with them."""

    tx_ring: int = 0
    rx_ring: int = 0
    tx_buffers: list[int] = field(default_factory=list)   # granted read-only to the backend
    rx_buffers: list[int] = field(default_factory=list)   # granted writable to the backend
    foreign: list[int] = field(default_factory=list)      # granted to another domain only
    stale: list[int] = field(default_factory=list)        # granted to the backend, then ended

    @property
    def readable(self) -> set[int]:
        """Refs the backend may copy from."""
        return {self.tx_ring, self.rx_ring, *self.tx_buffers, *self.rx_buffers}

    @property
    def writable(self) -> set[int]:
        return {self.tx_ring, self.rx_ring, *self.rx_buffers}


class HostileFrontend(_Peer):
    """The frontend of one vif, written by hand. Its tx buffer pages are
    filled with ``pattern``, so any frame the backend sends on for it
    consists of that byte only."""

    def __init__(self, kernel: DomainKernel, toolstack: DomainOps, *, mac: str = "",
                 bridge: str = "", backend: str = "", ip: str = "", tx_buffers: int = 32,
                 rx_buffers: int = 32, pattern: int = 0xEE, foreign_domid: int | None = None,
                 persistent: bool = False):
        super().__init__(kernel, toolstack)
        self.persistent = persistent     # say feature-xenlab-persistent=1: netback maps our buffers
        self.vif_spec = {"mac": mac, "bridge": bridge, "backend": backend, "ip": ip}
        self.nr_tx_buffers = tx_buffers
        self.nr_rx_buffers = rx_buffers
        self.pattern = pattern
        self.foreign_domid = kernel.domid if foreign_domid is None else foreign_domid
        self.refs = FrontendRefs()
        self.vif: VifInfo | None = None
        self.tx = self.rx = None
        self.tx_prod = 0             # our next tx request slot
        self.rx_prod = 0             # our next rx request slot
        self.connections = 0
        self._gfns: list[int] = []
        self._pages: list[memoryview] = []
        self.used_gfns: set[int] = set()     # every frame it ever shared

    @classmethod
    async def start(cls, lab, name: str, **kw) -> "HostileFrontend":
        """Boot a domain named ``name`` and attach its hostile vif."""
        kernel = await boot_domain(lab, name)
        front = cls(kernel, toolstack(lab), **kw)
        await front.attach()
        return front

    @property
    def domid(self) -> int:
        return self.kernel.domid

    # -- the handshake ---------------------------------------------------------
    async def attach(self) -> None:
        """xl network-attach, then netfront's half of the handshake by hand;
        returns once the backend is Connected."""
        self.vif = await self.toolstack.network_attach(self.domid, **self.vif_spec)
        self.other_state = XenbusState.Unknown
        await self._follow(f"{self.vif.backend_path}/state")
        await self._wait_state({XenbusState.InitWait})
        await self._setup_rings()
        await self._write_keys(self.vif.frontend_path, {
            "tx-ring-ref": self.refs.tx_ring, "rx-ring-ref": self.refs.rx_ring,
            "event-channel": self.port, "request-rx-copy": 1, "feature-rx-notify": 1,
            "feature-sg": 1, FEATURE_XENLAB_PERSISTENT: int(self.persistent),
            "state": int(XenbusState.Connected)})
        state = await self._wait_state({XenbusState.Connected, XenbusState.Closing,
                                        XenbusState.Closed})
        if state != XenbusState.Connected:
            raise HostileError(f"the backend went {state.name}: {await self.backend_error()}")
        self.connections += 1

    async def _setup_rings(self) -> None:
        memory = self.kernel.memory
        n = 2 + self.nr_tx_buffers + self.nr_rx_buffers + 2
        self._gfns = memory.alloc_frames(n)
        self.used_gfns.update(self._gfns)
        self._pages = [memory.frame(g) for g in self._gfns]
        tx_page, rx_page = self._pages[0], self._pages[1]
        tx_bufs = self._pages[2:2 + self.nr_tx_buffers]
        for page in tx_bufs:
            page[:] = bytes([self.pattern]) * PAGE
        self.tx, self.rx = make_tx_ring(tx_page), make_rx_ring(rx_page)
        self.tx.init()
        self.rx.init()
        self.tx_prod = self.rx_prod = 0
        backend = self.vif.backend_id
        g = self._gfns
        ntx, nrx = self.nr_tx_buffers, self.nr_rx_buffers
        entries = ([(backend, g[0], False), (backend, g[1], False)]
                   + [(backend, gfn, True) for gfn in g[2:2 + ntx]]
                   + [(backend, gfn, False) for gfn in g[2 + ntx:2 + ntx + nrx]]
                   + [(self.foreign_domid, g[-2], False), (backend, g[-1], True)])
        refs = await self.kernel.gnttab.grant_access(entries)
        self.refs = FrontendRefs(refs[0], refs[1], refs[2:2 + ntx], refs[2 + ntx:2 + ntx + nrx],
                                 [refs[-2]], [refs[-1]])
        await self._end_grants(self.refs.stale)
        self.port = await self.kernel.evtchn.alloc_unbound(backend)
        self.kernel.evtchn.bind_handler(self.port, self._on_event)

    async def detach(self) -> None:
        """Close our end (Closed after the backend's Closing, as netfront
        does), have the toolstack remove the vif, and give everything back."""
        if self.vif is None:
            return
        if self.other_state in (XenbusState.Connected, XenbusState.Closing):
            await self.kernel.xenbus.write(f"{self.vif.frontend_path}/state",
                                           str(int(XenbusState.Closed)))
            try:
                await self._wait_state({XenbusState.Closed, XenbusState.Unknown})
            except HostileError:
                pass            # force below removes the directories anyway
        await self._unfollow()
        await self.toolstack.network_detach(self.domid, self.vif.devid, force=True, timeout=WAIT)
        await self._give_back()
        self.vif = None

    async def _give_back(self) -> None:
        if self.port is not None:
            try:
                await self.kernel.evtchn.close_port(self.port)
            except XenError:
                pass
            self.port = None
        for ring in (self.tx, self.rx):
            if ring is not None:
                ring.release()
        self.tx = self.rx = None
        r = self.refs
        await self._end_grants([r.tx_ring, r.rx_ring, *r.tx_buffers, *r.rx_buffers, *r.foreign])
        for page in self._pages:
            page.release()
        self._pages = []
        self.kernel.memory.free_frames(self._gfns)
        self._gfns = []

    async def reconnect(self) -> None:
        """After the backend disabled the vif: a new one, through the toolstack."""
        await self.detach()
        await self.attach()

    async def backend_error(self) -> str:
        """What the backend wrote to its xenbus error node, if anything."""
        if self.vif is None:
            return ""
        relative = self.vif.backend_path.split("/", 4)[4]     # backend/vif/D/N
        path = f"/local/domain/{self.vif.backend_id}/error/{relative}/error"
        try:
            return await self.kernel.xenbus.read(path) or ""
        except XenError as err:
            return f"(unreadable: {err.message})"

    # -- the tx ring, raw -----------------------------------------------------------
    def put(self, slots: list[bytes]) -> int:
        """Write raw slots at our producer position (not yet published);
        returns the ring index of the first."""
        start = self.tx_prod
        for i, data in enumerate(slots):
            self.tx._write_slot(start + i, data[:abi.NETIF_TX_SLOT])
        self.tx_prod = (start + len(slots)) & _U32
        return start

    def rewrite(self, index: int, data: bytes) -> None:
        """Change a slot that may already be published (a double-fetch attempt)."""
        self.tx._write_slot(index, data[:abi.NETIF_TX_SLOT])

    def publish(self, req_prod: int | None = None) -> None:
        """Set req_prod: to what we put, or to anything at all."""
        self.tx.req_prod = self.tx_prod if req_prod is None else req_prod

    def arm(self) -> None:
        """Ask for a kick on the next response (rsp_event = rsp_prod + 1)."""
        self.tx.rsp_event = self.tx.rsp_prod + 1

    @property
    def rsp_prod(self) -> int:
        return self.tx.rsp_prod

    def response(self, index: int) -> TxResponse:
        return TxResponse.unpack(self.tx._read_slot(index))

    async def wait(self, rsp_prod: int, *, until: str = "either", disabled=None,
                   timeout: float = WAIT) -> str:
        """Wait for the backend: "answered" once it answered up to ``rsp_prod``,
        "disabled" once it left Connected (or ``disabled()`` says so: an
        in-process backend can tell at once), "hung" if neither came in time.
        ``until="disabled"`` waits for the disable even after the answers."""
        deadline = time.monotonic() + timeout
        while True:
            if self.other_state != XenbusState.Connected or (disabled is not None and disabled()):
                return "disabled"
            if until != "disabled" and _u32_ahead(self.tx.rsp_prod, rsp_prod):
                return "answered"
            self.arm()
            if until != "disabled" and _u32_ahead(self.tx.rsp_prod, rsp_prod):
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return "hung"
            self.woken.clear()
            try:
                await eventloop.wait_for(self.woken.wait(), min(left, STATE_POLL))
            except asyncio.TimeoutError:
                pass

    # -- the rx ring, raw -----------------------------------------------------------------
    def put_rx(self, slots: list[bytes], req_prod: int | None = None) -> None:
        """Post raw rx requests and publish req_prod (ours, or anything)."""
        for data in slots:
            self.rx._write_slot(self.rx_prod, data[:abi.NETIF_RX_SLOT])
            self.rx_prod = (self.rx_prod + 1) & _U32
        self.rx.req_prod = self.rx_prod if req_prod is None else req_prod


# ----------------------------------------------------------------------------
# Hostile tx rounds, and what netback must answer
# ----------------------------------------------------------------------------
@dataclass
class TxRound:
    """One batch of hostile tx slots and what the backend must do about it.

    ``expect[i]`` is the (id, status) owed to slot i, for the first
    ``checked`` slots (later ones depend on what was scrambled). ``fatal``:
    True, the vif must be disabled; False, every slot must be answered and
    the vif stay up; None, either.
    """

    kind: str
    slots: list[bytes] = field(default_factory=list)
    expect: list[tuple[int, int]] = field(default_factory=list)
    checked: int = 0
    fatal: bool | None = False
    req_prod: int | None = None          # relative to the first slot; None: after the last
    rewrites: list[tuple[int, int, bytes]] = field(default_factory=list)  # (yields, slot, bytes)
    kicks: int = 1
    rx_slots: list[bytes] = field(default_factory=list)
    rx_req_prod: int | None = None       # relative to our rx producer; None: after rx_slots


_OK, _ERR, _NULL = abi.NETIF_RSP_OKAY, abi.NETIF_RSP_ERROR, abi.NETIF_RSP_NULL
_MORE, _EXTRA = abi.NETTXF_more_data, abi.NETTXF_extra_info


class TxFuzzer:
    """Seeded hostile tx rounds against netback's documented rules
    (xenlab.drivers.netback.tx): most frames are well formed or earn an
    error answer, at most one per round is fatal (and last), and some rounds
    are scrambled (garbage slots, slots rewritten after publishing) so that
    only the head of the round has a known answer.
    """

    ERROR_KINDS = ("bad_gref", "runt", "frag_size", "too_many_slots")
    FATAL_KINDS = ("id_range", "dup_id", "cross_page", "slots_fatal", "past_prod",
                   "extra_missing", "extra_type", "gso_size", "gso_type", "prod_overflow",
                   "prod_rewind")

    def __init__(self, rng: random.Random, refs: FrontendRefs, *, p_fatal: float = 0.06,
                 p_garbage: float = 0.04, p_rewrite: float = 0.06, p_kicks_only: float = 0.02,
                 p_rx: float = 0.3, max_slots: int = abi.NET_TX_RING_SIZE):
        self.rng = rng
        self.refs = refs
        self.p_fatal, self.p_garbage, self.p_rewrite = p_fatal, p_garbage, p_rewrite
        self.p_kicks_only, self.p_rx = p_kicks_only, p_rx
        self.max_slots = max_slots
        self._ids: list[int] = []

    # -- refs -----------------------------------------------------------------------
    def _good_ref(self) -> int:
        # Only the transmit buffers: what netback sends on from them is
        # known to the byte (HostileFrontend.pattern).
        return self.rng.choice(self.refs.tx_buffers)

    def _bad_ref(self) -> int:
        choice = self.rng.randrange(5)
        if choice == 0 and self.refs.foreign:
            return self.rng.choice(self.refs.foreign)
        if choice == 1 and self.refs.stale:
            return self.rng.choice(self.refs.stale)
        if choice == 2:
            return self.rng.randrange(abi.GNTTAB_NR_RESERVED_ENTRIES)
        while True:
            ref = self.rng.randrange(1 << 32) if choice == 3 else self.rng.randrange(8, 20000)
            if ref not in self.refs.readable:
                return ref

    def _id(self) -> int:
        return self._ids.pop()

    # -- one frame ----------------------------------------------------------------------
    @staticmethod
    def _req(gref: int, offset: int, flags: int, id_: int, size: int) -> bytes:
        return TxRequest(gref & _U32, offset & _U16, flags & _U16, id_ & _U16, size & _U16).pack()

    @staticmethod
    def _extra(type_: int, flags: int = 0, data: bytes = b"") -> bytes:
        return ExtraInfo(type_ & 0xFF, flags & 0xFF, data).pack().ljust(abi.NETIF_TX_SLOT, b"\0")

    def _sizes(self, n_frags: int) -> tuple[int, list[int]]:
        first = self.rng.choice((14, 60, 64, 100, 576, 1514, self.rng.randrange(14, PAGE + 1)))
        frags = [self.rng.choice((0, 1, 100, 1000, PAGE, self.rng.randrange(1, PAGE + 1)))
                 for _ in range(n_frags)]
        while first + sum(frags) > _U16:
            frags.pop()
        return first, frags

    def _offset(self, size: int) -> int:
        return self.rng.choice((0, PAGE - size, self.rng.randrange(PAGE - size + 1)))

    def _data_frame(self, first: int, frags: list[int], flags: int = 0,
                    extras: list[bytes] = (), refs: list[int] | None = None,
                    first_total: int | None = None) -> list[tuple[bytes, int, int]]:
        """(slot, id, status) for a frame: the first request, its extras, the frags."""
        sizes = [first, *frags]
        refs = refs or [self._good_ref() for _ in sizes]
        total = first + sum(frags) if first_total is None else first_total
        out = []
        for i, (size, ref) in enumerate(zip(sizes, refs)):
            more = _MORE if i < len(sizes) - 1 else 0
            id_ = self._id()
            if i == 0:
                out.append((self._req(ref, self._offset(size), flags | more, id_, total), id_, _OK))
                out.extend((extra, 0, _NULL) for extra in extras)
            else:
                out.append((self._req(ref, self._offset(size), more, id_, size), id_, _OK))
        return out

    def _good(self) -> list[tuple[bytes, int, int]]:
        n = self.rng.choice((0, 0, 0, 1, 1, 2, 3, self.rng.randrange(0, abi.XEN_NETIF_NR_SLOTS_MIN + 1)))
        first, frags = self._sizes(n)
        kind = self.rng.randrange(10)
        if kind == 0:       # a GSO descriptor netback accepts
            gso = GsoInfo(self.rng.randrange(1, _U16 + 1),
                          self.rng.choice((abi.XEN_NETIF_GSO_TYPE_TCPV4,
                                           abi.XEN_NETIF_GSO_TYPE_TCPV6))).pack()
            return self._data_frame(first, frags, _EXTRA,
                                    [self._extra(abi.XEN_NETIF_EXTRA_TYPE_GSO, 0, gso)])
        if kind == 1:       # hash / xdp extras: kept, not interpreted
            return self._data_frame(first, frags, _EXTRA, [
                self._extra(abi.XEN_NETIF_EXTRA_TYPE_HASH, abi.XEN_NETIF_EXTRA_FLAG_MORE),
                self._extra(abi.XEN_NETIF_EXTRA_TYPE_XDP)])
        if kind == 2:       # a multicast control request: no data behind it
            id_ = self._id()
            mcast = self.rng.choice((abi.XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
                                     abi.XEN_NETIF_EXTRA_TYPE_MCAST_DEL))
            return [(self._req(self._bad_ref(), 0, _EXTRA, id_, self.rng.randrange(_U16 + 1)),
                     id_, _OK), (self._extra(mcast, 0, b"\x01\x00\x5e\x00\x00\x01"), 0, _NULL)]
        return self._data_frame(first, frags)

    def _error(self, kind: str) -> list[tuple[bytes, int, int]]:
        if kind == "bad_gref":
            first, frags = self._sizes(self.rng.choice((0, 1, 3)))
            frags = [max(1, f) for f in frags]
            sizes = [first, *frags]
            bad = set(self.rng.sample(range(len(sizes)), self.rng.randrange(1, len(sizes) + 1)))
            refs = [self._bad_ref() if i in bad else self._good_ref() for i in range(len(sizes))]
            out = self._data_frame(first, frags, refs=refs)
            return [(s, i, _ERR if k in bad else _OK) for k, (s, i, _) in enumerate(out)]
        if kind == "runt":
            frags = [self.rng.randrange(0, 200) for _ in range(self.rng.choice((0, 0, 1, 2)))]
            first = self.rng.randrange(abi.ETH_HLEN)
            out = self._data_frame(first, frags)
        elif kind == "frag_size":
            total = self.rng.randrange(abi.ETH_HLEN, 1000)
            frags = [self.rng.randrange(total + 1, PAGE + 1)]
            out = self._data_frame(self.rng.randrange(abi.ETH_HLEN, PAGE), frags, first_total=total)
        else:   # too_many_slots: more than XEN_NETIF_NR_SLOTS_MIN, not past fatal_skb_slots
            n = self.rng.randrange(abi.XEN_NETIF_NR_SLOTS_MIN + 1, abi.FATAL_SKB_SLOTS_DEFAULT + 1)
            out = self._data_frame(60, [1] * n)
        return [(s, i, _ERR) for s, i, _ in out]

    def _fatal(self, kind: str, room: int) -> tuple[list[bytes], int | None]:
        """The slots of a fatal frame (its answers are not checked) and a req_prod override."""
        first, frags = self._sizes(self.rng.choice((0, 1, 2)))
        slots = [s for s, _, _ in self._data_frame(first, frags)]
        if kind == "id_range":
            k = self.rng.randrange(len(slots))
            req = TxRequest.unpack(slots[k])
            slots[k] = self._req(req.gref, req.offset, req.flags,
                                 self.rng.randrange(abi.NET_TX_RING_SIZE, _U16 + 1), req.size)
        elif kind == "dup_id":
            slots = [s for s, _, _ in self._data_frame(first, frags or [100])]
            head, k = TxRequest.unpack(slots[0]), self.rng.randrange(1, len(slots))
            req = TxRequest.unpack(slots[k])
            slots[k] = self._req(req.gref, req.offset, req.flags, head.id, req.size)
        elif kind == "cross_page":
            k = self.rng.randrange(len(slots))
            req = TxRequest.unpack(slots[k])
            size = req.size if k else first
            offset = self.rng.randrange(PAGE - size + 1, _U16 + 1)
            slots[k] = self._req(req.gref, offset, req.flags, req.id, req.size)
        elif kind == "slots_fatal":
            n = min(room - 1, self.rng.randrange(abi.FATAL_SKB_SLOTS_DEFAULT + 1, 40))
            slots = [s for s, _, _ in self._data_frame(60 + n, [1] * n)]
        elif kind == "past_prod":
            req = TxRequest.unpack(slots[-1])
            slots[-1] = self._req(req.gref, req.offset, req.flags | _MORE, req.id, req.size)
        elif kind == "extra_missing":
            req = TxRequest.unpack(slots[0])
            head = self._req(req.gref, req.offset, _EXTRA, req.id, first)
            chain = [self._extra(abi.XEN_NETIF_EXTRA_TYPE_HASH, abi.XEN_NETIF_EXTRA_FLAG_MORE)
                     for _ in range(self.rng.randrange(3))]
            slots = [head, *chain]
        elif kind == "extra_type":
            bad = self.rng.choice((abi.XEN_NETIF_EXTRA_TYPE_NONE,
                                   self.rng.randrange(abi.XEN_NETIF_EXTRA_TYPE_MAX, 256)))
            req = TxRequest.unpack(slots[0])
            slots = [self._req(req.gref, req.offset, req.flags | _EXTRA, req.id, req.size),
                     self._extra(bad), *slots[1:]]
        elif kind in ("gso_size", "gso_type"):
            size = 0 if kind == "gso_size" else self.rng.randrange(1, _U16 + 1)
            gso_type = abi.XEN_NETIF_GSO_TYPE_TCPV4 if kind == "gso_size" else \
                self.rng.choice((abi.XEN_NETIF_GSO_TYPE_NONE, self.rng.randrange(3, 256)))
            req = TxRequest.unpack(slots[0])
            slots = [self._req(req.gref, req.offset, req.flags | _EXTRA, req.id, req.size),
                     self._extra(abi.XEN_NETIF_EXTRA_TYPE_GSO, 0,
                                 GsoInfo(size, gso_type).pack()), *slots[1:]]
        elif kind == "prod_overflow":       # relative to the round's first slot
            return slots, self.rng.choice((abi.NET_TX_RING_SIZE + 1 + self.rng.randrange(1000),
                                           self.rng.randrange(abi.NET_TX_RING_SIZE + 1, 1 << 32)))
        elif kind == "prod_rewind":
            return slots, -1 - self.rng.randrange(1000)
        return slots[:room], None

    def _garbage(self) -> list[bytes]:
        return [self.rng.randbytes(abi.NETIF_TX_SLOT) for _ in range(self.rng.randrange(1, 5))]

    def _mutation(self, data: bytes) -> bytes:
        req = TxRequest.unpack(data)
        field_ = self.rng.randrange(6)
        if field_ == 0:
            return self._req(req.gref, req.offset, req.flags, self.rng.randrange(_U16 + 1), req.size)
        if field_ == 1:
            return self._req(req.gref, self.rng.randrange(_U16 + 1), req.flags, req.id, req.size)
        if field_ == 2:
            return self._req(req.gref, req.offset, req.flags, req.id, self.rng.randrange(_U16 + 1))
        if field_ == 3:
            return self._req(req.gref, req.offset, req.flags ^ (1 << self.rng.randrange(4)),
                             req.id, req.size)
        if field_ == 4:
            return self._req(self.rng.randrange(1 << 32), req.offset, req.flags, req.id, req.size)
        return self.rng.randbytes(abi.NETIF_TX_SLOT)

    # -- one round -----------------------------------------------------------------------
    def round(self) -> TxRound:
        rng = self.rng
        self._ids = list(range(abi.NET_TX_RING_SIZE))
        rng.shuffle(self._ids)
        out = TxRound("frames", kicks=rng.choice((1, 1, 1, 2, rng.randrange(1, 65))))
        self._rx(out)
        if rng.random() < self.p_kicks_only:
            out.kind, out.kicks = "kicks_only", rng.randrange(16, 257)
            return out
        budget = rng.choice((self.max_slots, self.max_slots, self.max_slots - rng.randrange(64),
                             rng.randrange(1, 17)))
        fatal = rng.choice(self.FATAL_KINDS) if rng.random() < self.p_fatal else None
        garbage = rng.random() < self.p_garbage
        reserve = 44 if fatal else 0
        kinds: collections.Counter = collections.Counter()
        starts: list[int] = []          # per slot: the first slot of its frame
        known = len(out.slots)

        def add(frame: list[tuple[bytes, int, int] | bytes], expected: bool) -> None:
            first = len(out.slots)
            for item in frame:
                slot, expect = (item[0], item[1:]) if isinstance(item, tuple) else (item, None)
                out.slots.append(slot)
                out.expect.append(expect if expected else None)
                starts.append(first)

        while len(out.slots) < budget - reserve and len(self._ids) >= 44:
            if garbage and rng.random() < 0.2:
                garbage = False
                known = min(known, len(out.slots))
                out.fatal = None
                add(self._garbage(), False)
                kinds["garbage"] += 1
                continue
            if rng.random() < 0.2:
                kind = rng.choice(self.ERROR_KINDS)
                frame = self._error(kind)
            else:
                kind, frame = "good", self._good()
            if len(out.slots) + len(frame) > budget - reserve:
                break
            kinds[kind] += 1
            add(frame, True)
            if out.fatal is False:
                known = len(out.slots)
        if fatal:
            slots, prod = self._fatal(fatal, self.max_slots - len(out.slots))
            kinds[f"fatal:{fatal}"] += 1
            if prod is not None:
                out.req_prod = prod & _U32
                known = 0       # netback checks req_prod before it consumes anything
            if out.fatal is False:
                out.fatal = True
            add(slots, False)
        if out.slots and rng.random() < self.p_rewrite:
            for _ in range(rng.randrange(1, 4)):
                k = rng.randrange(len(out.slots))
                out.rewrites.append((rng.randrange(8), k, self._mutation(out.slots[k])))
                known = min(known, starts[k])
            out.fatal = None
            kinds["rewrites"] += 1
        out.checked = known
        out.kind = "+".join(sorted(kinds)) or "empty"
        return out

    def _rx(self, out: TxRound) -> None:
        """Rx requests for the backend's receive path: mostly writable pages,
        some read-only or never granted."""
        if self.rng.random() >= self.p_rx:
            return
        refs = [*self.refs.rx_buffers, *self.refs.tx_buffers, self._bad_ref()]
        out.rx_slots = [RxRequest(self.rng.randrange(_U16 + 1), self.rng.choice(refs)).pack()
                        for _ in range(self.rng.randrange(1, 33))]
        if self.rng.random() < 0.1:
            out.rx_req_prod = self.rng.randrange(1 << 32)


# ----------------------------------------------------------------------------
# The hostile backend
# ----------------------------------------------------------------------------
class _BackRing:
    """A ring page of the frontend's that we mapped, and our private
    positions on it. We are an unprivileged driver domain, so the
    hypervisor does not tell us where the page is: we keep a copy of it in
    one of our own frames and move bytes both ways with GNTTABOP_copy on
    the ref, as a backend without mappings would. ``pull`` fetches the
    frontend's side; ``put`` and the index writes are ours until ``push``
    copies them over, slots before the index that publishes them (a copy's
    ops run in order)."""

    def __init__(self, backend: "HostileBackend", page: Page, ref: int, gfn: int, make_ring):
        self.backend = backend
        self.mapping = page              # the grant held mapped (no view: we are unprivileged)
        self.ref = ref
        self.gfn = gfn
        self.page = backend.kernel.memory.frame(gfn)
        self.sring = make_ring(self.page)
        self.req_cons = 0
        self.rsp_prod = 0
        self._dirty: list[tuple[int, int]] = []     # (offset, length) to push, in order

    def _op(self, to_frontend: bool, offset: int, length: int) -> tuple:
        """One GNTTABOP_copy op (xenlab.xen.doorbell.GnttabCopy's layout)."""
        self_id, theirs = abi.DOMID_SELF, self.backend.frontend_domid
        if to_frontend:
            return (self.gfn, self_id, offset, self.ref, theirs, offset, length,
                    abi.GNTCOPY_dest_gref)
        return (self.ref, theirs, offset, self.gfn, self_id, offset, length,
                abi.GNTCOPY_source_gref)

    async def _copy(self, ops: list) -> None:
        statuses = await self.backend.kernel.gnttab.copy_hypercall(ops)
        if any(status != abi.GNTST_okay for status in statuses):
            raise HostileError(f"copying ring ref {self.ref}: {statuses}")

    async def pull(self) -> None:
        """The frontend's half of the page: req_prod, rsp_event and the slots."""
        await self.push()
        await self._copy([self._op(False, 0, abi.PAGE_SIZE)])

    async def push(self) -> None:
        if self._dirty:
            ops, self._dirty = [self._op(True, o, n) for o, n in self._dirty], []
            await self._copy(ops)

    def set_index(self, offset: int, value: int) -> None:
        """rsp_prod or req_event (abi.RING_*), published at the next push."""
        struct.pack_into("<I", self.page, offset, value & _U32)
        self._dirty.append((offset, 4))

    async def take(self) -> list[tuple[int, bytes]]:
        """Every request published since we last looked, each copied out once
        (never more than a ring's worth of unanswered slots)."""
        await self.pull()
        prod = self.sring.req_prod
        room = self.sring.size - ((self.req_cons - self.rsp_prod) & _U32)
        n = min((prod - self.req_cons) & _U32, room)
        out = []
        for _ in range(n):
            out.append((self.req_cons, self.sring._read_slot(self.req_cons)))
            self.req_cons = (self.req_cons + 1) & _U32
        return out

    def put(self, slots: list[bytes]) -> None:
        size = self.sring.slot_size
        for data in slots:
            self.sring._write_slot(self.rsp_prod, data[:size])
            start = abi.RING_SLOTS_OFFSET + (self.rsp_prod & (self.sring.size - 1)) * size
            self._dirty.append((start, size))
            self.rsp_prod = (self.rsp_prod + 1) & _U32


class HostileBackend(_Peer):
    """Netback's half of vif ``devid`` of domain ``frontend_domid``, written by
    hand in an unprivileged driver domain (the vif's ``backend=`` names it).
    After the handshake it answers the frontend's rings with whatever it is
    told, and can write into the pages the frontend granted it."""

    def __init__(self, kernel: DomainKernel, toolstack: DomainOps, frontend_domid: int, *,
                 mac: str = "", bridge: str = "", scratch_pages: int = abi.NET_RX_RING_SIZE):
        super().__init__(kernel, toolstack)
        self.frontend_domid = frontend_domid
        self.vif_spec = {"mac": mac, "bridge": bridge, "backend": kernel.name}
        self.vif: VifInfo | None = None
        self.tx: _BackRing | None = None
        self.rx: _BackRing | None = None
        self.connections = 0
        self._scratch = kernel.memory.alloc_frames(scratch_pages)
        self._scratch_pages = [kernel.memory.frame(g) for g in self._scratch]
        self._ring_frames = kernel.memory.alloc_frames(2)   # our copies of tx and rx

    @classmethod
    async def start(cls, lab, name: str, frontend_domid: int, **kw) -> "HostileBackend":
        """Boot a driver domain named ``name`` and attach a vif of
        ``frontend_domid`` served by it."""
        kernel = await boot_domain(lab, name)
        back = cls(kernel, toolstack(lab), frontend_domid, **kw)
        await back.attach()
        return back

    # -- the handshake ----------------------------------------------------------
    async def attach(self) -> None:
        """xl network-attach with backend=<us>, then netback's half of the
        handshake by hand; returns once the frontend is Connected."""
        self.vif = await self.toolstack.network_attach(self.frontend_domid, **self.vif_spec)
        backend = self.vif.backend_path
        self.other_state = XenbusState.Unknown
        await self._follow(f"{self.vif.frontend_path}/state")
        await self._write_keys(backend, {"feature-sg": 1, "feature-rx-copy": 1,
                                         "feature-rx-flip": 0, "feature-gso-tcpv4": 0,
                                         "state": int(XenbusState.InitWait)})
        await self._wait_state({XenbusState.Connected})
        keys = {}
        for key in ("tx-ring-ref", "rx-ring-ref", "event-channel"):
            keys[key] = int(await self.kernel.xenbus.read(f"{self.vif.frontend_path}/{key}"))
        self.tx = await self._map(keys["tx-ring-ref"], self._ring_frames[0], make_tx_ring)
        self.rx = await self._map(keys["rx-ring-ref"], self._ring_frames[1], make_rx_ring)
        self.port = await self.kernel.evtchn.bind_interdomain(self.frontend_domid,
                                                              keys["event-channel"])
        self.kernel.evtchn.bind_handler(self.port, self._on_event)
        await self._write_keys(backend, {"hotplug-status": "connected",
                                         "state": int(XenbusState.Connected)})
        self.connections += 1

    async def _map(self, ref: int, gfn: int, make_ring) -> _BackRing:
        """GNTTABOP_map_grant_ref: it holds the grant (the frontend cannot end
        it under us), but gives us no way into the frontend's memory; the
        ring's bytes go through copies (_BackRing)."""
        page = await self.kernel.gnttab.map(self.frontend_domid, ref)
        ring = _BackRing(self, page, ref, gfn, make_ring)
        await ring.pull()
        ring.req_cons, ring.rsp_prod = 0, ring.sring.rsp_prod
        return ring

    async def detach(self) -> None:
        """Closing, wait for the frontend to close, unmap and unbind, Closed;
        then the toolstack removes the vif."""
        if self.vif is None:
            return
        backend = self.vif.backend_path
        await self.kernel.xenbus.write(f"{backend}/state", str(int(XenbusState.Closing)))
        try:
            await self._wait_state({XenbusState.Closed, XenbusState.Unknown})
        except HostileError:
            pass
        await self._unfollow()
        if self.port is not None:
            try:
                await self.kernel.evtchn.close_port(self.port)
            except XenError:
                pass
            self.port = None
        for ring in (self.tx, self.rx):
            if ring is not None:
                ring.sring.release()
                await self.kernel.gnttab.unmap(ring.mapping)
        self.tx = self.rx = None
        await self.kernel.xenbus.write(f"{backend}/state", str(int(XenbusState.Closed)))
        await self.toolstack.network_detach(self.frontend_domid, self.vif.devid, force=True,
                                            timeout=WAIT)
        self.vif = None

    async def reconnect(self) -> None:
        await self.detach()
        await self.attach()

    # -- the rings, raw -----------------------------------------------------------------
    async def publish_rx(self, rsp_prod: int | None = None) -> None:
        self.rx.set_index(abi.RING_RSP_PROD, self.rx.rsp_prod if rsp_prod is None else rsp_prod)
        await self.rx.push()

    async def publish_tx(self, rsp_prod: int | None = None) -> None:
        self.tx.set_index(abi.RING_RSP_PROD, self.tx.rsp_prod if rsp_prod is None else rsp_prod)
        await self.tx.push()

    async def fill(self, writes: list[tuple[int, int, bytes]]) -> list[int]:
        """Copy each (gref, offset, data) into the frontend's granted page,
        as netback's rx path does (GNTTABOP_copy from our own frames)."""
        statuses: list[int] = []
        room = len(self._scratch)
        for i in range(0, len(writes), room):
            chunk = writes[i:i + room]
            ops = []
            for (gref, offset, data), gfn, page in zip(chunk, self._scratch, self._scratch_pages):
                page[:len(data)] = data
                ops.append((gfn, abi.DOMID_SELF, 0, gref, self.frontend_domid, offset, len(data),
                            abi.GNTCOPY_dest_gref))
            statuses.extend(await self.kernel.gnttab.copy_hypercall(ops))
        return statuses

    async def wait_requests(self, ring: _BackRing, n: int, timeout: float = WAIT) -> int:
        """Until ``n`` requests are waiting on ``ring`` (the frontend posted
        them); returns how many are, which is fewer only on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            await ring.pull()
            waiting = (ring.sring.req_prod - ring.req_cons) & _U32
            if waiting >= n:
                return waiting
            ring.set_index(abi.RING_REQ_EVENT, ring.req_cons + 1)
            await ring.pull()
            if (ring.sring.req_prod - ring.req_cons) & _U32 != waiting:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return waiting
            self.woken.clear()
            try:
                await eventloop.wait_for(self.woken.wait(), min(left, STATE_POLL))
            except asyncio.TimeoutError:
                pass


# ----------------------------------------------------------------------------
# Hostile rx rounds, and what netfront must do about them
# ----------------------------------------------------------------------------
@dataclass
class RxRound:
    """Responses for the rx requests a frontend posted, with what it must
    hand up (``frames``, in order) and count as dropped (``drops``)."""

    kind: str
    responses: list[bytes] = field(default_factory=list)
    writes: list[tuple[int, int, bytes]] = field(default_factory=list)   # (gref, offset, data)
    frames: list[bytes] = field(default_factory=list)
    drops: collections.Counter = field(default_factory=collections.Counter)
    rsp_prod: int | None = None          # relative to the first response: a claim past them
    broken: bool = False                 # the frontend must give up on the ring


@dataclass
class TxAnswers:
    """One response per tx request a frontend posted. A lie (an id never in
    flight, an id answered twice, NETIF_RSP_NULL) still takes the request's
    slot, so the request it stands for is never answered: its id stays in
    flight at the frontend for good (``leaked``)."""

    responses: list[bytes] = field(default_factory=list)
    leaked: list[int] = field(default_factory=list)
    bad: int = 0            # responses that answer nothing of the frontend's
    errors: int = 0         # requests answered with an error status


_RX_MORE, _RX_EXTRA = abi.NETRXF_more_data, abi.NETRXF_extra_info


class RxFuzzer:
    """Seeded hostile rx answers against netfront's documented rules
    (xenlab.drivers.netfront_core): each frame is either well formed (and
    must be handed up byte for byte) or carries one lie netfront must catch:
    a wrong id, an error status, an offset past the page, a size past the
    page, a runt, too many slots, a bad extra, a chain cut short."""

    BAD_KINDS = ("bad_id", "error_status", "bad_offset", "past_page", "runt", "too_many_slots",
                 "extra_type", "bad_in_chain")

    def __init__(self, rng: random.Random, *, src_mac: bytes = b"\x00\x16\x3e\xee\xee\xee",
                 dst_mac: bytes = b"\xff" * 6, p_bad: float = 0.3, p_overflow: float = 0.01):
        self.rng = rng
        self.src_mac, self.dst_mac = src_mac, dst_mac
        self.p_bad, self.p_overflow = p_bad, p_overflow
        self.seq = 0

    def _payload(self, size: int) -> bytes:
        self.seq += 1
        head = self.dst_mac + self.src_mac + b"\x88\xb5" + self.seq.to_bytes(4, "big")
        body = bytes((self.seq + i) & 0xFF for i in range(max(0, size - len(head))))
        return (head + body)[:size]

    @staticmethod
    def _rsp(id_: int, offset: int, flags: int, status: int) -> bytes:
        return RxResponse(id_ & _U16, offset & _U16, flags & _U16, status).pack()

    def _flags(self, more: bool) -> int:
        noise = self.rng.choice((0, 0, abi.NETRXF_data_validated, abi.NETRXF_csum_blank))
        return noise | (_RX_MORE if more else 0)

    def _good(self, reqs: list[RxRequest], out: RxRound, sizes: list[int],
              extras: int = 0) -> None:
        """A well-formed frame over len(sizes) data slots (+ extras after the first)."""
        frame = self._payload(sum(sizes))
        pos = 0
        it = iter(reqs)
        for k, size in enumerate(sizes):
            req = next(it)
            top = min(PAGE - size, PAGE - 1)        # an empty slot still needs an offset in the page
            offset = self.rng.choice((0, 0, top, self.rng.randrange(top + 1)))
            chunk = frame[pos:pos + size]
            pos += size
            if chunk:
                out.writes.append((req.gref, offset, chunk))
            flags = self._flags(k < len(sizes) - 1) | (_RX_EXTRA if k == 0 and extras else 0)
            out.responses.append(self._rsp(req.id, offset, flags, size))
            if k == 0:
                for e in range(extras):
                    next(it)
                    more = abi.XEN_NETIF_EXTRA_FLAG_MORE if e < extras - 1 else 0
                    out.responses.append(ExtraInfo(self.rng.randrange(1, abi.XEN_NETIF_EXTRA_TYPE_MAX),
                                                   more).pack())
        out.frames.append(frame)

    def _sizes(self, n: int) -> list[int]:
        sizes = [self.rng.choice((14, 60, 1514, PAGE, self.rng.randrange(abi.ETH_HLEN, PAGE + 1)))]
        sizes += [self.rng.choice((0, 1, 1000, PAGE, self.rng.randrange(PAGE + 1)))
                  for _ in range(n - 1)]
        return sizes

    def _bad(self, kind: str, reqs: list[RxRequest], out: RxRound, last: bool) -> int:
        """One frame carrying lie ``kind``; returns the requests it used."""
        req = reqs[0]
        if kind == "too_many_slots":
            n = min(len(reqs), self.rng.randrange(abi.XEN_NETIF_NR_SLOTS_MIN + 1, 26))
            if n <= abi.XEN_NETIF_NR_SLOTS_MIN:
                kind = "runt"
            else:
                for k, r in enumerate(reqs[:n]):
                    out.responses.append(self._rsp(r.id, 0, self._flags(k < n - 1), 100))
                out.drops["rx_too_many_slots"] += 1
                return n
        if kind == "extra_type" and len(reqs) >= 2:
            out.responses.append(self._rsp(req.id, 0, _RX_EXTRA, 60))
            out.responses.append(ExtraInfo(self.rng.choice(
                (0, self.rng.randrange(abi.XEN_NETIF_EXTRA_TYPE_MAX, 256))), 0).pack())
            out.drops["rx_bad_response"] += 1
            return 2
        if kind == "bad_in_chain" and len(reqs) >= 3:
            n = self.rng.randrange(3, min(len(reqs), abi.XEN_NETIF_NR_SLOTS_MIN) + 1)
            bad_at = self.rng.randrange(n)
            lie = self.rng.choice(("bad_id", "error_status", "bad_offset", "past_page"))
            for k, r in enumerate(reqs[:n]):
                more = k < n - 1
                if k == bad_at:
                    self._lie(lie, r, out, more)
                else:
                    out.responses.append(self._rsp(r.id, 0, self._flags(more), 100))
            out.drops[self._reason(lie)] += 1
            return n
        if kind == "runt" or kind in ("extra_type", "bad_in_chain"):
            size = self.rng.randrange(abi.ETH_HLEN)
            if size:
                out.writes.append((req.gref, 0, self._payload(size)))
            out.responses.append(self._rsp(req.id, 0, self._flags(False), size))
            out.drops["rx_runt"] += 1
            return 1
        self._lie(kind, req, out, False)
        out.drops[self._reason(kind)] += 1
        return 1

    def _lie(self, kind: str, req: RxRequest, out: RxRound, more: bool) -> None:
        flags = self._flags(more)
        if kind == "bad_id":
            out.responses.append(self._rsp(req.id ^ self.rng.randrange(1, _U16 + 1), 0, flags, 60))
        elif kind == "error_status":
            status = self.rng.choice((abi.NETIF_RSP_ERROR, abi.NETIF_RSP_DROPPED,
                                      -self.rng.randrange(3, 0x8001)))
            out.responses.append(self._rsp(req.id, 0, flags, status))
        elif kind == "bad_offset":
            out.responses.append(self._rsp(req.id, self.rng.randrange(PAGE, _U16 + 1), flags,
                                           self.rng.randrange(0, 2000)))
        else:   # past_page
            offset = self.rng.randrange(PAGE)
            status = self.rng.randrange(PAGE - offset + 1, 0x8000)
            out.responses.append(self._rsp(req.id, offset, flags, status))

    @staticmethod
    def _reason(kind: str) -> str:
        return {"bad_id": "rx_bad_id", "error_status": "rx_error"}.get(kind, "rx_bad_response")

    def round(self, reqs: list[RxRequest]) -> RxRound:
        """Answers to ``reqs``, the frontend's outstanding rx requests in ring order."""
        rng = self.rng
        out = RxRound("rx")
        if rng.random() < self.p_overflow:
            out.kind, out.broken = "overflow", True
            out.rsp_prod = len(reqs) + abi.NET_RX_RING_SIZE + 1 + rng.randrange(1 << 20)
            out.drops["rx_ring_broken"] += 1
            return out
        kinds: collections.Counter = collections.Counter()
        i = 0
        budget = rng.choice((len(reqs), len(reqs), rng.randrange(1, len(reqs) + 1)))
        while i < budget:
            left = reqs[i:budget]
            if rng.random() < self.p_bad:
                kind = rng.choice(self.BAD_KINDS)
                used = self._bad(kind, left, out, last=False)
            else:
                kind = "good"
                n = min(len(left), rng.choice((1, 1, 1, 2, 3, rng.randrange(1, 19))))
                extras = rng.choice((0, 0, 0, 1, 2)) if len(left) > n + 2 else 0
                self._good(left, out, self._sizes(n), extras)
                used = n + extras
            kinds[kind] += 1
            i += used
        if i < len(reqs) and rng.random() < 0.05:
            # A chain cut short: more_data (or extra_info) on the last response.
            req = reqs[i]
            flags = rng.choice((_RX_MORE, _RX_EXTRA))
            out.responses.append(self._rsp(req.id, 0, flags, 100))
            out.drops["rx_bad_response"] += 1
            kinds["cut_short"] += 1
        out.kind = "+".join(sorted(kinds))
        return out

    def tx_answers(self, ids: list[int]) -> TxAnswers:
        """Responses for the tx requests ``ids`` (in ring order): most OKAY,
        some error statuses, some lies."""
        out = TxAnswers()
        answered: list[int] = []
        for id_ in ids:
            r = self.rng.random()
            if r < 0.08:
                if answered and self.rng.random() < 0.5:
                    out.responses.append(TxResponse(self.rng.choice(answered), _OK).pack())
                else:
                    out.responses.append(TxResponse(self.rng.randrange(abi.NET_TX_RING_SIZE,
                                                                       _U16 + 1), _OK).pack())
                out.bad += 1
                out.leaked.append(id_)
            elif r < 0.1:
                out.responses.append(TxResponse(self.rng.randrange(_U16 + 1), _NULL).pack())
                out.leaked.append(id_)
            else:
                status = _OK if r < 0.9 else self.rng.choice((_ERR, abi.NETIF_RSP_DROPPED))
                out.errors += status != _OK
                out.responses.append(TxResponse(id_, status).pack())
                answered.append(id_)
        return out
