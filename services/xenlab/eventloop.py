"""The event loop of the lab's long-running processes (hypervisor, bridge,
Domain-0, domains): uvloop when it is installed, asyncio's own otherwise.

Every frame crosses several processes, and each crossing is a wake-up of
an event loop and a few socket calls; uvloop (libuv) makes those cheaper
than the pure-Python selector loop, which is most of the ping RTT. Nothing
depends on it: without it, or where it cannot be imported, the standard
loop runs the same code.
"""
from __future__ import annotations

import asyncio
from typing import Coroutine, TypeVar

from xenlab.osutil import batch_scheduling

T = TypeVar("T")


def run(main: Coroutine[object, object, T]) -> T:
    """asyncio.run(main) on the fastest loop available, the process
    scheduled as SCHED_BATCH (xenlab.osutil.batch_scheduling)."""
    batch_scheduling()
    try:
        import uvloop  # lazy: optional, uvloop when installed
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
