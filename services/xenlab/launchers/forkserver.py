"""The fork-server launcher: local domains forked from one process that
has imported everything a domain runs (the zygote pattern, as Android's
zygote and CPython's multiprocessing "forkserver" do).

The hypervisor starts the fork server (``python -m xenlab.boot.zygote``)
at the first launch, with one end of a unix SOCK_SEQPACKET pair as its
control socket. Each launch is one datagram carrying, by SCM_RIGHTS, the
domain's memory object, its doorbell, its console log and its start_info
(a sealed memfd: the secret never passes through the fork server's own
memory, so no later domain forked from it can find it there). The fork
server forks; the child keeps those descriptors and nothing else, becomes
the domain's uid and runs the domain kernel (xenlab.boot.domu.boot). The
fork server answers with the child's pid and a pidfd for it, and reports
every child's exit status on the same socket.

If the fork server dies, its domains keep running: the hypervisor is a
child subreaper (osutil.become_subreaper), so they become its own children;
it then waits for each through its pidfd (waitid P_PIDFD), and a new fork
server starts at the next launch. A domain's parent-death signal is armed
against the fork server, then against the hypervisor once reparented
(xenlab.boot.zygote), so every domain still dies with the hypervisor.

``XENLAB_FORK_SERVER=off`` in the hypervisor's environment starts each
domain as its own interpreter instead (LocalLauncher).
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import itertools
import json
import logging
import os
import signal
import socket
import sys

from xenlab import eventloop
from xenlab.launchers.base import DomainHandles, DomainProcess
from xenlab.launchers.local import HostProcess, LocalLauncher
from xenlab.osutil import become_subreaper
from xenlab.xen.errors import XenError
from xenlab.xen.start_info import StartInfo

log = logging.getLogger(__name__)

ENV = "XENLAB_FORK_SERVER"          # "off": spawn every domain (LocalLauncher)
MAX_MESSAGE = 4096                  # bytes of one control datagram
MAX_FDS = 8                         # descriptors one datagram may carry
READY_TIMEOUT = 120.0               # seconds for the fork server's imports (a loaded host)
LAUNCH_TIMEOUT = 60.0               # seconds for one fork
# A domain whose fork server reaped it and died before telling: its status is lost.
STATUS_LOST = 255

# What one launch hands over, in order (the fork server keeps this order).
LAUNCH_FDS = ("memory", "doorbell", "console", "start_info")


def enabled(environ=os.environ) -> bool:
    return environ.get(ENV, "on").strip().lower() not in ("off", "0", "no", "false")


class ProtocolError(ValueError):
    """A control datagram that is not one of the protocol's."""


# -- the control protocol: one JSON object per datagram ------------------------------------
# hypervisor -> fork server: {"op": "launch", "req": N, "fds": [names], "log_level": L}
# fork server -> hypervisor: {"op": "ready", "pid": P, "mergeable": B}   (B: its memory and
#                                                       its children's are offered to KSM)
#                            {"op": "started", "req": N, "pid": P}   + the child's pidfd
#                            {"op": "failed", "req": N, "error": TEXT}
#                            {"op": "exit", "pid": P, "status": S}   (S: exit code, or -signal)
_FIELDS = {"launch": {"req": int, "fds": list, "log_level": str},
           "ready": {"pid": int, "mergeable": bool},
           "started": {"req": int, "pid": int},
           "failed": {"req": int, "error": str},
           "exit": {"pid": int, "status": int}}


def encode(op: str, **fields) -> bytes:
    data = json.dumps({"op": op, **fields}).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"a {op} message of {len(data)} bytes (at most {MAX_MESSAGE})")
    return data


def decode(data: bytes) -> dict:
    """The message, its fields checked; ProtocolError otherwise."""
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"not JSON: {err}") from None
    if not isinstance(msg, dict) or msg.get("op") not in _FIELDS:
        raise ProtocolError(f"no known op in {data[:80]!r}")
    for name, kind in _FIELDS[msg["op"]].items():
        value = msg.get(name)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ProtocolError(f"{msg['op']}: {name} must be {kind.__name__}")
    return msg


def exit_status(info) -> int:
    """waitid's siginfo as asyncio's returncode: the exit code, or -signal."""
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status


class ForkServerGone(XenError):
    def __init__(self, why: str):
        super().__init__(errno.EAGAIN, f"the fork server is gone ({why}); the next "
                                       f"launch starts a new one")


class Child:
    """One forked domain as the hypervisor tracks it: its pid, a pidfd, and
    its exit status once known (from the fork server, or from waitid)."""

    def __init__(self, pid: int, pidfd: int):
        self.pid = pid
        self.pidfd = pidfd
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watching = False

    @property
    def done(self) -> bool:
        return self.status.done()

    def exited(self, status: int) -> None:
        if self.done:
            return
        if self._watching:
            asyncio.get_running_loop().remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.status.set_result(status)

    def adopt(self) -> None:
        """Its fork server is gone and it is our child now: wait for it
        through its pidfd (readable once it has exited)."""
        if not self.done and not self._watching:
            self._watching = True
            asyncio.get_running_loop().add_reader(self.pidfd, self._reap)
            self._reap()

    def _reap(self) -> None:
        try:
            info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            # Reaped by the fork server, which died before reporting it.
            log.warning("process %d: its fork server reaped it and died before reporting "
                        "its exit status", self.pid)
            self.exited(STATUS_LOST)
            return
        if info is not None:
            self.exited(exit_status(info))

    def signal(self, sig: int) -> None:
        if self.done:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            pass


