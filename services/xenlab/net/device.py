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

import collections
import itertools
import logging
import time
from typing import Callable, Iterable

log = logging.getLogger(__name__)

Receiver = Callable[[list[bytes]], None]
Tap = Callable[[str, bytes, float], None]     # (direction "tx"|"rx", frame, unix time)


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
        counters[f"{direction}_packets"] += len(frames)
        counters[f"{direction}_bytes"] += sum(map(len, frames))
        if self._taps:
            for frame in frames:
                self._tap(direction, frame)

    def drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] += count

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
