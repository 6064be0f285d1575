"""xenconsoled's part: the backend of every domain's PV console
(tools/console/daemon/io.c).

The toolstack gives a domain a console page and an unbound event channel
offered to the console backend's domain, and publishes both in
/local/domain/D/console (ring-ref, port). ``Consoles.connect`` then does
what xenconsoled's domain_create_ring does: it reads those two nodes, maps
the page, binds the channel and marks the ring XENCONSOLE_CONNECTED. Here
xenconsoled is part of the hypervisor service, standing in Domain-0 as
xenstored does: "mapping" is a view of the domain's frame and "binding"
makes the hypervisor the channel's consumer.

What the guest writes on ``out`` is drained at once, as buffer_append does,
to the domain's console log (logs/dD-NAME.console, which `xl console`
follows) and to the console's pty; what a console client types (through
Console.Write, or on the pty) is queued and put on ``in`` as room allows
(handle_tty_read).

Each console has a pty, as console_create_tty makes it: the slave set raw
and kept open (so that the master never reads EIO when no one has it
open), its name written in console/tty. Output nobody reads off the pty
waits, up to console/limit bytes, and the oldest goes past that, as
xenconsoled's buffer discards what overflows; the log has all of it. The ring is the guest's to write: a pass that
finds its indexes more than a ring apart moves nothing ("ring is screwed:
ignore it"), and the backend keeps serving every other domain. The input
queue is bounded (``INPUT_LIMIT``): a client that types into a guest that
does not read is told EAGAIN, never buffered without end.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import tty
from typing import Callable

from xenlab.hypervisor.caller import DOM0
from xenlab.hypervisor.evtchn import EventChannels
from xenlab.hypervisor.memory import MachineMemory
from xenlab.hypervisor.xenstore import XenStore
from xenlab.xen import console as cons
from xenlab.xen.digits import parse_decimal
from xenlab.xen.errors import XenError

log = logging.getLogger(__name__)

# The domain builder's console page: next to the store page among the
# frames the guest kernel keeps for itself (xenlab.domain.memory.RESERVED_FRAMES),
# as Xen's PV domain builder puts the console and xenstore pages together.
CONSOLE_GFN = 14
# The domain the console backend runs in, to which the port is offered
# (libxl's console backend_domid): Domain-0, where xenconsoled runs.
CONSOLE_DOMID = 0
INPUT_LIMIT = 64 * 1024         # keystrokes queued for a guest that has not read them yet
ROUNDS = 8                      # passes over a ring per wake-up before others get a turn


class DomainConsole:
    """One domain's console ring, its log and its queued input."""

    def __init__(self, daemon: "Consoles", domid: int, gfn: int, port: int,
                 view: memoryview, log_fd: int) -> None:
        self.daemon = daemon
        self.domid = domid
        self.gfn = gfn
        self.port = port
        self._view = view
        self.page = cons.ConsolePage(view)
        self.end = cons.ConsoleRingEnd(self.page, backend=True)
        self._log_fd = log_fd
        self._input = bytearray()
        self._pty: tuple[int, int] | None = None        # (master, slave)
        self._pty_out = bytearray()
        self._pty_writing = False
        self.pty_dropped = 0
        self.limit = cons.XENCONSOLE_LIMIT      # console/limit: pty output held for no reader
        self.tty = ""
        self._scheduled = False
        self.closed = False
        self.broken = ""                # why the last pass moved nothing, if the ring is screwed
        self.grew = asyncio.Event()     # set whenever output reached the log
        self.stats = {"kicks": 0, "bytes_out": 0, "bytes_in": 0, "broken_passes": 0}

    def kick(self) -> None:
        """An event from the guest, or input to deliver: service the ring
        soon (never from inside the caller)."""
        self.stats["kicks"] += 1
        if not self._scheduled and not self.closed:
            self._scheduled = True
            self.daemon.call_soon(self.service)

    def write_input(self, data: bytes) -> int:
        """Queue keystrokes for the guest; how many were taken. Refused
        (EAGAIN) when the queue is full: the guest is not reading."""
        if self.closed:
            raise XenError(errno.ENODEV, f"d{self.domid}'s console is closed")
        room = INPUT_LIMIT - len(self._input)
        if data and room <= 0:
            raise XenError(errno.EAGAIN, f"d{self.domid} has {len(self._input)} bytes of console "
                                         f"input it has not read")
        taken = data[:room]
        self._input += taken
        self.kick()
        return len(taken)

    def service(self) -> None:
        self._scheduled = False
        if self.closed:
            return
        moved = False
        try:
            for _ in range(ROUNDS):
                progressed = self._round()
                moved |= progressed
                if not progressed:
                    break
            else:
                self.kick()
        except cons.ConsoleRingError as err:
            self.stats["broken_passes"] += 1
            if not self.broken:
                log.warning("xenconsoled: d%d's console ring is broken, ignoring it: %s",
                            self.domid, err)
            self.broken = str(err)
            return
        self.broken = ""
        if moved:
            self.daemon.evtchn.notify_from_hypervisor(self.domid, self.port)

    def _round(self) -> bool:
        progressed = False
        data = self.end.read()
        if data:
            self.stats["bytes_out"] += len(data)
            self._log(data)
            progressed = True
        if self._input:
            n = self.end.write(bytes(self._input))
            if n:
                del self._input[:n]
                self.stats["bytes_in"] += n
                progressed = True
                if self._pty is not None and len(self._input) < INPUT_LIMIT:
                    self.daemon.loop().add_reader(self._pty[0], self._pty_readable)
        return progressed

    def _log(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._log_fd, view):]
        except OSError as err:
            log.error("xenconsoled: writing d%d's console log failed: %s", self.domid, err)
        self.grew.set()
        self.grew = asyncio.Event()
        if self._pty is not None:
            self._pty_out += data
            excess = len(self._pty_out) - self.limit
            if excess > 0:
                del self._pty_out[:excess]
                self.pty_dropped += excess
            self._flush_pty()

    # -- the pty (console_create_tty, handle_tty_read, handle_tty_write) ----------------
    def open_pty(self) -> str:
        """A raw pty for the console; its slave's name."""
        master, slave = os.openpty()
        try:
            # grantpt leaves the slave 0620, group tty: write(1) and wall(1)
            # could type into the guest's console. Its owner's alone.
            os.fchmod(slave, 0o600)
            tty.setraw(slave)
            os.set_blocking(master, False)
            self.tty = os.ttyname(slave)
            self._pty = (master, slave)
            self.daemon.loop().add_reader(master, self._pty_readable)
        except BaseException:
            self._pty = None
            os.close(master)
            os.close(slave)
            raise
        return self.tty

    def _pty_readable(self) -> None:
        """Keystrokes on the pty: as many as the input queue takes; the
        rest wait in the pty until the guest reads."""
        room = INPUT_LIMIT - len(self._input)
        if room <= 0:
            self.daemon.loop().remove_reader(self._pty[0])
            return
        try:
            data = os.read(self._pty[0], min(room, 4096))
        except BlockingIOError:
            return
        except OSError:
            return
        if data:
            self._input += data
            self.kick()

    def _flush_pty(self) -> None:
        if self._pty is None or not self._pty_out:
            return
        try:
            n = os.write(self._pty[0], self._pty_out)
        except BlockingIOError:
            n = 0
        except OSError:
            n = len(self._pty_out)          # a pty gone bad: what it would have shown is in the log
        del self._pty_out[:n]
        loop = self.daemon.loop()
        if self._pty_out and not self._pty_writing:
            loop.add_writer(self._pty[0], self._flush_pty)
            self._pty_writing = True
        elif not self._pty_out and self._pty_writing:
            loop.remove_writer(self._pty[0])
            self._pty_writing = False

    def _close_pty(self) -> None:
        if self._pty is None:
            return
        master, slave = self._pty
        self._pty = None
        loop = self.daemon.loop()
        loop.remove_reader(master)
        loop.remove_writer(master)
        os.close(master)
        os.close(slave)

    def close(self) -> None:
        self.closed = True
        self.grew.set()
        self._close_pty()
        try:
            self.daemon.evtchn.unbind_consumer(self.domid, self.port, CONSOLE_DOMID)
        except XenError:
            pass
        os.close(self._log_fd)
        self.page.release()
        self._view.release()


