"""`xenlab xl console DOM`: a domain's PV console, as xenconsole (the client
`xl console` runs) attaches to it.

What the domain writes on its console reaches its console log through
xenconsoled; this follows the log (Domains.Console) and prints it. What is
typed goes to xenconsoled (Console.Write), which puts it on the domain's
console ring.

* On a terminal, the terminal is put in raw mode (as xenconsole's
  init_term does: cfmakeraw), every keystroke is sent as typed, and Ctrl-]
  (0x1d, xenconsole's ESCAPE_CHARACTER) detaches; the terminal's settings
  are restored however the command ends.
* Otherwise (a pipe or a file: scripts and tests), input is sent a line at
  a time, each once the previous one has been answered: once the guest
  has echoed it and a shell prompt (``user@host:dir# `` or ``$ ``, bash's
  default PS1) has come back after it; after the last line the command ends with that line's prompt.
  With no input at all it follows the console until the domain goes away,
  as before. A Ctrl-] byte detaches here too.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import termios
import tty

import grpc

from xenlab import eventloop
from xenlab.proto import common_pb2, console_pb2, domains_pb2

ESCAPE_CHARACTER = 0x1d             # Ctrl-]
LINE_TIMEOUT = 60.0                 # seconds for a line's prompt to come back
PROMPT = re.compile(rb"[\w.-]+@[\w.-]+:[^\r\n#$]*[#$] ")
WRITE_TIMEOUT = 10.0


class ConsoleError(Exception):
    """What ends an attached console badly, in one line."""


class StdinReader:
    """Standard input as chunks on a queue (None at end of file): a reader
    callback where the descriptor can be polled (a terminal, a pipe), a
    thread for a regular file (which never blocks)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._polled = False
        self._task = None
        try:
            self._loop.add_reader(fd, self._readable)
            self._polled = True
        except (PermissionError, OSError):
            self._task = self._loop.create_task(self._read_file())

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(self.fd)
            self._polled = False
        self.queue.put_nowait(data or None)

    async def _read_file(self) -> None:
        while True:
            data = await asyncio.to_thread(os.read, self.fd, 65536)
            self.queue.put_nowait(data or None)
            if not data:
                return

    def close(self) -> None:
        if self._polled:
            self._loop.remove_reader(self.fd)
            self._polled = False
        if self._task is not None:
            self._task.cancel()


class Attached:
    """One attachment: the output follower and the input sender."""

    def __init__(self, hv, domid: int, out=None) -> None:
        self.hv = hv
        self.ref = common_pb2.DomainRef(domid=domid)
        self.out = out or sys.stdout.buffer
        self.seen = bytearray()             # output since the last line was sent
        self.output = asyncio.Event()       # set on each output chunk
        self.ended = asyncio.Event()        # the console stream ended (the domain is gone)

    async def follow(self) -> None:
        try:
            async for chunk in self.hv.domains.Console(
                    domains_pb2.ConsoleRequest(domain=self.ref, follow=True)):
                self.out.write(chunk.data)
                self.out.flush()
                self.seen += chunk.data
                self.output.set()
        finally:
            self.ended.set()
            self.output.set()

    async def send(self, data: bytes) -> None:
        """All of ``data`` to the guest; while its input queue is full
        (EAGAIN: it is not reading), wait, as a writer to a full pty blocks."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WRITE_TIMEOUT
        while data:
            try:
                reply = await self.hv.console.Write(
                    console_pb2.ConsoleWriteRequest(domain=self.ref, data=data),
                    timeout=WRITE_TIMEOUT)
                data = data[reply.accepted:]
                if not reply.accepted or not data:
                    continue
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.ABORTED:
                    raise
            if loop.time() > deadline:
                raise ConsoleError(f"the guest has not read its console input for "
                                   f"{WRITE_TIMEOUT:g}s")
            await asyncio.sleep(0.05)

    def answered(self, line: bytes) -> bool:
        """The guest echoed ``line`` and then showed a prompt."""
        echo = self.seen.find(line.rstrip(b"\r\n") + b"\r\n")
        return echo >= 0 and PROMPT.search(self.seen, echo) is not None

    async def wait_answer(self, line: bytes, timeout: float) -> bool:
        """Until the guest has answered ``line`` (its echo, then a prompt);
        False if the console ended first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.answered(line):
            if self.ended.is_set():
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ConsoleError(f"no prompt came back within {timeout:g}s")
            self.output.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await eventloop.wait_for(self.output.wait(), remaining)
        return True


async def attach(hv, domid: int, stdin_fd: int | None = None, line_timeout: float = LINE_TIMEOUT,
                 out=None) -> int:
    """Attach to d``domid``'s console until detached, the input is done
    (not a terminal), or the domain goes away; ``out``: where its output
    goes (standard output)."""
    fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    session = Attached(hv, domid, out)
    follower = asyncio.create_task(session.follow())
    try:
        if os.isatty(fd):
            await _interactive(session, fd, follower)
        else:
            await _line_by_line(session, fd, follower, line_timeout)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await follower
    return 0


async def _first(*aws):
    done, _ = await asyncio.wait(aws, return_when=asyncio.FIRST_COMPLETED)
    return done


async def _interactive(session: Attached, fd: int, follower: asyncio.Task) -> None:
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    reader = StdinReader(fd)
    try:
        while True:
            got = asyncio.ensure_future(reader.queue.get())
            done = await _first(got, follower)
            if got not in done:
                got.cancel()
                return          # the domain went away
            data = got.result()
            if data is None:
                return
            escape = data.find(ESCAPE_CHARACTER)
            if escape >= 0:
                if escape:
                    await session.send(data[:escape])
                return
            await session.send(data)
    finally:
        reader.close()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        if follower.done() and follower.exception() is not None:
            raise follower.exception()


async def _line_by_line(session: Attached, fd: int, follower: asyncio.Task,
                        timeout: float) -> None:
    reader = StdinReader(fd)
    pending = b""
    sent = False
    try:
        while True:
            data = await reader.queue.get()
            if data is None:
                break
            escape = data.find(ESCAPE_CHARACTER)
            if escape >= 0:
                data = data[:escape]
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                await _send_line(session, line + b"\n", timeout)
                sent = True
            if escape >= 0:
                return
        if pending:
            await _send_line(session, pending + b"\n", timeout)
            sent = True
        if not sent:
            await follower          # nothing to send: follow until the domain goes
    finally:
        reader.close()


async def _send_line(session: Attached, line: bytes, timeout: float) -> None:
    session.seen.clear()
    await session.send(line)
    if not await session.wait_answer(line, timeout):
        raise ConsoleError("the console ended (the domain is gone)")
