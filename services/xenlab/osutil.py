"""Small process helpers shared by the service entry points."""
from __future__ import annotations

import ctypes
import os
import random
import resource
import socket
import signal
import asyncio

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MEMORY_MERGE = 67
GRPC_FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT"


def exec_only_forks(environ=os.environ) -> None:
    """xenlab's processes fork only to exec (asyncio subprocesses: the
    hypervisor's domains, the lab's services). gRPC's fork handlers restart
    its threads in the child, where they can deadlock before the exec
    (grpc/grpc#37259): a hypervisor froze in Popen after some hundred domain
    launches. gRPC's fork_support.md says to turn them off for fork+exec,
    which this does unless the environment already chose. Call it before
    grpc is imported. The fork server (xenlab.boot.zygote) forks without
    exec, but it only imports grpc and makes no channel or server: it has
    no gRPC thread or state for the handlers to restart."""
    environ.setdefault(GRPC_FORK_SUPPORT, "false")


def parent_death_signal(signum: int) -> bool:
    """prctl(PR_SET_PDEATHSIG): ``signum`` when the parent exits (sent once
    the kernel has reparented this process). False where it cannot be set."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits, so a
    service started by `xenlab up` (or a domain started by the hypervisor)
    never outlives what started it."""
    parent = os.getppid()
    if not parent_death_signal(signal.SIGKILL):
        return
    if os.getppid() != parent:     # the parent is already gone
        os._exit(1)


def set_comm(name: str) -> None:
    """The process's name as ps and /proc/PID/comm show it (PR_SET_NAME: 15
    bytes at most): its command line, which a forked process shares with
    what forked it, cannot tell them apart."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: descendants orphaned below this process (a
    domain whose fork server died) become its children, not init's, so it
    can still wait for them. False where the kernel refuses."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def set_memory_merge(on: bool = True) -> bool:
    """prctl(PR_SET_MEMORY_MERGE): offer every anonymous page of this
    process, and of every process it forks from now on, to the kernel's
    samepage merging (KSM; Linux 6.4+), which shares identical pages
    copy-on-write once ksmd runs. False where the kernel refuses (older
    kernels, or no KSM: EINVAL)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MEMORY_MERGE, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def drop_privileges(uid: int, gid: int, groups: tuple[int, ...] = ()) -> None:
    """Become ``uid``:``gid`` (with exactly the supplementary ``groups``) for
    good: real, effective and saved ids all change, so no way back to root
    is left, and no_new_privs stops a setuid binary from giving one. Call it
    after everything that needs the launcher's rights (imports, mapping the
    memory object) and before the first byte of untrusted input. Raises
    PermissionError if the process may not change ids, or if root could be
    regained afterwards."""
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PermissionError(f"could not become {uid}:{gid}")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PermissionError(f"dropped to uid {uid}, yet could become root again")


SCHED_ENV = "XENLAB_SCHED"      # "normal": leave the scheduling policy alone


def batch_scheduling(environ=os.environ) -> bool:
    """Run this process (and the threads it starts from now on) as
    SCHED_BATCH, unless XENLAB_SCHED=normal. Every frame and notification
    is a datagram that wakes another of the lab's processes; under the
    default policy the woken one preempts the sender in the middle of its
    batch, on the sender's CPU. SCHED_BATCH keeps the priority and only
    stops wake-ups from preempting, so a process finishes what it was doing
    before the next one runs. Measured side by side (BENCHMARKS.md): ping
    p50 -25 %, and 512- and 1500-byte throughput up with no receive drops.
    Needs no privilege; False where it cannot be set."""
    if environ.get(SCHED_ENV, "batch").strip().lower() == "normal":
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True


def raise_fd_limit() -> None:
    """Lift the soft descriptor limit to the hard one: a service holds a few
    descriptors per domain or port (segments, sockets, streams)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class StopSignal:
    """Which stop signal (SIGINT or SIGTERM) arrived first, if one has."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def exit_status(self) -> int:
        """What a shell reports for a command a signal ended: 128 + its
        number (130 for Ctrl-C, 143 for SIGTERM). Every command that stops
        early on one exits with it."""
        return 128 + self.signum if self.signum else 0


def on_stop_signal(callback, *args) -> StopSignal:
    """Call ``callback(*args)`` on the running loop each time SIGINT or
    SIGTERM arrives; the result says which came first."""
    loop = asyncio.get_running_loop()
    received = StopSignal()

    def arrived(signum: int) -> None:
        if received.signum is None:
            received.signum = signum
        callback(*args)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, arrived, sig)
    return received


class Interrupted(Exception):
    """A stop signal cancelled the work; exit with ``exit_status``."""

    def __init__(self, received: StopSignal):
        super().__init__(signal.Signals(received.signum).name)
        self.exit_status = received.exit_status


async def cancelled_by_stop_signal(coro):
    """Await `coro`; SIGINT or SIGTERM cancels it (its cleanup runs: a lab
    still goes down), and then Interrupted is raised."""
    task = asyncio.current_task()
    received = on_stop_signal(task.cancel)
    try:
        return await coro
    except asyncio.CancelledError:
        if received.signum is None:
            raise
        raise Interrupted(received) from None


async def wait_for_stop_signal() -> None:
    """Return when SIGINT or SIGTERM arrives: how every service's
    foreground loop ends before its graceful shutdown."""
    stop = asyncio.Event()
    on_stop_signal(stop.set)
    await stop.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody is bound to now, for a service to listen on.

    Taken at random below the kernel's ephemeral range, never inside it: a
    port from there may be handed to any connect() as its source port before
    the service binds it, and a readiness probe can itself be that connect:
    a connect to a port in the range, with nothing listening, can be given
    that same port as its source and connect to itself (TCP simultaneous
    open), then hold the port so that the service cannot bind it (seen in
    CI: a lab's probe read its own MQTT CONNECT, and its broker then found
    the address in use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = _ephemeral_low()
    below = range(_FIXED_PORTS_FROM, max(low, _FIXED_PORTS_FROM))
    for port in random.sample(below, min(256, len(below))):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(family, socket.SOCK_STREAM) as s:   # a range set oddly low
        s.bind((host, 0))
        return s.getsockname()[1]


# Below 10000 live the well-known and registered ports services are
# configured on by hand; above it up to the ephemeral range, few.
_FIXED_PORTS_FROM = 10000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768   # Linux's default
