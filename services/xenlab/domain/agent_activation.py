"""The guest agent's socket activation: its gRPC server runs only while it
is used.

A gRPC server (and a channel) keeps grpc-core's thread pool alive in the
process, and that pool wakes several times a second however idle the
server is (grpc/grpc#40138); with no gRPC object left the process sleeps.
So a domU's agent listens on its unix socket with a plain socket of its own
while dormant, as systemd's socket activation does:

* **Dormant**: the socket at ``path`` is ours, watched by the event loop
  (no timer, no thread). A connection wakes the agent.
* **Waking**: the gRPC server is started on a socket of its own beside
  ``path`` (``path.srv``), and a second link to that socket is renamed over
  ``path``, atomically: from then on clients connect to gRPC itself. The
  connections that reached our socket before the rename (the one that woke
  it, and any in its backlog) are accepted and relayed to the server byte
  for byte for as long as they last; none is refused or lost.
* **Live**: calls are counted as they start and end (their tasks' ends,
  however they end). gRPC closes a connection left without a call for half
  the idle period, with HTTP/2's graceful GOAWAY. After ``idle`` seconds
  with no call in flight, a plain socket is renamed over ``path`` again;
  the server keeps serving for a short drain, and if a call or a connection
  comes in it, the server's socket goes back over ``path`` and the agent
  stays up; otherwise the server stops. A client whose connection went
  connects again, to the dormant socket, on its next call.

Only for unix-socket addresses (a published TCP port cannot be renamed
over) and not for Domain-0, whose event stream is held open for good.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from typing import Awaitable, Callable

import grpc

from xenlab import eventloop
from xenlab.rundir import PRIVATE_FILE, private_umask

log = logging.getLogger(__name__)

# How long a domU's agent stays up after its last call. Long enough that a
# client's next call in a burst (a bench's stats, a lab's ping after ping)
# finds it up; short against the 30 s an idle lab is measured over.
AGENT_IDLE = 5.0
RELAY_CHUNK = 1 << 16
ACCEPT_RETRY = 0.1                      # seconds, after an accept failed
UNIX_PATH_MAX = 107                     # sun_path is 108 bytes with its NUL
BESIDE = ".new"                         # the socket renamed over the agent's
SERVER = ".srv"                         # the gRPC server's own socket
DRAIN_MAX = 1.0                         # seconds


def fits_beside(path: str) -> bool:
    """Whether the sockets beside ``path`` have names that bind."""
    return len(path) + max(len(BESIDE), len(SERVER)) <= UNIX_PATH_MAX


class CallCount(grpc.aio.ServerInterceptor):
    """Calls in flight, from their start to the end of their task."""

    def __init__(self, changed: Callable[[int], None]):
        self.in_flight = 0
        self._changed = changed

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        self.in_flight += 1
        self._changed(self.in_flight)
        asyncio.current_task().add_done_callback(self._ended)
        return handler

    def _ended(self, _task) -> None:
        self.in_flight -= 1
        self._changed(self.in_flight)


ServeAt = Callable[[str, CallCount, list], Awaitable[grpc.aio.Server]]


def server_options(idle: float) -> list[tuple[str, object]]:
    """grpc-core's arguments for a server that goes dormant after ``idle``
    seconds: it closes each connection left without a call for half that,
    with HTTP/2's graceful GOAWAY (a call racing it is retried by the
    client), so that when the server stops no connection is left for a
    call to arrive on and be cancelled."""
    return [("grpc.max_connection_idle_ms", max(1, int(idle * 500)))]


class OnDemandServer:
    """A gRPC server at ``unix:path`` that runs only while it is used.
    ``serve(address, counter, options)`` starts the real server at
    ``address`` with ``counter`` among its interceptors (first, so that
    refused calls count too) and ``options`` among its channel arguments,
    and returns it."""

    def __init__(self, path: str, serve: ServeAt, idle: float = AGENT_IDLE):
        if not fits_beside(path):
            raise OSError(errno.ENAMETOOLONG, f"agent socket path {path} leaves no room for "
                          "the sockets beside it")
        self.path = path
        self.idle = idle
        # After the plain socket is back, how long the server keeps serving
        # before it stops: a client that connected just before the rename
        # has its call answered, and wakes the agent up again.
        self.drain = min(DRAIN_MAX, idle / 2)
        self._serve = serve
        self._new = path + BESIDE             # what is renamed over ``path``
        self._srv = path + SERVER             # the gRPC server's own socket, while it runs
        self.calls = CallCount(self._calls_changed)
        self.server: grpc.aio.Server | None = None
        self._listener: socket.socket | None = None
        self._waking: asyncio.Task | None = None
        self._sleeping: asyncio.Task | None = None
        self._stirred = asyncio.Event()       # a call or a connection while falling asleep
        self._idle_timer: asyncio.TimerHandle | None = None
        self._relays: set[asyncio.Task] = set()
        self._closed = False
        # Times the gRPC server was started. Waking and falling asleep are
        # not logged: a domU's log is its console, and a line there is a
        # message to xenconsoled that an idle domain must not send.
        self.wakes = 0

    @property
    def live(self) -> bool:
        """The gRPC server runs (falling asleep included)."""
        return self.server is not None

    async def start(self) -> None:
        """Listen, dormant."""
        self._listener = self._bind_dormant()

    # -- the socket at ``path`` --------------------------------------------------------------
    def _bind_dormant(self) -> socket.socket:
        """Our own socket, bound beside ``path`` and renamed over it (the
        rename replaces whatever is there, atomically), 0600 from the start."""
        _unlink(self._new)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with private_umask():
                sock.bind(self._new)
            os.chmod(self._new, PRIVATE_FILE)
            sock.listen(128)
            sock.setblocking(False)
            os.rename(self._new, self.path)
        except OSError:
            sock.close()
            _unlink(self._new)
            raise
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept_all, sock)
        return sock

    def _publish_server(self) -> None:
        """The gRPC server's socket at ``path`` (a second link to it, renamed
        over ``path``); then what reached our own socket before is relayed
        and the socket let go."""
        _unlink(self._new)
        os.link(self._srv, self._new)
        os.rename(self._new, self.path)
        listener, self._listener = self._listener, None
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener.fileno())
            self._accept_all(listener)
            listener.close()

    def _accept_all(self, sock: socket.socket) -> None:
        """Take every connection waiting on our socket and relay it (the
        server is woken first)."""
        while True:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                # out of descriptors, say: the connection stays queued; look
                # again in a moment rather than spin on a readable socket
                log.warning("agent %s: accept failed: %s", self.path, err)
                loop = asyncio.get_running_loop()
                loop.remove_reader(sock.fileno())
                loop.call_later(ACCEPT_RETRY, self._watch_again, sock)
                return
            conn.setblocking(False)
            self._stirred.set()
            task = asyncio.get_running_loop().create_task(self._relay(conn))
            self._relays.add(task)
            task.add_done_callback(self._relays.discard)

    def _watch_again(self, sock: socket.socket) -> None:
        if sock is self._listener:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept_all, sock)

    async def _relay(self, conn: socket.socket) -> None:
        try:
            if not await self.wake():
                conn.close()
                return
            client_r, client_w = await asyncio.open_unix_connection(sock=conn)
            server_r, server_w = await asyncio.open_unix_connection(self._srv)
        except OSError as err:
            log.warning("agent %s: could not relay a connection: %s", self.path, err)
            conn.close()
            return
        pumps = [asyncio.ensure_future(_pump(client_r, server_w)),
                 asyncio.ensure_future(_pump(server_r, client_w))]
        try:
            # HTTP/2 does not half-close: either end going is the connection's end
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            client_w.close()
            server_w.close()

    # -- waking and falling asleep ------------------------------------------------------------
    async def wake(self) -> bool:
        """Have the gRPC server up at ``path``; False once closed."""
        while not self._closed:
            if self._sleeping is not None:
                await asyncio.shield(self._sleeping)
                continue
            if self.server is not None:
                return True
            if self._waking is None:
                self._waking = asyncio.get_running_loop().create_task(self._wake())
            try:
                await asyncio.shield(self._waking)
            except (OSError, RuntimeError) as err:
                log.error("agent %s: could not start its server: %s", self.path, err)
                return False
        return False

    async def _wake(self) -> None:
        try:
            _unlink(self._srv)
            server = await self._serve(f"unix:{self._srv}", self.calls, server_options(self.idle))
            try:
                self._publish_server()
            except OSError:
                await server.stop(None)
                _unlink(self._srv)
                raise
            self.server = server
            self.wakes += 1
            self._calls_changed(self.calls.in_flight)
        finally:
            self._waking = None

    def _calls_changed(self, in_flight: int) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if in_flight:
            self._stirred.set()
        elif self.server is not None and self._sleeping is None and not self._closed:
            self._idle_timer = asyncio.get_running_loop().call_later(self.idle, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if self.calls.in_flight == 0 and self.server is not None and self._sleeping is None:
            self._sleeping = asyncio.get_running_loop().create_task(self._sleep())

    async def _sleep(self) -> None:
        try:
            self._stirred.clear()
            try:
                self._listener = self._bind_dormant()
            except OSError as err:
                log.warning("agent %s: stays up (%s)", self.path, err)
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await eventloop.wait_for(self._stirred.wait(), self.drain)
            if self._stirred.is_set() or self.calls.in_flight:
                try:
                    self._publish_server()          # used again: stay up
                    return
                except OSError as err:
                    log.warning("agent %s: could not stay up (%s)", self.path, err)
            server, self.server = self.server, None
            await server.stop(1.0)
            _unlink(self._srv)
        finally:
            self._sleeping = None
            self._calls_changed(self.calls.in_flight)

    async def stop(self, grace: float = 1.0) -> None:
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._stirred.set()
        # Their failures are theirs (gather hands them back); a cancellation
        # of stop()'s own caller still reaches it.
        await asyncio.gather(*(task for task in (self._waking, self._sleeping)
                               if task is not None), return_exceptions=True)
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        for task in list(self._relays):
            task.cancel()
        for path in (self.path, self._new, self._srv):
            _unlink(path)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction of a relayed connection, until its end."""
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
