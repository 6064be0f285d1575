"""The hypervisor's console ring (xl dmesg): bounded, timestamped, cleared on request."""
from __future__ import annotations

import errno
import logging

from xenlab.hypervisor.conring import ConsoleRing
from xenlab.rpc import handles_xen_errors
from xenlab.xen.errors import DomainError


class Clock:
    now = 10.0

    def __call__(self):
        return self.now


def test_lines_carry_the_time_since_start_and_warnings_their_level():
    clock = Clock()
    ring = ConsoleRing(clock=clock)
    clock.now = 12.5
    ring.emit(logging.LogRecord("xenlab.hypervisor.core", logging.INFO, "", 0, "created d%d", (1,), None))
    ring.emit(logging.LogRecord("xenlab.hypervisor.core", logging.WARNING, "", 0, "Watchdog fired", (), None))
    assert ring.read() == ["(XEN) [    2.500000] created d1",
                           "(XEN) [    2.500000] WARNING: Watchdog fired"]


def test_the_ring_keeps_the_newest_bytes_and_clear_empties_it():
    ring = ConsoleRing(size=200, clock=Clock())
    for n in range(50):
        ring.append(f"line {n}")
    lines = ring.read()
    assert lines[-1].endswith("line 49") and not any(l.endswith("line 0") for l in lines)
    assert sum(len(l) + 1 for l in lines) <= 200
    assert ring.read(clear=True) == lines
    assert ring.read() == []


def test_debug_lines_stay_out_but_refusals_come_in():
    ring = ConsoleRing(clock=Clock())
    ring.emit(logging.LogRecord("xenlab.hypervisor.core", logging.DEBUG, "", 0, "noise", (), None))
    ring.emit(logging.LogRecord("xenlab.rpc.refused", logging.DEBUG, "", 0, "Destroy refused", (), None))
    assert [l.split("] ", 1)[1] for l in ring.read()] == ["Destroy refused"]


async def test_a_refused_call_is_in_the_ring_once_attached():
    ring = ConsoleRing(clock=Clock())
    ring.attach()

    class Context:
        async def abort(self, *args):
            raise RuntimeError("aborted")

    class Servicer:
        @handles_xen_errors
        async def Pause(self, request, context):
            raise DomainError(errno.ESRCH, "no domain 7")

    try:
        try:
            await Servicer().Pause(None, Context())
        except RuntimeError:
            pass
        # what the hypervisor logs about domains comes in too
        logging.getLogger("xenlab.hypervisor.core").warning("d%d crashed", 3)
    finally:
        ring.detach()
    text = "\n".join(ring.read())
    assert "Pause refused: ESRCH: no domain 7" in text and "WARNING: d3 crashed" in text
    logging.getLogger("xenlab.hypervisor.core").warning("after detach")
    assert "after detach" not in "\n".join(ring.read())
