"""Waiting for something that happens in another task or process.

``eventually`` polls a check until it returns something true and hands back
that value; past its timeout it fails with an ``Unmet`` (an AssertionError,
so pytest reports it as a failed assertion) naming what was awaited and the
check's last value. The timeout only bounds a hang: it is no claim about how
fast anything is, so keep it generous.

    eth = await eventually(lambda: kernel.netifs.get("eth0"), "d1's eth0")
    await eventually(lambda: agent.Ping(request), "an answer to ping", timeout=30)

A check may be a plain function or return an awaitable (a coroutine
function, an RPC); an exception it raises is not retried: it propagates.
``eventually_blocking`` is the same for code outside an event loop.
"""
from __future__ import annotations

import asyncio
import inspect
import reprlib
import time
from typing import Any, Callable

TIMEOUT = 20.0      # seconds: a hang, not a loaded machine
EVERY = 0.01        # seconds between two checks
EVERY_BLOCKING = 0.05   # the same for a blocking wait, whose checks are often processes


class Unmet(AssertionError):
    """What ``eventually`` waited for did not come about in time."""

    def __init__(self, what: str, timeout: float, last: Any):
        super().__init__(f"timed out after {timeout:g}s waiting for {what} "
                         f"(the check last returned {reprlib.repr(last)})")
        self.what = what
        self.timeout = timeout
        self.last = last


async def eventually(check: Callable[[], Any], what, *, timeout: float = TIMEOUT,
                     every: float = EVERY):
    """The first true value of ``check()`` (awaited if awaitable), polled
    every ``every`` seconds; ``Unmet`` after ``timeout`` seconds.
    ``what`` says what is awaited: a string, or a function giving one when
    the wait fails (to report the state at that moment)."""
    _check_arguments(timeout, every)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise Unmet(_describe(what), timeout, value)
        await asyncio.sleep(every)


def eventually_blocking(check: Callable[[], Any], what, *, timeout: float = TIMEOUT,
                        every: float = EVERY_BLOCKING):
    """``eventually`` for a caller without an event loop (a test driving
    processes): sleeps between checks."""
    _check_arguments(timeout, every)
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            getattr(value, "close", lambda: None)()
            raise TypeError("eventually_blocking cannot await a check: use eventually")
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Unmet(_describe(what), timeout, value)
        time.sleep(every)


def _check_arguments(timeout: float, every: float) -> None:
    if not timeout > 0 or not every > 0:
        raise ValueError(f"timeout and every must be positive (got {timeout!r}, {every!r})")


def _describe(what) -> str:
    return str(what()) if callable(what) else str(what)
