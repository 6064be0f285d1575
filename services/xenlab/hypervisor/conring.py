"""The hypervisor's console ring (Xen's conring, read by `xl dmesg`): what
the hypervisor and its toolstack log about domains (created, destroyed,
shut down, crashed, watchdogs, refused calls), kept in a bounded ring of
bytes as Xen keeps it (conring_size): when it is full the oldest lines go.
``xl dmesg -c`` reads and clears it (XEN_SYSCTL_readconsole's clear).

Lines read ``(XEN) [  SECONDS.MICROS] message``, the time since the
hypervisor started, as Xen's console timestamps (console_timestamps=boot).
"""
from __future__ import annotations

import collections
import logging
import time

CONRING_SIZE = 64 * 1024        # bytes kept (Xen's default is 16 KiB; its lines are shorter)
# Where what the hypervisor says about domains is logged.
LOGGERS = ("xenlab.hypervisor", "xenlab.toolstack", "xenlab.launchers")
REFUSALS = "xenlab.rpc.refused"   # rpc.handles_xen_errors: one line per refused call


class ConsoleRing(logging.Handler):
    def __init__(self, size: int = CONRING_SIZE, clock=time.monotonic):
        super().__init__(logging.DEBUG)
        self.size = size
        self._clock = clock
        self._start = clock()
        self._lines: collections.deque[str] = collections.deque()
        self._bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.INFO and record.name != REFUSALS:
            return
        try:
            message = record.getMessage()
        except Exception:          # a bad format string must not lose the line
            message = str(record.msg)
        level = f"{record.levelname}: " if record.levelno > logging.INFO else ""
        self.append(f"{level}{message}")

    def append(self, message: str) -> None:
        for text in message.splitlines() or [""]:
            line = f"(XEN) [{self._clock() - self._start:12.6f}] {text}"
            self._lines.append(line)
            self._bytes += len(line) + 1
        while self._bytes > self.size and self._lines:
            self._bytes -= len(self._lines.popleft()) + 1

    def read(self, clear: bool = False) -> list[str]:
        lines = list(self._lines)
        if clear:
            self._lines.clear()
            self._bytes = 0
        return lines

    def attach(self) -> None:
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self)
        refused = logging.getLogger(REFUSALS)
        refused.addHandler(self)
        # Refusals are logged at DEBUG (a fuzzer makes thousands): the ring
        # takes them whatever the service's log level.
        refused.setLevel(logging.DEBUG)
        refused.propagate = False

    def detach(self) -> None:
        for name in (*LOGGERS, REFUSALS):
            logging.getLogger(name).removeHandler(self)
