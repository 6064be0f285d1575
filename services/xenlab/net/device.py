"""A network interface as every xenlab component sees it.

netfront's ``eth0``, netback's ``vifD.N``, either end of a veth pair and a
bridge port are all ``NetDevice``s: frames go out with ``transmit`` and
come in through ``deliver`` (which hands them to whoever is attached as the
receiver), every frame is counted, and capture taps see both directions.

Counting rule (the frame-conservation invariant): every frame handed to
``transmit`` ends up in ``tx_packets`` or in exactly one ``drops`` reason;
every frame handed to ``deliver`` ends up in ``rx_packets`` or in exactly one
``drops`` reason. A root qdisc (``tc qdisc add dev NAME root netem``:
``net/qdisc.py``) sits in front of ``transmit``: what the stack sends goes
to ``egress``, and through the qdisc, which adds copies (``duplicate``,
counted in ``qdisc_counters``) and holds frames back (``qdisc_backlog``).
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from typing import Awaitable, Callable, Iterable

from xenlab.net.link import (DROP_DEV_DOWN, DROP_NO_CARRIER, DROP_RX_DEV_DOWN,
                             DROP_RX_NO_CARRIER, LinkState)

log = logging.getLogger(__name__)

Receiver = Callable[[list[bytes]], None]
Tap = Callable[[str, bytes, float], None]     # (direction "tx"|"rx", frame, unix time)
# Told when a device's link state changed; may return an awaitable (a
# xenstore write) that ``link_settled`` waits for.
LinkWatcher = Callable[["NetDevice"], Awaitable[None] | None]
# A direction's two counters, named once (_count runs for every batch at every device).
_COUNTER_KEYS = {"rx": ("rx_packets", "rx_bytes"), "tx": ("tx_packets", "tx_bytes")}


class NetDevice:
    def __init__(self, name: str, mac: bytes = b"\0" * 6, mtu: int = 1500,
                 clock: Callable[[], float] = time.time):
        self.name = name
        self.mac = mac
        self.mtu = mtu
        self.clock = clock
        self.receiver: Receiver | None = None
        # The device the receiver sends our delivered frames out of (netback's
        # vif: its veth end), for flow control: see tx_room().
        self.upstream: NetDevice | None = None
        self.counters: collections.Counter = collections.Counter()
        self.drops: collections.Counter = collections.Counter()
        self.qdisc = None                  # the root qdisc, or None: frames go straight out
        # Kept across qdiscs (added, changed, deleted): the books need them.
        self.qdisc_counters: collections.Counter = collections.Counter()
        self._taps: dict[int, Tap] = {}
        self._tap_ids = itertools.count(1)
        self.ifindex = 0                # its domain numbers it (1 is lo's, as in Linux)
        self.master = ""                # the bridge it is a port of, as ip shows it
        self.admin_up = True            # IFF_UP: `ip link set DEV up|down`
        self._carrier = True            # netif_carrier_on/off: what the other side says
        self.link_watchers: list[LinkWatcher] = []
        self._link_tasks: set[asyncio.Task] = set()
        # Told (once per batch) that a counter moved: whoever publishes the
        # counters (events.sources.Dom0Source) then has something to say,
        # and never has to look at a device that stands still.
        self.on_count: Callable[["NetDevice"], None] | None = None

    # -- what subclasses implement -------------------------------------------
    def transmit(self, frames: list[bytes]) -> None:
        """Send frames out of this interface. Subclasses count each frame as
        sent (``count_tx``) or dropped (``drop``)."""
        raise NotImplementedError

    @property
    def state(self) -> str:
        return "up"

    def tx_room(self) -> int | None:
        """Frames transmit() would still queue without a drop; None: no bound."""
        return None

    async def wait_room(self, frames: int) -> None:
        """Until tx_room() is at least ``frames`` (or the device is down)."""
        return

    # -- link state (net/link.py) ------------------------------------------------
    @property
    def carrier(self) -> bool:
        """The carrier as ip shows it; a driver adds what it knows (netfront:
        connected to its backend)."""
        return self._carrier

    @property
    def link_up(self) -> bool:
        """Up as the administrator and the other side's carrier have it
        (whatever the driver's own connection)."""
        return self.admin_up and self._carrier

    @property
    def link_state(self) -> LinkState:
        return LinkState(self.admin_up, self.carrier)

    def set_admin_up(self, up: bool) -> bool:
        """`ip link set DEV up|down`; True if it changed anything."""
        if up == self.admin_up:
            return False
        self.admin_up = up
        self._link_changed()
        return True

    def set_carrier(self, up: bool) -> bool:
        """netif_carrier_on/off: the other side came or went."""
        if up == self._carrier:
            return False
        self._carrier = up
        self._link_changed()
        return True

    def _link_changed(self) -> None:
        for watcher in list(self.link_watchers):
            try:
                pending = watcher(self)
            except Exception:
                log.exception("%s: link watcher failed", self.name)
                continue
            if pending is not None:
                task = asyncio.ensure_future(pending)
                self._link_tasks.add(task)
                task.add_done_callback(self._link_done)

    def _link_done(self, task: asyncio.Task) -> None:
        self._link_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: telling the other side of a link change failed: %s",
                        self.name, task.exception())

    async def link_settled(self) -> None:
        """Until what the watchers started (the other side told) is done."""
        while self._link_tasks:
            await asyncio.gather(*list(self._link_tasks), return_exceptions=True)

    def refuse_tx(self, frames: list[bytes]) -> bool:
        """Count frames a device that is down, or has no carrier, cannot
        send (a driver's transmit asks first); True if it refused them."""
        if self.admin_up and self._carrier:
            return False
        self.drop(DROP_DEV_DOWN if not self.admin_up else DROP_NO_CARRIER, len(frames))
        return True

    # -- shared bookkeeping ----------------------------------------------------
    def egress(self, frames: list[bytes]) -> None:
        """Frames to send out of this interface, as the stack (or the bridge,
        or netback) sends them: through the root qdisc, if there is one."""
        qdisc = self.qdisc
        if qdisc is None:
            self.transmit(frames)
        else:
            qdisc.enqueue(frames)

    def deliver(self, frames: list[bytes]) -> None:
        """Frames arriving on this interface: to the receiver, or dropped."""
        if not frames:
            return
        if not (self.admin_up and self._carrier):
            # A device that is down takes nothing in (Linux drops at
            # netif_receive_skb / the peer's veth_xmit).
            self.drop(DROP_RX_DEV_DOWN if not self.admin_up else DROP_RX_NO_CARRIER, len(frames))
            return
        if self.receiver is None:
            self.drop("no_receiver", len(frames))
            return
        self._count("rx", frames)
        try:
            self.receiver(frames)
        except Exception:
            log.exception("%s: receiver failed", self.name)

    def count_tx(self, frames: Iterable[bytes]) -> None:
        if not isinstance(frames, (list, tuple)):
            frames = list(frames)
        if frames:
            self._count("tx", frames)

    def _count(self, direction: str, frames: list[bytes]) -> None:
        """A batch at once (this runs for every frame at every device); the
        taps, if any, frame by frame."""
        counters = self.counters
        packets, octets = _COUNTER_KEYS[direction]
        counters[packets] += len(frames)
        counters[octets] += sum(map(len, frames))
        if self._taps:
            for frame in frames:
                self._tap(direction, frame)
        if self.on_count is not None:
            self.on_count(self)

    def drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] += count
        if self.on_count is not None:
            self.on_count(self)

    def stats(self) -> dict[str, int]:
        out = {k: self.counters[k] for k in ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes")}
        out.update({f"drop_{reason}": n for reason, n in sorted(self.drops.items())})
        out.update({f"qdisc_{name}": n for name, n in sorted(self.qdisc_counters.items()) if n})
        if self.qdisc is not None:
            out["qdisc_backlog"] = self.qdisc.core.backlog
        return out

    def qdisc_stats(self) -> dict[str, int]:
        """What the root qdisc added and holds, for the books: ``duplicated``
        and ``backlog`` (and ``corrupted``, ``reordered``)."""
        out = dict(self.qdisc_counters)
        if self.qdisc is not None:
            out["backlog"] = self.qdisc.core.backlog
        return out

    def add_tap(self, tap: Tap) -> int:
        handle = next(self._tap_ids)
        self._taps[handle] = tap
        return handle

    def remove_tap(self, handle: int) -> None:
        self._taps.pop(handle, None)

    def _tap(self, direction: str, frame: bytes) -> None:
        if self._taps:
            now = self.clock()
            for tap in list(self._taps.values()):
                tap(direction, frame, now)