class Consoles:
    """Every connected domain's console: xenconsoled."""

    def __init__(self, xenstore: XenStore, memory: MachineMemory, evtchn: EventChannels,
                 open_log: Callable[[int], int],
                 call_soon: Callable[[Callable[[], None]], object] | None = None) -> None:
        """``open_log(domid)``: a descriptor appending to that domain's console log."""
        self.xs = xenstore
        self.memory = memory
        self.evtchn = evtchn
        self._open_log = open_log
        self._call_soon = call_soon
        self.consoles: dict[int, DomainConsole] = {}
        memory.add_busy_check(self._busy)

    def call_soon(self, callback: Callable[[], None]) -> None:
        if self._call_soon is not None:
            self._call_soon(callback)
        else:
            asyncio.get_running_loop().call_soon(callback)

    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def get(self, domid: int) -> DomainConsole | None:
        return self.consoles.get(domid)

    def connect(self, domid: int) -> DomainConsole:
        """domain_create_ring: the page and port the toolstack published in
        console/ring-ref and console/port, mapped and bound."""
        base = f"/local/domain/{domid}/console"
        try:
            gfn = parse_decimal(self.xs.read(DOM0, f"{base}/ring-ref").decode("latin-1"),
                                "console/ring-ref", maximum=0xFFFFFFFF)
            port = parse_decimal(self.xs.read(DOM0, f"{base}/port").decode("latin-1"),
                                 "console/port", maximum=0xFFFFFFFF)
        except XenError as err:
            raise XenError(errno.EINVAL, f"d{domid}'s console: {err.message}") from None
        view = self.memory.frame(domid, gfn)
        try:
            log_fd = self._open_log(domid)
        except BaseException:
            view.release()
            raise
        console = DomainConsole(self, domid, gfn, port, view, log_fd)
        try:
            self.evtchn.bind_consumer(domid, port, CONSOLE_DOMID, console.kick)
        except BaseException:
            console.closed = True
            os.close(log_fd)
            console.page.release()
            view.release()
            raise
        self.consoles[domid] = console
        try:
            limit = self.xs.read(DOM0, f"{base}/limit").decode("latin-1")
            console.limit = parse_decimal(limit, "console/limit", maximum=1 << 30)
        except XenError:
            pass            # no limit node: the default, as xenconsoled's buffer without one
        try:
            self.xs.write(DOM0, f"{base}/tty", console.open_pty().encode())
        except OSError as err:
            log.error("xenconsoled: failed to create tty for d%d: %s", domid, err)
        console.page.connection = cons.XENCONSOLE_CONNECTED
        console.kick()          # what the guest wrote before we were there
        return console

    def write(self, domid: int, data: bytes) -> int:
        console = self.consoles.get(domid)
        if console is None:
            raise XenError(errno.ENODEV, f"d{domid} has no console ring")
        return console.write_input(data)

    def disconnect(self, domid: int) -> None:
        """The domain is going: what it wrote last is drained, then the
        ring and channel are let go."""
        console = self.consoles.pop(domid, None)
        if console is None:
            return
        if not console.closed:
            try:
                console._round()
            except cons.ConsoleRingError:
                pass
        console.close()

    def _busy(self, domid: int, gfn: int) -> str | None:
        console = self.consoles.get(domid)
        if console is not None and console.gfn == gfn:
            return "is its console ring page, which xenconsoled has mapped"
        return None
