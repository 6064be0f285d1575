"""A clock that moves only when told: the ``clock`` every sans-I/O core takes.

The cores (the bridge and its FDB, the guest IP stack, netback's credit
scheduler, the domain table, the event publishers) read the time through a
``Callable[[], float]`` they are given, ``time.monotonic`` or ``time.time``
by default. Hand them a ``ManualClock`` instead and a test decides when an
FDB entry ages out or a credit timer fires, without sleeping:

    clock = ManualClock()
    bridge = Bridge("br0", ageing=300, clock=clock)
    ...
    clock.advance(301)          # every entry learned so far has aged out
"""
from __future__ import annotations

import math


class ManualClock:
    """Seconds as a float, ``now``, until ``advance`` moves it on. ``now``
    may also be set outright (a test of a wall clock stepped back, as
    ``time.time`` can be); ``advance`` only goes forward, as the monotonic
    clock it usually stands for does."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = _finite(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move on by ``seconds`` (zero or more); the new time."""
        if _finite(seconds) < 0:
            raise ValueError(f"a monotonic clock does not go back ({seconds:g} s)")
        self.now += seconds
        return self.now

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now!r})"


def _finite(value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"not a time: {value!r}")
    return value
