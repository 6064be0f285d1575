"""A shell on the guest's console (getty and the shell it starts): what is
typed on hvc0 goes through the shell core (domain/shell.py), and each
command runs against the guest's network and clock.

Output to the console goes through the tty's output processing: each "\\n"
becomes "\\r\\n" (ONLCR), so that a terminal in raw mode on the other end of
`xl console` shows lines as lines. Commands run one at a time, in the order
typed; what is typed while one runs is echoed and waits (typeahead), and
Ctrl-C stops the one running and drops what waits (ISIG's SIGINT).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable

from xenlab.domain import shell as sh
from xenlab.xen.errors import XenError

log = logging.getLogger(__name__)


def onlcr(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", errors="replace")


class ConsoleShell:
    def __init__(self, console, net, hostname: str, booted: float,
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], str] = lambda: time.strftime("%H:%M:%S")) -> None:
        """``net``: the guest's GuestNetwork (None: a guest without one);
        ``booted``: ``clock()`` when the kernel booted."""
        self.console = console
        self.net = net
        self.shell = sh.Shell(hostname)
        self.booted = booted
        self.clock = clock
        self.wallclock = wallclock
        self._lines: collections.deque[str] = collections.deque()
        self._runner: asyncio.Task | None = None
        self.commands = 0

    def start(self) -> None:
        self.console.on_input = self._input
        self.console.write(onlcr(f"\nxenlab {self.shell.hostname} hvc0\n\n") + self.shell.prompt())
        self.console.poll()

    def _input(self, data: bytes) -> None:
        interrupt = data.find(b"\x03")
        if interrupt >= 0 and self._runner is not None and not self._runner.done():
            # ISIG: Ctrl-C interrupts the command running (and what was
            # typed ahead of it), as SIGINT stops a foreground job.
            self._input(data[:interrupt])
            self._runner.cancel()
            self._lines.clear()
            self.console.write(b"^C\r\n" + self.shell.prompt())
            data = data[interrupt + 1:]
            if not data:
                return
        fed = self.shell.feed(data)
        if fed.echo:
            self.console.write(fed.echo)
        self._lines.extend(fed.lines)
        if self._lines and (self._runner is None or self._runner.done()):
            self._runner = asyncio.get_running_loop().create_task(self._run_lines())

    async def _run_lines(self) -> None:
        while self._lines:
            line = self._lines.popleft()
            try:
                text = await self.run(line)
            except Exception as err:        # a command that failed in a way we did not foresee
                log.exception("console command %r failed", line)
                text = f"-sh: {line.split()[0] if line.split() else line}: {err}\n"
            self.console.write(onlcr(text) + self.shell.prompt())

    async def run(self, line: str) -> str:
        """One command line's output."""
        cmd = sh.parse(line)
        if cmd is None:
            return ""
        self.commands += 1
        if isinstance(cmd, sh.Failed):
            return cmd.message + "\n"
        if isinstance(cmd, sh.Help):
            return sh.HELP
        if isinstance(cmd, sh.Uptime):
            return sh.render_uptime(self.wallclock(), self.clock() - self.booted)
        if isinstance(cmd, sh.IpAddr):
            return sh.render_ip_addr(self._interfaces(), cmd.device)
        if isinstance(cmd, sh.IpNeigh):
            names = tuple(i.name for i in self._interfaces())
            return sh.render_ip_neigh(self._neighbours(), cmd.device, names)
        if isinstance(cmd, sh.Ping):
            return await self._ping(cmd)
        raise AssertionError(f"unhandled command {cmd!r}")

    def _interfaces(self) -> list[sh.InterfaceView]:
        if self.net is None:
            return []
        views = []
        for index, device in enumerate(self.net.interfaces(), start=1):
            stack = self.net.stack(device.name)
            views.append(sh.InterfaceView(
                index=index, name=device.name, mac=device.mac, mtu=device.mtu,
                up=device.state in ("up", "connected"),
                address=stack.config.address if stack is not None else None))
        return views

    def _neighbours(self) -> list[sh.NeighbourView]:
        if self.net is None:
            return []
        out = []
        for device in self.net.interfaces():
            stack = self.net.stack(device.name)
            if stack is None:
                continue
            states = stack.arp_states()
            out.extend(sh.NeighbourView(ip, device.name, mac, states.get(ip, "STALE"))
                       for ip, (mac, _) in stack.arp_cache().items())
            out.extend(sh.NeighbourView(ip, device.name, None) for ip in stack.arp_pending())
        return out

    async def _ping(self, cmd: sh.Ping) -> str:
        if self.net is None or not self.net.has_stack():
            return "ping: connect: Network is unreachable\n"
        self.console.write(onlcr(sh.render_ping_header(cmd.dst)))
        started = self.clock()
        shown = lambda seq, rtt: self.console.write(onlcr(sh.render_ping_reply(cmd.dst, seq, rtt)))  # noqa: E731
        try:
            result = await self.net.ping(cmd.dst, count=cmd.count, on_reply=shown)
        except XenError as err:
            return f"ping: {err.message}\n"
        return sh.render_ping(cmd.dst, result, self.clock() - started, replies_shown=True)
