"""netback's credit scheduler for guest transmit (the vif's ``rate=``), pure.

As Linux netback's tx_credit_exceeded()/tx_add_credit(): every
``credit_usec`` the vif earns ``credit_bytes``; a frame costs its size; a
frame larger than the credit left waits for the next replenish, which a
timer brings. Credit accumulates up to a burst of max(128 KiB,
credit_bytes), so that a 64 KiB frame can always go eventually.

The clock is injected (seconds, monotonic); the adapter owns the timer.
"""
from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Callable

from xenlab.xen.errors import ConfigError, XenError
from xenlab.xen.netconf import parse_rate as parse_xl_rate

MAX_BURST_BYTES = 131072    # netback: "a burst big enough to transmit a jumbo packet of up to 128kB"

_NETBACK_FORM = re.compile(r"([0-9]+),([0-9]+)")


@dataclass(frozen=True)
class Rate:
    credit_bytes: int     # bytes earned per interval
    credit_usec: int      # the interval, in microseconds

    def __post_init__(self):
        if self.credit_bytes <= 0 or self.credit_usec <= 0:
            raise XenError(errno.EINVAL, f"rate {self.credit_bytes} bytes per "
                                         f"{self.credit_usec}us is not positive")


def parse_rate(text: str) -> Rate:
    """The backend's ``rate`` key: libxl's "BYTES,USEC" (what netback's
    xen_net_read_rate() reads), or the xl form as the user wrote it
    ("10Mb/s@20ms")."""
    m = _NETBACK_FORM.fullmatch(text.strip())
    if m is not None:
        return Rate(int(m.group(1)), int(m.group(2)))
    try:
        credit_bytes, credit_usec = parse_xl_rate(text)
    except ConfigError as err:
        raise XenError(errno.EINVAL, err.message) from None
    return Rate(credit_bytes, credit_usec)


class CreditScheduler:
    def __init__(self, rate: Rate, clock: Callable[[], float]):
        self.rate = rate
        self._clock = clock
        self.remaining = rate.credit_bytes
        self.window_start = clock()
        self.timer_at: float | None = None   # when the armed credit timer fires
        self.limited = 0          # frames that had to wait for credit

    @property
    def _interval(self) -> float:
        return self.rate.credit_usec / 1_000_000

    def consume(self, size: int) -> float | None:
        """Charge a frame of ``size`` bytes. None: it may go now. Otherwise
        the clock time at which to call ``replenish()`` and ask again (the
        credit timer); the frame has not been charged."""
        if size <= self.remaining:
            self.remaining -= size
            return None
        if self.timer_at is not None:
            return self.timer_at
        deadline = self.window_start + self._interval
        now = self._clock()
        if now >= deadline:
            self.window_start = now
            self._add_credit()
            deadline = now + self._interval
        if size > self.remaining:
            # tx_credit_exceeded: arm the timer for the end of this window.
            self.window_start = deadline
            self.timer_at = deadline
            self.limited += 1
            return deadline
        self.remaining -= size
        return None

    def replenish(self) -> None:
        """The credit timer fired (xenvif_tx_credit_callback)."""
        self.timer_at = None
        self._add_credit()

    def _add_credit(self) -> None:
        max_burst = max(MAX_BURST_BYTES, self.rate.credit_bytes)
        self.remaining = min(self.remaining + self.rate.credit_bytes, max_burst)
