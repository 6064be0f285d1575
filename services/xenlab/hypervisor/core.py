"""The hypervisor: one object that owns every core (memory, grants, event
channels, xenstore, identity, the doorbell) and the domain table, and
carries out what a domain's life asks of them.

The cores are pure; this module is where their actions meet processes,
shared memory and the doorbell. The toolstack (xenlab.toolstack) drives it
through a narrow interface, as libxl drives Xen through its domctls:
``domains.allocate`` makes a domain, ``populate`` gives it memory and
credentials, ``launch`` starts it and ``run`` lets it go; ``halt`` and
``destroy`` undo it. A domain that shuts down is left shut down with its
reason recorded (``domain_shutdown``), as Xen leaves it: VIRQ_DOM_EXC is
raised to Domain-0 and xenstored fires @releaseDomain, and whoever watches
that (the toolstack, as xl's per-domain monitor) decides what happens next.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import platform
import socket
import time
from pathlib import Path

from xenlab import eventloop
from xenlab.hypervisor.config import HypervisorConfig
from xenlab.hypervisor.doorbell import UpcallRouter
from xenlab.hypervisor.domains import MAX_PAUSE_COUNT, Domain, DomainTable, RunState
from xenlab.hypervisor.evtchn import EventChannels
from xenlab.hypervisor.grants import PRIVILEGED_MAX_MAPTRACK, GrantTables
from xenlab.hypervisor.caller import DOM0, Caller
from xenlab.hypervisor.conring import ConsoleRing
from xenlab.hypervisor.identity import Identity
from xenlab.hypervisor.memory import MachineMemory
from xenlab.hypervisor.page_sharing import PageSharing
from xenlab.hypervisor.paging import Paging
from xenlab.hypervisor.scheduler import Scheduler
from xenlab.hypervisor.watchdog import Watchdogs
from xenlab.hypervisor.xenstore import XenStore
from xenlab.hypervisor.xenstore_server import XenStoreConnection, XenStoreConnections
from xenlab.hypervisor.xenconsoled import Consoles
from xenlab.hypervisor.xenstored import Xenstored
from xenlab.hypervisor.xenstored_ring import StoreRings
from xenlab.hypervisor.xenstored_socket import XenstoredSocket
from xenlab.launchers import make_launcher
from xenlab.launchers.base import DomainHandles, DomainProcess, Launcher
from xenlab.launchers.domains_dir import DomainsDir
from xenlab.launchers.local import ForeignProcess
from xenlab.rundir import Rundir
from xenlab.xen import abi
from xenlab.xen.digits import is_decimal
from xenlab.xen.errors import DomainError, XenError
from xenlab.xen.shared_info import SharedInfo
from xenlab.xen.start_info import StartInfo

log = logging.getLogger(__name__)

PAGES_PER_MB = (1 << 20) // abi.PAGE_SIZE
XEN_VERSION = "4.19-xenlab"


class Hypervisor:
    def __init__(self, config: HypervisorConfig, launcher: Launcher | None = None):
        self.config = config
        self.rundir = Rundir(Path(config.rundir))
        self.started = time.monotonic()
        self.identity = Identity()
        self.domains = DomainTable(config.max_domains)
        prefix = f"xenlab-{os.getpid()}-{id(self) & 0xffff:04x}-"
        self.memory = MachineMemory(Path(config.shm_dir), prefix,
                                    config.total_memory_mb * PAGES_PER_MB)
        self.grants = GrantTables(self.memory)
        self.paging = Paging(self.memory)
        # Every message the hypervisor handles, by operation: gRPC calls
        # ("Service/Method", counted by the server's admission), doorbell
        # datagrams ("doorbell/SEND") and xenstored requests on the rings
        # and the socket ("xenstored/READ"). In steady traffic between
        # domains it should not move: the data plane is theirs.
        self.ops: collections.Counter[str] = collections.Counter()
        self.doorbell = UpcallRouter(ops=self.ops,authenticate=self._doorbell_auth, on_send=self._doorbell_send,
                                     on_copy=self.grants.copy_gnttab,
                                     on_memory=self._doorbell_memory,
                                     on_paging=self._doorbell_paging)
        self.evtchn = EventChannels(kick=self.doorbell.kick, links=self.doorbell,
                                    default_max_ports=config.evtchn_max_ports)
        self.xs_connections = XenStoreConnections(quotas=config.xenstore_quotas)
        self.xenstore = XenStore(fire=self._fire_watch, quotas=config.xenstore_quotas)
        self.xenstored = Xenstored(self.xenstore, self.domain_exists, ops=self.ops)
        self.xenstored_socket = XenstoredSocket(self.xenstored, self.rundir.xenstored_socket)
        self.store_rings = StoreRings(self.xenstored, self.memory, self.evtchn, self.is_privileged)
        self.consoles = Consoles(self.xenstore, self.memory, self.evtchn, self._open_console_log)
        self.domains_dir = DomainsDir(self.rundir.path, config.domain_uids, config.domains_dir)
        self.page_sharing = PageSharing(config.page_sharing)
        self.launcher = launcher or self._make_launcher(config.launcher)
        self.launchers: dict[str, Launcher] = {self.launcher.name: self.launcher}
        self._procs: dict[int, DomainProcess] = {}
        self._reapers: dict[int, asyncio.Task] = {}
        self._shared_info: dict[int, SharedInfo] = {}
        # Domains suspended in SCHEDOP_shutdown(suspend): the call's answer.
        self._suspended: dict[int, asyncio.Future] = {}
        self.watchdogs = Watchdogs()
        self._watchdog_timers: dict[tuple[int, int], asyncio.TimerHandle] = {}
        self._state_changed = asyncio.Event()
        # Called (no arguments) after every domain state change: created,
        # paused, unpaused, shut down, dying, destroyed (xenlab.events).
        self.observers: list = []       # called with a domain whose state changed
        self.dom0_secret = ""
        # The host's scheduler over the domains' threads (xl vcpu-*, sched-credit, cpupool-*).
        self.sched = Scheduler(self.sched_process)
        # What the hypervisor says about domains, for xl dmesg.
        self.conring = ConsoleRing()
        self.conring.attach()

    # -- start and stop ------------------------------------------------------
    async def start(self) -> None:
        self.page_sharing.start()
        self._reap_stale_segments()
        self.rundir.create()
        # Before the first segment: what a SIGKILL leaves can then be found.
        self.rundir.record_hypervisor((self.memory.shm_dir / self.memory.prefix).absolute(),
                                      self.domains_dir.path if self.domains_dir.isolated else None)
        dom0 = self.domains.add_dom0(self.config.dom0_memory_mb * PAGES_PER_MB,
                                     self.config.dom0_vcpus)
        self._add_to_cores(dom0, dom0.max_pages)
        self.sched.started(dom0)
        self.dom0_secret = self.identity.issue(0, privileged=True)
        await self.doorbell.start(str(self.rundir.doorbell))
        if self.domains_dir.isolated:
            # Domains that cannot be handed a connection (containers) ring
            # here: their group's socket, outside the rundir.
            await self.doorbell.start(str(self.domains_dir.doorbell), group=self.domains_dir.uids.group)
        await self.xenstored_socket.start()

    def _reap_stale_segments(self) -> None:
        """Memory segments of hypervisors that died without cleaning up
        (SIGKILL) would stay in tmpfs forever: their names carry the owner's
        pid, so remove those whose owner is gone."""
        for path in Path(self.config.shm_dir).glob("xenlab-*-*"):
            pid = path.name.split("-")[1]
            if is_decimal(pid) and not Path(f"/proc/{pid}").exists():
                try:
                    path.unlink()
                    log.info("removed %s, left by a hypervisor that is gone", path)
                except OSError:
                    pass

    def publish(self, address: str) -> None:
        """Leave the address and dom0's secret where the toolstack finds them."""
        self.rundir.publish_hypervisor(address, self.dom0_secret)

    async def close(self) -> None:
        try:
            await self._close()
        finally:
            await self.page_sharing.close()     # the host's ksmd settings back, whatever failed

    async def _close(self) -> None:
        # What the toolstack has not destroyed (it destroys every domain it
        # made when it closes) goes with the hypervisor.
        for dom in list(self.domains):
            if dom.domid != 0 and dom.state is not RunState.DYING:
                await self.halt(dom)
                self.destroy(dom)
        await self.doorbell.close()
        await self.xenstored_socket.close()
        self._remove_from_cores(0)
        for launcher in self.launchers.values():
            await launcher.close()
        self.domains_dir.close()
        self.rundir.withdraw_hypervisor()
        self.conring.detach()

    # -- helpers for servicers -------------------------------------------------
    def domain_exists(self, domid: int) -> bool:
        return domid in self.domains

    def is_privileged(self, domid: int) -> bool:
        return domid in self.domains and self.domains.get(domid).privileged

    def process(self, domid: int) -> DomainProcess | None:
        return self._procs.get(domid)

    def sched_process(self, domid: int) -> DomainProcess | None:
        """The process whose threads are the domain's vCPUs: the launcher's,
        or (a kernel started outside the hypervisor, Domain-0's) the one on
        the other end of its doorbell."""
        proc = self._procs.get(domid)
        if proc is None and domid in self.domains:
            pid = self.doorbell.peer_pid(domid)
            if pid and pid != os.getpid():
                return ForeignProcess(pid)
        return proc

    def _fire_watch(self, conn, path: str, token: str) -> None:
        """The XenStore core's watch events, to whichever kind of connection
        set the watch: a gRPC WatchStream, or one that takes them itself (a
        xenstored wire connection, the toolstack's own watches)."""
        if isinstance(conn, XenStoreConnection):
            self.xs_connections.fire(conn, path, token)
        else:
            conn.fire(path, token)

    def _doorbell_auth(self, domid: int, secret: str) -> Caller:
        return self.identity.check(str(domid), secret)

    def _doorbell_memory(self, caller: Caller) -> int:
        """A domain's own memory object, to the domain HELLO authenticated,
        and once: a launcher that hands it over at start has used that once
        (launch). A domain that could ask again would get a descriptor to
        resize the segment through, faulting the hypervisor and Domain-0
        with SIGBUS; after boot it holds the mapping only."""
        dom = self.domains.get(caller.domid)
        if dom.memory_handed:
            raise DomainError(errno.EPERM, f"d{dom.domid} has been handed its memory already: "
                                           f"a domain takes it once, at boot")
        if dom.state is RunState.DYING:
            raise DomainError(errno.ESRCH, f"d{dom.domid} is dying")
        fd = self.memory.segment_fd(dom.domid)
        dom.memory_handed = True
        return fd

    def _doorbell_paging(self, caller: Caller) -> int:
        """A domain's paging pool object, read-only (its MMU walks the
        shadows or nested P2M there): as often as it asks, since a read-only
        descriptor can neither write the tables nor resize the object."""
        if self.domains.get(caller.domid).state is RunState.DYING:
            raise DomainError(errno.ESRCH, f"d{caller.domid} is dying")
        return self.paging.read_only_fd(caller.domid)

    def _doorbell_send(self, domid: int, port: int) -> None:
        try:
            self.evtchn.send(domid, port)
        except XenError as err:
            log.debug("d%d: doorbell send on port %d refused: %s", domid, port, err)

    # -- making a domain (the domctls the toolstack drives) -------------------------
    def launcher_for(self, name: str) -> Launcher:
        if not name:
            return self.launcher
        if name not in self.launchers:
            try:
                self.launchers[name] = self._make_launcher(name)
            except ValueError as err:
                raise DomainError(errno.EINVAL, str(err)) from None
        return self.launchers[name]

    def _make_launcher(self, name: str) -> Launcher:
        return make_launcher(name, self.config.log_level, self.config.docker, self.domains_dir,
                             private=(self.rundir.path, Path(self.config.shm_dir)),
                             page_sharing=self.page_sharing.offered)

    def populate(self, dom: Domain, initial_pages: int) -> str:
        """A domain allocated in the table gets its memory (``initial_pages``
        of its maximum), its shared_info, event channels and grant table,
        and the secret it acts with."""
        self._add_to_cores(dom, initial_pages)
        return self.identity.issue(dom.domid)

    async def launch(self, dom: Domain, launcher: Launcher, secret: str, agent_token: str,
                     cmdline: str = "", resume_gfn: int = -1) -> str:
        """Start the domain's process (none with launcher none) and watch for
        its end; where its guest agent listens, as the launcher decided.
        ``cmdline`` is the kernel command line its start_info carries;
        ``resume_gfn`` (a restore) where its kernel's suspend record is."""
        proc = await self._start_process(launcher, dom, secret, agent_token, cmdline, resume_gfn)
        if proc is None:
            self.sched.started(dom)
            return self._agent_without_process(dom.domid)
        self._procs[dom.domid] = proc
        self._reapers[dom.domid] = asyncio.create_task(self._reap(dom, proc))
        self.sched.started(dom)
        return proc.agent

    def run(self, dom: Domain, paused: bool = False) -> None:
        """The toolstack is done with a new domain: leave it running, or
        paused (xl create -p: Xen creates every domain with a pause count of
        one, and the toolstack's first unpause starts it)."""
        if paused:
            proc = self._procs.get(dom.domid)
            if proc is not None:
                proc.pause()
            dom.state = RunState.PAUSED
            dom.pause_count = 1
        self._changed(dom)

    async def _start_process(self, launcher: Launcher, dom: Domain, secret: str,
                             token: str, cmdline: str = "",
                             resume_gfn: int = -1) -> DomainProcess | None:
        """Start the domain's process, handing it its memory object and a
        doorbell connection already made for it where the launcher can pass
        descriptors: it is told no path into the rundir or /dev/shm."""
        info = self._start_info(dom, secret, token, launcher, cmdline, resume_gfn)
        self.page_sharing.domain_started()
        if not launcher.takes_handles:
            # It asks for its memory in its doorbell HELLO (_doorbell_memory).
            return await launcher.start(info)
        dom.memory_handed = True
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.doorbell.adopt(ours, dom.domid)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        try:
            return await launcher.start(info, DomainHandles(
                memory_fd=self.memory.segment_fd(dom.domid), doorbell_fd=theirs.fileno()))
        finally:
            theirs.close()

    def _start_info(self, dom: Domain, secret: str, agent_token: str = "",
                    launcher: Launcher | None = None, cmdline: str = "",
                    resume_gfn: int = -1) -> StartInfo:
        """Under domain uids a domain is told no path into the rundir: it is
        handed its doorbell, or (a launcher that cannot hand descriptors
        over) told the domains' doorbell."""
        # Made here (0600, never through a symlink); the launcher appends to it.
        console = self.rundir.create_log(self.console_log(dom).name)
        if not self.domains_dir.isolated:
            doorbell = str(self.rundir.doorbell)
        elif launcher is not None and launcher.takes_handles:
            doorbell = ""
        else:
            doorbell = str(self.domains_dir.doorbell)
        store = self.xenstored.domains.get(dom.domid)
        ring = self.consoles.get(dom.domid)
        return StartInfo(domid=dom.domid, name=dom.name, secret=secret,
                         hypervisor=self.domains_dir.hypervisor_address or self.address,
                         doorbell=doorbell, vcpus=dom.vcpus, console_log=str(console),
                         agent_token=agent_token, store_gfn=store.gfn if store else 0,
                         store_port=store.port if store else 0, cmd_line=cmdline,
                         console_gfn=ring.gfn if ring else 0,
                         console_port=ring.port if ring else 0,
                         resume_gfn=resume_gfn, paging_mode=dom.paging_mode.value)

    def _agent_without_process(self, domid: int) -> str:
        """A domain with no launcher process (launcher none) is run by the
        toolstack itself: it gets a directory and an agent address all the
        same, returned with its credentials."""
        self.domains_dir.domain_dir(domid)
        return self.domains_dir.agent_address(domid)

    def console_log(self, dom: Domain) -> Path:
        return self.rundir.logs / f"d{dom.domid}-{dom.name}.console"

    def _open_console_log(self, domid: int) -> int:
        return self.rundir.open_log(self.console_log(self.domains.get(domid)).name)

    address = ""   # set by the server once it listens

    def _add_to_cores(self, dom: Domain, initial_pages: int) -> None:
        self.memory.add_domain(dom.domid, dom.max_pages, initial_pages)
        self.paging.add_domain(dom.domid, dom.paging_mode, dom.paging_pool_pages)
        buf, offset = self.memory.shared_info_buffer(dom.domid)
        shared = SharedInfo(buf, offset, dom.vcpus)
        self._shared_info[dom.domid] = shared
        self.evtchn.add_domain(dom.domid, shared, dom.vcpus)
        self.grants.add_domain(dom.domid, self.config.grant_frames,
                               PRIVILEGED_MAX_MAPTRACK if dom.privileged else None)

    def _remove_from_cores(self, domid: int) -> None:
        self._stop_watchdogs(domid)
        for step in (self.evtchn.remove_domain, self.grants.remove_domain):
            try:
                step(domid)
            except XenError:
                pass
        shared = self._shared_info.pop(domid, None)
        if shared is not None:
            shared.release()
        self.paging.remove_domain(domid)
        try:
            self.memory.remove_domain(domid)
        except XenError:
            pass

    # -- destroy -------------------------------------------------------------------
    async def _kill_process(self, dom: Domain) -> None:
        """Kill and reap the domain's process, if it has one, and stop
        waiting for it (unless the waiter is the caller)."""
        proc = self._procs.pop(dom.domid, None)
        reaper = self._reapers.pop(dom.domid, None)
        if reaper is not None and reaper is not asyncio.current_task():
            reaper.cancel()
        if proc is not None:
            await proc.kill()

    async def halt(self, dom: Domain) -> None:
        """The first step of destroying a domain: it is dying (its id stays
        taken) and its process is killed and reaped."""
        dom.state = RunState.DYING
        self._changed(dom)
        await self._kill_process(dom)
        self._end_suspend(dom.domid, 0)

    # -- suspend and resume (xl save) ----------------------------------------------------
    async def sched_suspend(self, domid: int, record_gfn: int) -> int:
        """SCHEDOP_shutdown(SHUTDOWN_suspend): the domain shuts down with
        reason suspend, its vCPUs stop (its process is stopped, not killed:
        the toolstack saves it, then destroys or resumes it), Domain-0 hears
        of it as of any shutdown. ``record_gfn`` is kept for the toolstack
        (a PV guest passes its start_info's gfn). Returns when the domain is
        resumed in place: 1, SCHEDOP_shutdown's return to a guest whose
        suspend was cancelled."""
        if domid == 0:
            raise DomainError(errno.EPERM, "Domain-0 cannot suspend")
        dom = self.domains.get(domid)
        if dom.state is not RunState.RUNNING:
            raise DomainError(errno.EINVAL, f"d{domid} is {dom.state.value}: cannot suspend")
        if not 0 <= record_gfn < dom.max_pages or not self.memory.is_populated(domid, record_gfn):
            raise DomainError(errno.EINVAL, f"d{domid}: suspend record gfn {record_gfn} is not "
                                            f"a populated frame of its own")
        answer = asyncio.get_running_loop().create_future()
        self._suspended[domid] = answer
        dom.suspend_gfn = record_gfn
        dom.shutdown_reason = "suspend"
        dom.state = RunState.SHUTDOWN
        proc = self._procs.get(domid)
        if proc is not None:
            proc.pause()
        log.info("d%d (%s) suspended (record at gfn %d)", domid, dom.name, record_gfn)
        self._changed(dom)
        self.evtchn.raise_virq(0, abi.VIRQ_DOM_EXC)
        self.xenstored.domain_shutdown(domid)
        return await answer

    def is_suspended(self, dom: Domain) -> bool:
        return (self._suspended.get(dom.domid) is not None and dom.state is RunState.SHUTDOWN
                and dom.shutdown_reason == "suspend")

    def resume(self, dom: Domain, paused: bool = False) -> None:
        """xc_domain_resume (the fast way, a cancelled suspend): the domain
        runs again in place, or stays paused with a pause count of one."""
        if not self.is_suspended(dom):
            raise DomainError(errno.EINVAL, f"d{dom.domid} is not suspended")
        dom.shutdown_reason = ""
        dom.suspend_gfn = -1
        if paused:
            dom.state, dom.pause_count = RunState.PAUSED, 1
        else:
            dom.state = RunState.RUNNING
            proc = self._procs.get(dom.domid)
            if proc is not None:
                proc.unpause()
        self._end_suspend(dom.domid, 1)
        log.info("d%d (%s) resumed%s", dom.domid, dom.name, " paused" if paused else "")
        self._changed(dom)

    def _end_suspend(self, domid: int, cancelled: int) -> None:
        # 0 to a domain being destroyed: its process is gone, no one reads it.
        answer = self._suspended.pop(domid, None)
        if answer is not None and not answer.done():
            answer.set_result(cancelled)

    def destroy(self, dom: Domain) -> None:
        """XEN_DOMCTL_destroydomain, once halted: its directory, doorbell and
        xenstore connections, credentials and cores go, xenstored releases
        it, and its id is free again."""
        self.domains_dir.remove_domain_dir(dom.domid)
        self.doorbell.disconnect(dom.domid)
        self.xs_connections.disconnect(dom.domid)
        self.identity.revoke(dom.domid)
        self.consoles.disconnect(dom.domid)
        self._remove_from_cores(dom.domid)
        self.xenstored.release(dom.domid)
        self.domains.remove(dom.domid)
        self.sched.forget(dom.domid)
        log.info("destroyed d%d (%s)", dom.domid, dom.name)
        self._changed(dom)

    # -- pause / shutdown ------------------------------------------------------------
    def pause(self, domid: int) -> None:
        """domain_pause_by_systemcontroller: pauses nest, up to 255."""
        dom = self.running_domu(domid, "pause")
        if dom.pause_count >= MAX_PAUSE_COUNT:
            raise DomainError(errno.EOVERFLOW, f"d{domid} is paused {dom.pause_count} times "
                                               f"already, the most Xen counts")
        dom.pause_count += 1
        if dom.state is RunState.PAUSED:
            return
        proc = self._procs.get(domid)
        if proc is not None:
            proc.pause()
        dom.state = RunState.PAUSED
        self._changed(dom)

    def unpause(self, domid: int) -> None:
        """domain_unpause_by_systemcontroller: it runs again once every
        pause has been undone; unpausing a domain not paused is EINVAL."""
        dom = self.running_domu(domid, "unpause")
        if dom.pause_count == 0:
            raise DomainError(errno.EINVAL, f"d{domid} is not paused")
        dom.pause_count -= 1
        if dom.pause_count or dom.state is not RunState.PAUSED:
            return
        proc = self._procs.get(domid)
        if proc is not None:
            proc.unpause()
        dom.state = RunState.RUNNING
        self._changed(dom)

    def running_domu(self, domid: int, what: str) -> Domain:
        dom = self.domains.get(domid)
        if domid == 0:
            raise DomainError(errno.EPERM, f"cannot {what} Domain-0")
        if dom.state not in (RunState.RUNNING, RunState.PAUSED):
            raise DomainError(errno.EINVAL, f"cannot {what} d{domid}: it is {dom.state.value}")
        return dom

    async def crash(self, dom: Domain) -> None:
        """domain_crash: it stops now, shut down with SHUTDOWN_crash."""
        await self.domain_shutdown(dom, "crash")

    async def remote_shutdown(self, dom: Domain, reason: str) -> None:
        """SCHEDOP_remote_shutdown: shut a domain down from outside."""
        if reason not in abi.SHUTDOWN_REASONS:
            raise DomainError(errno.EINVAL, f"unknown shutdown reason {reason!r}")
        await self.domain_shutdown(dom, reason)

    async def domain_shutdown(self, dom: Domain, reason: str) -> None:
        """Xen's domain_shutdown: the domain stops running (its process is
        killed, as Xen deschedules its vCPUs for good) and stays in the table,
        shut down with its reason, until someone destroys it. Domain-0 hears
        of it by VIRQ_DOM_EXC, and xenstored, which Domain-0 runs in Xen and
        which that VIRQ wakes, fires @releaseDomain for the domain that shut
        down (domain.c's do_check_domain)."""
        if dom.state not in (RunState.RUNNING, RunState.PAUSED):
            return                      # shut down or dying already: the first reason stands
        dom.shutdown_reason = reason
        dom.state = RunState.CRASHED if reason == "crash" else RunState.SHUTDOWN
        await self._kill_process(dom)
        log.info("d%d (%s) shut down: %s", dom.domid, dom.name, reason)
        self._changed(dom)
        self.evtchn.raise_virq(0, abi.VIRQ_DOM_EXC)
        self.xenstored.domain_shutdown(dom.domid)

    async def wait_gone_or_stopped(self, dom: Domain, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            current = self.domains.find(dom.domid)
            if current is not dom or dom.state in (RunState.SHUTDOWN, RunState.CRASHED):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DomainError(errno.EBUSY, f"d{dom.domid} did not shut down within {timeout:g}s")
            self._state_changed.clear()
            try:
                await eventloop.wait_for(self._state_changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def sched_shutdown(self, domid: int, reason: str) -> None:
        """SCHEDOP_shutdown from the domain itself: remember why; its process
        ends next (the guest closes its devices first), and that end shuts
        it down with this reason. A domain with no process shuts down now."""
        if reason not in abi.SHUTDOWN_REASONS:
            raise DomainError(errno.EINVAL, f"unknown shutdown reason {reason!r}")
        dom = self.domains.get(domid)
        if dom.state not in (RunState.RUNNING, RunState.PAUSED):
            return
        dom.shutdown_reason = reason
        if domid not in self._procs and domid != 0:
            asyncio.get_running_loop().create_task(self.domain_shutdown(dom, reason))

    def sched_watchdog(self, domid: int, wid: int, timeout: int) -> int:
        """SCHEDOP_watchdog (Watchdogs.set), with a timer for the slot's deadline."""
        if domid == 0:
            # In Xen the hardware domain's watchdog firing restarts the host.
            raise DomainError(errno.EPERM, "Domain-0's watchdog would stop the host; "
                                           "it is not emulated")
        dom = self.running_domu(domid, "arm a watchdog of")
        new = self.watchdogs.set(domid, wid, timeout)
        slot = new or wid
        old = self._watchdog_timers.pop((domid, slot), None)
        if old is not None:
            old.cancel()
        deadline = self.watchdogs.deadline(domid, slot)
        if deadline is not None:
            delay = max(0.0, deadline - self.watchdogs.clock())
            self._watchdog_timers[(domid, slot)] = asyncio.get_running_loop().call_later(
                delay, self._watchdog_fired, dom, slot)
        return new

    def _watchdog_fired(self, dom: Domain, slot: int) -> None:
        """domain_watchdog_timeout: a domain that did not re-arm in time."""
        self._watchdog_timers.pop((dom.domid, slot), None)
        if self.domains.find(dom.domid) is not dom or not self.watchdogs.expired(dom.domid, slot):
            return
        log.warning("Watchdog timer %d fired for d%d (%s)", slot, dom.domid, dom.name)
        asyncio.get_running_loop().create_task(self.domain_shutdown(dom, "watchdog"))

    def _stop_watchdogs(self, domid: int) -> None:
        for key in [k for k in self._watchdog_timers if k[0] == domid]:
            self._watchdog_timers.pop(key).cancel()
        self.watchdogs.remove_domain(domid)

    async def _reap(self, dom: Domain, proc: DomainProcess) -> None:
        status = await proc.wait()
        if self._procs.get(dom.domid) is not proc:
            return
        del self._procs[dom.domid]
        self._reapers.pop(dom.domid, None)
        # A process that ends without a clean exit is a crash, whatever it
        # said it was doing; one that exits cleanly without saying powered off.
        reason = dom.shutdown_reason or "poweroff"
        if status != 0:
            reason = "crash"
        log.info("d%d (%s): process %d exited with %s: %s", dom.domid, dom.name, proc.pid,
                 status, reason)
        await self.domain_shutdown(dom, reason)

    def soft_reset(self, dom: Domain) -> tuple[int, int]:
        """What XEN_DOMCTL_soft_reset clears before a new kernel runs: the
        domain's grant mappings and event channels, and (as a kexec'd kernel
        builds its own) the old kernel's pinned page tables and base
        pointers, which devalidate so that the frames are writable again.
        How many mappings and ports."""
        holder = Caller(dom.domid, privileged=dom.privileged)
        mappings = self.grants.mappings(dom.domid)
        for mapping in mappings:
            self.grants.unmap(holder, mapping.handle)
        ports = len(self.evtchn.ports(dom.domid))
        self.evtchn.reset(DOM0, dom.domid)
        self.memory.pagetables.forget_domain(dom.domid)
        return len(mappings), ports

    def _changed(self, dom: Domain) -> None:
        """``dom``'s state changed (or it was destroyed): the observers are
        told which domain, so that none has to look at every domain."""
        self._state_changed.set()
        for observer in list(self.observers):
            try:
                observer(dom)
            except Exception:       # an observer must never break the lifecycle
                log.exception("domain state observer failed")

    # -- memory ------------------------------------------------------------------
    def set_max_pages(self, domid: int, pages: int) -> None:
        """XENMEM maximum_reservation, as xl mem-max sets it."""
        self.memory.set_max(domid, pages)
        self.domains.get(domid).max_pages = pages

    # -- info -------------------------------------------------------------------------
    def domain_info(self, dom: Domain) -> dict:
        proc = self._procs.get(dom.domid)
        current, maximum, target = self.memory.reservation(dom.domid) if dom.state is not RunState.DYING else (0, 0, 0)
        return dict(domid=dom.domid, name=dom.name, uuid=dom.uuid,
                    state=dom.state_letters(proc.proc_state() if proc else ("R" if dom.domid == 0 else "")),
                    memory_kb=current * 4, maxmem_kb=maximum * 4, target_kb=target * 4,
                    vcpus=dom.online_vcpus, cpu_time=self._cpu_time(dom, proc),
                    privileged=dom.privileged, shutdown_reason=dom.shutdown_reason,
                    pid=proc.pid if proc else 0, launcher=dom.launcher,
                    paging_mode=dom.paging_mode.value,
                    paging_pool_kb=dom.paging_pool_pages * 4)

    def _cpu_time(self, dom: Domain, proc: DomainProcess | None) -> float:
        """Its process's CPU seconds; Domain-0's kernel is found through its doorbell."""
        if proc is None and dom.domid == 0:
            proc = self.sched_process(0)
        return proc.cpu_time() if proc is not None else 0.0

    def host_info(self) -> dict:
        uname = platform.uname()
        freed, used = self.page_sharing.figures()
        return dict(host=uname.node, release=uname.release, xen_version=XEN_VERSION,
                    nr_cpus=os.cpu_count() or 1,
                    total_memory_kb=self.memory.total_pages * 4,
                    free_memory_kb=self.memory.free_pages * 4,
                    nr_domains=len(self.domains), xen_caps="xen-3.0-x86_64 (emulated by xenlab)",
                    rundir=str(self.rundir.path), doorbell=str(self.rundir.doorbell),
                    launcher=self.launcher.name, uptime=time.monotonic() - self.started,
                    ops=dict(self.ops), sharing_freed_kb=freed, sharing_used_kb=used,
                    page_sharing=self.page_sharing.describe())