class ForkServer:
    """The hypervisor's end of one fork-server process."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket):
        self.proc = proc
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[int] = self.loop.create_future()
        self.gone = ""                      # why it is gone, once it is
        self.mergeable = False              # its domains' memory is offered to KSM
        self.children: dict[int, Child] = {}
        self._requests = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Child]] = {}
        self._adopting: asyncio.Task | None = None
        self._closing = False
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def start(cls, python: str, log_level: str, timeout: float = READY_TIMEOUT,
                    page_sharing: bool = False) -> "ForkServer":
        """``page_sharing``: the fork server offers its memory and its
        domains' to the kernel's samepage merging (xenlab.hypervisor.page_sharing)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = ["--page-sharing"] if page_sharing else []
        try:
            proc = await asyncio.create_subprocess_exec(
                python, "-m", "xenlab.boot.zygote", "--control-fd", str(theirs.fileno()),
                "--log-level", log_level, *args, stdin=asyncio.subprocess.DEVNULL,
                pass_fds=[theirs.fileno()], start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        server = cls(proc, ours)
        try:
            await eventloop.wait_for(asyncio.shield(server.ready), timeout)
        except BaseException:
            await server.close()
            raise
        if page_sharing and not server.mergeable:
            log.info("fork server %d: the kernel refused PR_SET_MEMORY_MERGE (Linux 6.4 or "
                     "later with KSM shares a domain's pages): no page sharing", proc.pid)
        log.info("fork server %d is ready%s", proc.pid,
                 "; its domains' memory is mergeable (KSM)" if server.mergeable else "")
        return server

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def launch(self, fds: list[int], log_level: str) -> Child:
        if self.gone:
            raise ForkServerGone(self.gone)
        req = next(self._requests)
        future = self._pending[req] = self.loop.create_future()
        message = encode("launch", req=req, fds=list(LAUNCH_FDS), log_level=log_level)
        try:
            await self._send(message, fds)
            return await eventloop.wait_for(future, LAUNCH_TIMEOUT)
        except asyncio.TimeoutError:
            raise XenError(errno.ETIMEDOUT, f"the fork server ({self.pid}) did not fork "
                                            f"within {LAUNCH_TIMEOUT:g}s") from None
        finally:
            self._pending.pop(req, None)

    async def _send(self, message: bytes, fds: list[int]) -> None:
        fileno = self.sock.fileno()
        while True:
            if self.gone:
                raise ForkServerGone(self.gone)
            try:
                socket.send_fds(self.sock, [message], fds)
                return
            except BlockingIOError:
                writable = self.loop.create_future()
                self.loop.add_writer(fileno, writable.set_result, None)
                try:
                    await eventloop.wait_for(writable, LAUNCH_TIMEOUT)
                except asyncio.TimeoutError:
                    raise XenError(errno.ETIMEDOUT, f"the fork server ({self.pid}) read no "
                                                    f"launch for {LAUNCH_TIMEOUT:g}s") from None
                finally:
                    self.loop.remove_writer(fileno)
            except OSError as err:
                self._lost(f"control socket: {err.strerror}")
                raise ForkServerGone(self.gone) from None

    def _readable(self) -> None:
        while not self.gone:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self._lost(f"control socket: {err.strerror}")
                return
            if not data:
                self._lost("its control socket closed")
                return
            try:
                self._handle(decode(data), fds)
            except ProtocolError as err:
                log.error("fork server %d: %s", self.pid, err)
                for fd in fds:
                    os.close(fd)

    def _handle(self, msg: dict, fds: list[int]) -> None:
        op = msg["op"]
        if op == "started":
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                msg = {"op": "failed", "req": msg["req"],
                       "error": f"process {msg['pid']} started with {len(fds)} pidfds"}
                op = "failed"
            else:
                child = self.children[msg["pid"]] = Child(msg["pid"], fds[0])
                future = self._pending.get(msg["req"])
                if future is not None and not future.done():
                    future.set_result(child)
                else:           # its launch was abandoned (cancelled): no domain runs it
                    child.signal(signal.SIGKILL)
                return
        for fd in fds:
            os.close(fd)
        if op == "ready":
            if not self.ready.done():
                self.mergeable = msg["mergeable"]
                self.ready.set_result(msg["pid"])
        elif op == "failed":
            future = self._pending.get(msg["req"])
            if future is not None and not future.done():
                future.set_exception(XenError(errno.EAGAIN, f"the fork server could not "
                                                            f"fork: {msg['error']}"))
        elif op == "exit":
            child = self.children.pop(msg["pid"], None)
            if child is not None:
                child.exited(msg["status"])
        else:
            log.error("fork server %d: unexpected %s", self.pid, op)

    def _lost(self, why: str) -> None:
        """No more messages: fail what waits for one, and wait for its
        children ourselves once it has gone (they are ours then)."""
        if self.gone:
            return
        self.gone = why
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for future in [self.ready, *self._pending.values()]:
            if not future.done():
                future.set_exception(ForkServerGone(why))
        self.ready.exception()          # retrieved: a server that died before ready is logged below
        self._adopting = self.loop.create_task(self._adopt())

    async def _adopt(self) -> None:
        # Once the fork server is reaped, the kernel has reparented its
        # children to us (the subreaper), and waitid on a pidfd works.
        status = await self.proc.wait()
        alive = [c for c in self.children.values() if not c.done]
        if alive or not self._closing:
            log.warning("fork server %d exited with %s (%s); %d domain(s) it forked are the "
                        "hypervisor's children now", self.pid, status, self.gone, len(alive))
        for child in alive:
            child.adopt()

    async def close(self) -> None:
        """End the fork server (its control socket closes: it exits)."""
        self._closing = True
        self._lost("closed by the hypervisor")
        try:
            await eventloop.wait_for(self.proc.wait(), 10)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class ForkedProcess(HostProcess):
    """A domain forked by the fork server."""

    def __init__(self, child: Child, agent: str = "", cleanup=lambda: None,
                 cgroup=None, no_cgroup: str = ""):
        super().__init__(child.pid, agent, cleanup, cgroup, no_cgroup)
        self.child = child

    async def wait(self) -> int:
        status = await asyncio.shield(self.child.status)
        self._cleanup()
        return status

    def _signal(self, sig: int) -> None:
        self.child.signal(sig)

    async def kill(self) -> None:
        self.child.signal(signal.SIGKILL)
        await asyncio.shield(self.child.status)
        self._cleanup()


class ForkServerLauncher(LocalLauncher):
    """LocalLauncher's domains, forked from a fork server instead of each
    started as a fresh interpreter: the same uids, directories, cgroups,
    console logs and signals."""

    def __init__(self, python: str = sys.executable, log_level: str = "INFO",
                 page_sharing: bool = False, **kwargs):
        super().__init__(python=python, log_level=log_level, **kwargs)
        self.page_sharing = page_sharing    # domains' memory offered to KSM
        self.server: ForkServer | None = None
        self.broken = ""                # why launches fell back to spawning
        self._starting = asyncio.Lock()
        self._warming: asyncio.Task | None = None

    def warm_up(self) -> None:
        """Start the fork server while Domain-0 boots, rather than on the
        first domU's create (its interpreter imports xenlab: about half a
        second, on the path of every lab's first domain). A failure here is
        the first start()'s to report, which tries again."""
        if self._warming is None and not self.broken:
            self._warming = asyncio.get_running_loop().create_task(self._warm())

    async def _warm(self) -> None:
        try:
            await self.fork_server()
        except (OSError, XenError, asyncio.TimeoutError) as err:
            log.info("the fork server did not start ahead of the first domain (%s)",
                     str(err) or type(err).__name__)

    async def fork_server(self) -> ForkServer:
        async with self._starting:
            if self.server is None or self.server.gone:
                if not become_subreaper():
                    raise XenError(errno.EPERM, "cannot become a child subreaper "
                                                "(PR_SET_CHILD_SUBREAPER)")
                self.server = await ForkServer.start(self.python, self.log_level,
                                                     page_sharing=self.page_sharing)
            return self.server

    async def start(self, info: StartInfo, handles: DomainHandles | None = None) -> DomainProcess:
        if self.broken or handles is None:
            return await super().start(info, handles)
        try:
            server = await self.fork_server()
        except (OSError, XenError, asyncio.TimeoutError) as err:
            self.broken = str(err) or type(err).__name__
            log.warning("the fork server did not start (%s): domains are spawned instead",
                        self.broken)
            return await super().start(info, handles)
        info, _pass_fds, cleanup = self._prepare(info, handles)
        console = start_info = -1
        try:
            console = os.open(info.console_log, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            start_info = _sealed(info.to_json().encode() + b"\n")
            child = await server.launch([handles.memory_fd, handles.doorbell_fd, console,
                                         start_info], self.log_level)
        except BaseException:
            cleanup()
            raise
        finally:
            for fd in (console, start_info):
                if fd >= 0:
                    os.close(fd)
        group, why = self._join_cgroup(info.domid, child.pid)
        log.info("d%d (%s): forked process %d from fork server %d%s", info.domid, info.name,
                 child.pid, server.pid, f" as uid {info.uid}" if info.uid >= 0 else "")
        return ForkedProcess(child, info.agent, cleanup, group, why)

    async def close(self) -> None:
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        if self.server is not None:
            await self.server.close()
        await super().close()


def _sealed(data: bytes) -> int:
    """A memfd holding ``data``, read-only for good (F_SEAL_WRITE and the
    rest), read from its start: the child's standard input."""
    fd = os.memfd_create("xenlab-start-info", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd
