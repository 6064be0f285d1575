"""xenstored's unix socket: Xen's own tools (xenstore-ls, -read, -write,
-watch..., libxenstore) talk to the lab here.

A thin adapter: bytes between a socket and an ``XsConnection``. The socket
is the toolstack's, as xenstored's ``$XENSTORED_RUNDIR/socket`` is: every
client on it acts as Domain-0, so it is reachable by its owner only (its
directory 0700 and the socket itself 0600, set explicitly after bind rather
than trusted to the umask).

Flow control rides on asyncio's: a client that does not read its replies
fills the transport's buffer (``pause_writing``), its connection's backlog
grows, and the connection stops asking for input (``pause_reading``) until
the client catches up.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from xenlab.hypervisor.identity import DOM0
from xenlab.hypervisor.xenstored import XsConnection, Xenstored

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class _Client(asyncio.Protocol):
    def __init__(self, daemon: Xenstored, clients: set) -> None:
        self.daemon = daemon
        self.clients = clients
        self.transport: asyncio.Transport | None = None
        self.conn: XsConnection | None = None
        self.writable = True
        self.reading = True
        self._scheduled = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn = self.daemon.connect(DOM0, wake=self._wake, name=f"socket#{id(self) & 0xffff:04x}")
        self.clients.add(self)

    def data_received(self, data: bytes) -> None:
        self.conn.receive(data)
        self._flush()

    def eof_received(self) -> bool:
        return False        # close our end too: the tools shut down both directions

    def connection_lost(self, exc) -> None:
        self.clients.discard(self)
        self.conn.close()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self._flush()

    def _wake(self) -> None:
        """From the core, in the middle of another request: only schedule."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self.transport.is_closing():
            return
        conn = self.conn
        while not conn.closed:
            while self.writable:
                data = conn.take(CHUNK)
                if not data:
                    break
                self.transport.write(data)
            handled = conn.process()
            if handled >= conn.limits.batch:
                self._wake()            # more are waiting: let other clients have a turn
                break
            if not handled:
                break
        if conn.closed:
            self.transport.abort()
            return
        if conn.wants_input != self.reading:
            self.reading = conn.wants_input
            (self.transport.resume_reading if self.reading else self.transport.pause_reading)()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class XenstoredSocket:
    """Serves ``daemon`` on the unix socket at ``path``."""

    def __init__(self, daemon: Xenstored, path: Path) -> None:
        self.daemon = daemon
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[_Client] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: _Client(self.daemon, self._clients), path=str(self.path))
        os.chmod(self.path, 0o600)
        log.info("xenstored listening on %s", self.path)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for client in list(self._clients):
            client.abort()
        await self._server.wait_closed()
        self._server = None
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()        # its own directory, as the rundir's other entries go

    def __len__(self) -> int:
        return len(self._clients)
