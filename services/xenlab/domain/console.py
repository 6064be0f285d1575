"""The guest's PV console (Linux's hvc_xen: domU_write_console,
domU_read_console), and its kernel log on it.

start_info names the console page and the console port, which the toolstack
set up and xenconsoled bound at creation. Output goes onto the ring's
``out`` half as room allows, then the backend is notified; a notification
from the backend means it consumed output or put input on ``in``, which is
read and handed to ``on_input``.

Output waits in a bounded buffer while the ring is full (hvc's outbuf,
printk's log buffer): past ``OUTPUT_LIMIT`` the oldest bytes go, and the
next output says how many, as printk says "** N printk messages dropped **".

``ConsoleLogHandler`` is printk: a logging handler that writes the kernel's
log records to the console. ``boot.domu`` routes the root logger to it once
the console is up; until then (and after it closes) the log goes to the
process's standard error, which the launcher sends to the same console log
(earlyprintk).
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

from xenlab.xen import console as cons

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 256 * 1024      # bytes of console output held while the backend is behind


class ConsoleFront:
    """The guest's end of its console ring."""

    def __init__(self, frame: memoryview, port: int, evtchn) -> None:
        self._frame = frame
        self.page = cons.ConsolePage(frame)
        self.end = cons.ConsoleRingEnd(self.page, backend=False)
        self.port = port
        self.evtchn = evtchn
        self._out = bytearray()
        self.dropped = 0
        self.broken = ""
        self.closed = False
        self.on_input: Callable[[bytes], None] | None = None
        self.stats = {"bytes_out": 0, "bytes_in": 0, "dropped": 0}
        evtchn.bind_handler(port, self._on_notify)

    @classmethod
    def open(cls, memory, evtchn, gfn: int, port: int) -> "ConsoleFront":
        """The console ring at our frame ``gfn``, notified on ``port``."""
        return cls(memory.frame(gfn), port, evtchn)

    def write(self, data: bytes) -> None:
        """Console output: on the ring now if there is room, else as soon as
        the backend makes some. Never blocks."""
        if self.closed or not data:
            return
        self._out += data
        excess = len(self._out) - OUTPUT_LIMIT
        if excess > 0:
            del self._out[:excess]
            self.dropped += excess
            self.stats["dropped"] += excess
        self._pump()

    def pending(self) -> int:
        """Output not on the ring yet."""
        return len(self._out)

    def _on_notify(self, port: int) -> None:
        self._pump()

    def poll(self) -> None:
        """Look at the ring now (whoever takes input has just arrived: what
        was typed before waits on the ring until then, as in a tty's buffer)."""
        self._pump()

    def _pump(self) -> None:
        if self.closed:
            return
        moved = False
        try:
            if self.dropped and self._out:
                notice = f"** {self.dropped} console bytes dropped **\n".encode()
                self._out[:0] = notice
                self.dropped = 0
            while self._out:
                n = self.end.write(bytes(self._out[:cons.OUT_SIZE]))
                if not n:
                    break
                del self._out[:n]
                self.stats["bytes_out"] += n
                moved = True
            data = self.end.read() if self.on_input is not None else b""
        except cons.ConsoleRingError as err:
            # The backend broke the ring: hvc_xen would spin; we stop using it.
            self.broken = str(err)
            self.closed = True
            log.error("console ring broken, console output stops: %s", err)
            return
        if moved or data:
            self.evtchn.notify(self.port)
        if data:
            self.stats["bytes_in"] += len(data)
            if self.on_input is not None:
                try:
                    self.on_input(data)
                except Exception:
                    log.exception("console input handler failed")

    def close(self) -> None:
        """Stop using the ring (what is not on it yet is lost with the domain)."""
        if self.closed and self.page is None:
            return
        self.closed = True
        self.evtchn.unbind_handler(self.port)
        self.page.release()
        self.page = None
        self._frame.release()


class ConsoleLogHandler(logging.Handler):
    """printk: each log record, formatted, on the console; once the console
    is closed (the kernel going down), on ``fallback`` (standard error,
    which the launcher also sends to the console log)."""

    def __init__(self, console: ConsoleFront, fallback=None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.console = console
        self.fallback = fallback

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
            if self.console.closed:
                if self.fallback is not None:
                    self.fallback.write(text)
                    self.fallback.flush()
                return
            # hvc_console_print: each "\n" goes out as "\r\n".
            self.console.write(text.replace("\n", "\r\n").encode("utf-8", errors="replace"))
        except Exception:
            self.handleError(record)


def log_to_console(console: ConsoleFront, logger: logging.Logger | None = None) -> ConsoleLogHandler:
    """Route ``logger`` (the root logger) to the console: its handlers that
    write to standard error are replaced by one that writes to the ring,
    with their format; standard error stays the fallback."""
    logger = logger or logging.getLogger()
    handler = ConsoleLogHandler(console, fallback=sys.stderr)
    for old in list(logger.handlers):
        if isinstance(old, logging.StreamHandler) and getattr(old, "stream", None) is sys.stderr:
            handler.setFormatter(old.formatter)
            handler.setLevel(old.level)
            logger.removeHandler(old)
    logger.addHandler(handler)
    return handler
