"""The fork server (`python -m xenlab.boot.zygote`): one process per
hypervisor that has imported everything a domain runs, and forks a domain
for each launch on its control socket (xenlab.launchers.forkserver holds
the hypervisor's end and the protocol).

Everything is imported and the garbage collector's view of it frozen
(gc.freeze) before the first fork, so that children share those pages
copy-on-write and never touch them: a collection in the child would write
into every object header it visits. The child does no import and no work
the fork server could have done: it closes every descriptor it was not
handed, takes its start_info from the sealed memfd it was handed (the fork
server never reads it: no secret of one domain sits in the memory the next
one is forked from), and runs the domain kernel as `python -m
xenlab.boot.domu` would (xenlab.boot.domu.boot).

The fork server dies with the hypervisor (its parent-death signal is
SIGKILL). A child's is SIGUSR2: when the fork server dies the child is
told after the kernel has reparented it. Its new parent is the hypervisor
(a child subreaper): it arms SIGKILL against the hypervisor and runs on;
any other parent means the hypervisor is gone too, and it exits.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import selectors
import signal
import socket
import sys
import traceback

# What a domain runs, imported once here, before any fork.
import grpc  # noqa: F401
import grpc.aio  # noqa: F401
from xenlab.boot import domu
from xenlab.launchers import forkserver
from xenlab.osutil import die_with_parent, parent_death_signal, set_comm, set_memory_merge

try:
    import uvloop  # noqa: F401 -- optional: xenlab.eventloop uses it when installed
except ImportError:
    pass
if os.environ.get("XENLAB_CALL_STATS"):     # xenlab.eventloop.CALL_STATS_ENV: each domain counts calls
    import cProfile  # noqa: F401

PARENT_GONE = signal.SIGUSR2
COMM = "xenlab-forksrv"     # ps's name of the fork server; a domain it forks is xenlab-dDOMID
TRACE_IMPORTS_ENV = "XENLAB_FORK_SERVER_TRACE_IMPORTS"   # "1": a child names each late import


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xenlab fork-server", description=__doc__)
    parser.add_argument("--control-fd", type=int, required=True,
                        help="the control socket (SOCK_SEQPACKET) the hypervisor handed over")
    parser.add_argument("--log-level", default="INFO", help="the domains' log level (default INFO)")
    parser.add_argument("--page-sharing", action="store_true",
                        help="offer the fork server's memory and every domain's to the kernel's "
                             "samepage merging (KSM): pages the domains copied and that are "
                             "alike again are shared once ksmd runs")
    args = parser.parse_args(argv)
    die_with_parent()
    set_comm(COMM)
    hypervisor = os.getppid()
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        # A thread (gRPC's, say) would be missing in every child, holding whatever lock it held.
        print(f"xenlab fork-server: {threads} threads after the imports; forking a "
              f"multithreaded process is unsafe", file=sys.stderr)
        return 1
    ctl = socket.socket(fileno=args.control_fd)
    gc.disable()        # collections would dirty the shared pages; each child enables it
    # Inherited by every child (MMF_VM_MERGE_ANY is copied at fork): the
    # zygote's pages a domain wrote and that are alike again in every domain
    # (reference counts gone up and back, the same objects made) are merged.
    mergeable = set_memory_merge(True) if args.page_sharing else False
    return ForkServerLoop(ctl, hypervisor, mergeable).run()


class ForkServerLoop:
    def __init__(self, ctl: socket.socket, hypervisor: int, mergeable: bool = False):
        self.ctl = ctl
        self.mergeable = mergeable
        self.hypervisor = hypervisor
        self.pid = os.getpid()
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.children: set[int] = set()

    def run(self) -> int:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)    # wakes the selector
        self.selector.register(self.ctl, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self._send(forkserver.encode("ready", pid=os.getpid(), mergeable=self.mergeable))
        while True:
            for key, _ in self.selector.select():
                if key.fd == self.wake_r:
                    self._drain_wakeups()
                    self._reap()
                elif not self._serve_one():
                    return 0        # the hypervisor closed the control socket

    def _send(self, data: bytes, fds=()) -> None:
        socket.send_fds(self.ctl, [data], list(fds))

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self._send(forkserver.encode("exit", pid=pid,
                                         status=os.waitstatus_to_exitcode(status)))

    def _serve_one(self) -> bool:
        data, fds, _flags, _addr = socket.recv_fds(self.ctl, forkserver.MAX_MESSAGE,
                                                   forkserver.MAX_FDS)
        if not data:
            return False
        try:
            msg = forkserver.decode(data)
        except forkserver.ProtocolError as err:
            return self._refuse(0, str(err), fds)
        if msg["op"] != "launch":
            return self._refuse(msg.get("req", 0), f"a {msg['op']} message to the fork server", fds)
        if msg["fds"] != list(forkserver.LAUNCH_FDS) or len(fds) != len(msg["fds"]):
            return self._refuse(msg["req"], f"a launch hands over {', '.join(forkserver.LAUNCH_FDS)}; "
                                            f"this one {len(fds)} descriptor(s) named {msg['fds']}", fds)
        self._fork(msg, dict(zip(msg["fds"], fds)))
        return True

    def _refuse(self, req: int, error: str, fds) -> bool:
        for fd in fds:
            os.close(fd)
        self._send(forkserver.encode("failed", req=req, error=error))
        return True

    def _fork(self, msg: dict, fds: dict[str, int]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()             # everything so far: the permanent generation, never scanned
        try:
            pid = os.fork()
        except OSError as err:
            for fd in fds.values():
                os.close(fd)
            self._send(forkserver.encode("failed", req=msg["req"], error=str(err)))
            return
        if pid == 0:
            self._child(msg, fds)          # never returns
        for fd in fds.values():
            os.close(fd)
        self.children.add(pid)
        pidfd = os.pidfd_open(pid)          # not reaped yet, so it is this child's
        try:
            self._send(forkserver.encode("started", req=msg["req"], pid=pid), [pidfd])
        finally:
            os.close(pidfd)

    def _child(self, msg: dict, fds: dict[str, int]):
        status = 1
        try:
            status = self._become_domain(msg, fds)
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)

    def _become_domain(self, msg: dict, fds: dict[str, int]) -> int:
        # Nothing of the fork server's: its selector, wake-up pipe, signal
        # handlers and control socket go; then every descriptor not handed over.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.selector.close()
        self.ctl.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        os.setsid()
        os.dup2(fds.pop("start_info"), 0)
        os.dup2(fds["console"], 1)
        os.dup2(fds.pop("console"), 2)
        _close_all_but({0, 1, 2, *fds.values()})
        for fd in fds.values():
            os.set_inheritable(fd, False)
        watch_parents(self.pid, self.hypervisor)
        gc.enable()
        domu.configure_logging(msg["log_level"])
        if os.environ.get(TRACE_IMPORTS_ENV) == "1":
            sys.addaudithook(_late_import)
        start = domu.read_start_info(sys.stdin.readline())
        null = os.open(os.devnull, os.O_RDONLY)     # read: the memfd goes, as a launcher's pipe
        os.dup2(null, 0)
        os.close(null)
        if isinstance(start, int):
            return start
        set_comm(f"xenlab-d{start.domid}")
        # Its descriptors' numbers here, not the hypervisor's.
        start = dataclasses.replace(start, memory_fd=fds["memory"], doorbell_fd=fds["doorbell"])
        return domu.boot(start, lambda: watch_parents(self.pid, self.hypervisor))


def _close_all_but(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep) + [os.sysconf("SC_OPEN_MAX")]:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1


def watch_parents(fork_server: int, hypervisor: int) -> None:
    """A domain forked here dies with the hypervisor, and outlives the fork
    server: SIGUSR2 when its parent dies (sent once the kernel has
    reparented it), then SIGKILL when the hypervisor, its new parent, dies."""
    def parent_gone(_signum=None, _frame=None) -> None:
        if os.getppid() != hypervisor:
            os._exit(1)         # the hypervisor is gone as well
        die_with_parent()       # SIGKILL with the hypervisor now (exits if it already went)
    signal.signal(PARENT_GONE, parent_gone)
    parent_death_signal(PARENT_GONE)
    if os.getppid() != fork_server:     # reparented before the signal was armed
        parent_gone()


def _late_import(event: str, args) -> None:
    """XENLAB_FORK_SERVER_TRACE_IMPORTS=1: say what a child imports that the
    fork server did not (tests check that nothing is)."""
    if event == "import" and args[0] not in sys.modules:
        print(f"xenlab fork-server: late import after the fork: {args[0]}", file=sys.stderr,
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
