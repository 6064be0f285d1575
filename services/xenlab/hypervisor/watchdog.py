"""SCHEDOP_watchdog: a domain's watchdog timers, pure (the clock is injected).

As Xen's domain_watchdog (common/sched/core.c): a domain has
NR_DOMAIN_WATCHDOG_TIMERS slots. Id 0 takes a free slot and arms it
``timeout`` seconds from now (a timeout of 0 is due at once, as in Xen),
returning the slot's id, 1-based; an id with a timeout re-arms it, an id
with 0 stops it and frees the slot. A slot left past its deadline has
fired: the hypervisor shuts the domain down with SHUTDOWN_watchdog.
"""
from __future__ import annotations

import errno
import time
from typing import Callable

from xenlab.xen.errors import DomainError

NR_DOMAIN_WATCHDOG_TIMERS = 2     # xen/include/xen/sched.h


class Watchdogs:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._deadlines: dict[int, dict[int, float]] = {}   # domid -> {id: deadline}

    def set(self, domid: int, wid: int, timeout: int) -> int:
        """domain_watchdog: the new slot's id for id 0, else 0."""
        if not 0 <= wid <= NR_DOMAIN_WATCHDOG_TIMERS:
            raise DomainError(errno.EINVAL, f"watchdog id {wid}: expected 0 (a new one) "
                                            f"or 1..{NR_DOMAIN_WATCHDOG_TIMERS}")
        slots = self._deadlines.setdefault(domid, {})
        deadline = self.clock() + timeout
        if wid == 0:
            free = [i for i in range(1, NR_DOMAIN_WATCHDOG_TIMERS + 1) if i not in slots]
            if not free:
                raise DomainError(errno.ENOSPC, f"d{domid} has {NR_DOMAIN_WATCHDOG_TIMERS} "
                                                f"watchdogs already")
            slots[free[0]] = deadline
            return free[0]
        if wid not in slots:
            raise DomainError(errno.EINVAL, f"d{domid} has no watchdog {wid}")
        if timeout == 0:
            del slots[wid]
        else:
            slots[wid] = deadline
        return 0

    def deadline(self, domid: int, wid: int) -> float | None:
        return self._deadlines.get(domid, {}).get(wid)

    def expired(self, domid: int, wid: int) -> bool:
        deadline = self.deadline(domid, wid)
        return deadline is not None and self.clock() >= deadline

    def armed(self, domid: int) -> list[int]:
        return sorted(self._deadlines.get(domid, {}))

    def remove_domain(self, domid: int) -> None:
        self._deadlines.pop(domid, None)
