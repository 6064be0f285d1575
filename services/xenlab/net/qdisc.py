"""A device's root qdisc: a netem (``net/netem.py``) run on a device's egress.

Frames handed to ``NetDevice.egress`` go into the queue; those due go to
the device's own ``transmit``. One timer is armed for the next frame due,
and none when the queue is empty: an idle qdisc costs nothing, and a frame
held back on one device never holds up another device's frames.

Every frame is still counted once (docs/ARCHITECTURE.md, "Frames are never
lost"), on the device: what netem drops under ``netem_loss`` or
``netem_limit``, what a deleted qdisc still held under ``netem_flushed``;
the copies ``duplicate`` adds, and what is queued now, are the device's
``qdisc_duplicated`` and ``qdisc_backlog`` (``NetDevice.stats``).
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import random
import time
from typing import Callable

from xenlab.net.netem import Netem, NetemConfig
from xenlab.xen.errors import XenError

# The kernel numbers qdiscs it creates without a handle from 8001: upwards
# (qdisc_alloc_handle), host-wide.
_handles = itertools.count(0x8001)
# libuv's timers count whole milliseconds from the time its loop iteration
# began, so one may fire up to a millisecond before the frame it was armed
# for is due: then wait a millisecond more, rather than re-arm at once and
# spin (a spinning process waits longer for the CPU on a busy host).
TIMER_GRAIN = 0.001


class NetemQdisc:
    def __init__(self, device, config: NetemConfig, rng: random.Random | None = None,
                 clock: Callable[[], float] | None = None):
        self.device = device
        self.handle = next(_handles)
        self.core = Netem(config, rng)
        self._loop = asyncio.get_running_loop()
        # Not loop.time(): uvloop's is the time the loop iteration began.
        self._clock = clock or time.monotonic
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0
        self._seen = dict(self.core.counters)

    @property
    def config(self) -> NetemConfig:
        return self.core.config

    @property
    def kind(self) -> str:
        return "netem"

    def enqueue(self, frames: list[bytes]) -> None:
        self.core.enqueue(frames, self._clock())
        self._run()

    def change(self, config: NetemConfig) -> None:
        self.core.change(config)
        self._run()

    def close(self) -> None:
        """Deleted: what is still queued is dropped, as qdisc_reset does."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        flushed = self.core.flush()
        if flushed:
            self.device.drop("netem_flushed", len(flushed))
        self._account()

    def _run(self) -> None:
        due = self.core.dequeue(self._clock())
        self._account()
        if due:
            self.device.transmit(due)
        self._arm()

    def _arm(self) -> None:
        when = self.core.next_due()
        if self._timer is not None:
            if when is not None and self._timer_at <= when:
                return          # already armed for it, or sooner
            self._timer.cancel()
            self._timer = None
        if when is not None:
            # Our own note of when: uvloop hands back a plain Handle (no
            # when()) for a time already past.
            self._timer_at = when
            self._timer = self._loop.call_later(max(TIMER_GRAIN, when - self._clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._run()

    def _account(self) -> None:
        """The core's new counts onto the device, where the books read them."""
        counters, seen, dev = self.core.counters, self._seen, self.device
        for name, reason in (("loss", "netem_loss"), ("limit", "netem_limit")):
            if counters[name] != seen.get(name, 0):
                dev.drop(reason, counters[name] - seen.get(name, 0))
        for name in ("duplicated", "corrupted", "reordered"):
            if counters[name] != seen.get(name, 0):
                dev.qdisc_counters[name] += counters[name] - seen.get(name, 0)
                if dev.on_count is not None:
                    dev.on_count(dev)
        self._seen = dict(counters)

    def stats(self) -> dict[str, int]:
        return {**self.core.counters, "backlog": self.core.backlog}

    def show(self) -> str:
        """``tc qdisc show``'s line for it."""
        return f"qdisc netem {self.handle:x}: root refcnt 2 {self.config.format()}"


# -- tc qdisc add|change|replace|del on one device ---------------------------------------
def qdisc_add(device, config: NetemConfig) -> NetemQdisc:
    """``tc qdisc add dev NAME root netem ...``: refused if one is there."""
    if device.qdisc is not None:
        raise XenError(errno.EEXIST, f"{device.name} already has a root qdisc "
                                     f"(Exclusivity flag on, cannot modify): use change or replace")
    device.qdisc = NetemQdisc(device, config)
    return device.qdisc


def qdisc_change(device, config: NetemConfig) -> NetemQdisc:
    """``tc qdisc change``: the one there takes the new parameters, keeping its queue."""
    if device.qdisc is None:
        raise XenError(errno.ENOENT, f"{device.name} has no root qdisc to change")
    device.qdisc.change(config)
    return device.qdisc


def qdisc_replace(device, config: NetemConfig) -> NetemQdisc:
    """``tc qdisc replace``: change the one there, or add one."""
    return qdisc_change(device, config) if device.qdisc is not None else qdisc_add(device, config)


def qdisc_delete(device) -> None:
    """``tc qdisc del dev NAME root``: back to sending straight out."""
    qdisc = device.qdisc
    if qdisc is None:
        raise XenError(errno.ENOENT, f"{device.name} has no root qdisc to delete")
    device.qdisc = None
    qdisc.close()


def qdisc_show(device) -> str:
    """``tc qdisc show dev NAME``'s line: the netem, or the device's default
    (Linux's noqueue for a virtual device with no qdisc)."""
    if device.qdisc is None:
        return "qdisc noqueue 0: root refcnt 2"
    return device.qdisc.show()


def move_qdisc(old, new) -> None:
    """A device replaced by another of the same name (a veth end re-attached
    after its bridge came back): the new one takes the qdisc's parameters and
    counters on; the old queue drains into the old end."""
    new.qdisc_counters.update(old.qdisc_counters)
    if old.qdisc is not None and new.qdisc is None:
        new.qdisc = NetemQdisc(new, old.qdisc.config)
