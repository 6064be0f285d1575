"""The guest's end of its console (hvc_xen): output onto the ring and a
notification, output held while the ring is full and bounded (with
printk's "dropped" notice), input left on the ring until someone takes it,
and the kernel log routed to it with each "\\n" sent as "\\r\\n"."""
from __future__ import annotations

import io
import logging

from xenlab.domain import console as front
from xenlab.domain.console import ConsoleFront, ConsoleLogHandler, log_to_console
from xenlab.xen import console as cons


class FakeEvtchn:
    def __init__(self):
        self.handlers, self.sent = {}, []

    def bind_handler(self, port, handler):
        self.handlers[port] = handler

    def unbind_handler(self, port):
        self.handlers.pop(port, None)

    def notify(self, port):
        self.sent.append(port)


def make():
    buf = bytearray(4096)
    page = cons.ConsolePage(buf)
    page.clear()
    evtchn = FakeEvtchn()
    console = ConsoleFront(memoryview(buf), 7, evtchn)
    backend = cons.ConsoleRingEnd(cons.ConsolePage(buf), backend=True)
    return console, backend, evtchn


def test_output_goes_on_the_ring_and_the_backend_is_told():
    console, backend, evtchn = make()
    console.write(b"hello\r\n")
    assert backend.read() == b"hello\r\n"
    assert evtchn.sent == [7]


def test_output_waits_while_the_ring_is_full_and_goes_when_the_backend_reads():
    console, backend, evtchn = make()
    console.write(b"a" * 5000)
    assert console.pending() == 5000 - cons.OUT_SIZE
    assert backend.read() == b"a" * cons.OUT_SIZE
    evtchn.handlers[7](7)                   # the backend's notification
    assert backend.read() == b"a" * cons.OUT_SIZE
    evtchn.handlers[7](7)
    assert backend.read() == b"a" * (5000 - 2 * cons.OUT_SIZE)
    assert console.pending() == 0


def test_output_past_the_limit_drops_the_oldest_and_says_so():
    console, backend, evtchn = make()
    console.write(b"x" * cons.OUT_SIZE)                  # fills the ring
    console.write(b"o" * 100)                             # oldest held bytes
    console.write(b"n" * front.OUTPUT_LIMIT)              # pushes them out
    assert console.stats["dropped"] == 100
    assert backend.read() == b"x" * cons.OUT_SIZE
    evtchn.handlers[7](7)
    assert backend.read().startswith(b"** 100 console bytes dropped **\n" + b"n")


def test_input_stays_on_the_ring_until_someone_takes_it():
    console, backend, evtchn = make()
    backend.write(b"ip addr\r")
    evtchn.handlers[7](7)
    got = []
    console.on_input = got.append
    assert got == [] and backend.writable() == cons.IN_SIZE - 8
    console.poll()
    assert got == [b"ip addr\r"]
    assert backend.writable() == cons.IN_SIZE


def test_a_broken_ring_stops_the_console_and_nothing_else():
    console, backend, evtchn = make()
    console.page.out_cons = 0x70000000
    console.write(b"hello")
    assert console.closed and console.broken
    console.write(b"more")                  # ignored, no exception


def test_the_kernel_log_goes_to_the_console_with_crlf_and_falls_back_to_stderr():
    console, backend, evtchn = make()
    logger = logging.getLogger("test-console-front")
    logger.propagate = False
    stderr_handler = logging.StreamHandler(io.StringIO())
    stderr_handler.stream = __import__("sys").stderr
    stderr_handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(stderr_handler)
    try:
        handler = log_to_console(console, logger)
        assert logger.handlers == [handler]
        logger.warning("two\nlines")
        assert backend.read() == b"WARNING two\r\nlines\r\n"
        fallback = io.StringIO()
        handler.fallback = fallback
        console.close()
        logger.warning("after")
        assert fallback.getvalue() == "WARNING after\n"
    finally:
        logger.handlers.clear()


def test_a_handler_built_directly_formats_plainly():
    console, backend, _ = make()
    handler = ConsoleLogHandler(console)
    handler.emit(logging.LogRecord("k", logging.INFO, __file__, 1, "booted", None, None))
    assert backend.read() == b"booted\r\n"
