"""The domain kernel: what runs in every domain process.

Boot: authenticate to the hypervisor, map this domain's memory and its
shared_info, start the event-channel upcall loop and the xenbus client,
register the drivers it was given, advertise the PV control features,
start the agent it was given, then serve: follow control/shutdown
(poweroff/reboot, as a PV guest's xenbus shutdown handler does) and
memory/target (the balloon driver), until told to stop.

The kernel knows no driver and no agent: whoever starts it hands them in
(xenlab.boot), and drivers reach the hypervisor through the kernel's typed
hypercall layer, its event channels and its xenbus.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from xenlab.domain import saved_state
from xenlab.domain.console import ConsoleFront
from xenlab.domain.evtchn import GuestEventChannels
from xenlab.domain.hypercall import GrantTable, Hypercalls
from xenlab.domain.memory import RESERVED_FRAMES, GuestMemory
from xenlab.domain.paging import GrantArea, KernelPagingService
from xenlab.domain.sysrq import SysrqHandler
from xenlab.domain.vcpus import Vcpus
from xenlab.domain.xenbus import XenbusBus, XenbusClient
from xenlab.domain.xenbus_ring import WireXenStore
from xenlab.xen import abi
from xenlab.xen.digits import U64_MAX, parse_decimal
from xenlab.xen.errors import XenError
from xenlab.xen.paging import PagingMode
from xenlab.xen.shared_info import SharedInfo
from xenlab.xen.start_info import StartInfo

log = logging.getLogger(__name__)


class NetifTable(dict):
    """A kernel's interfaces of one kind, by name (netfront's eth0, netback's
    vif1.0): a driver brings one ``up`` or takes it ``down``, and whoever
    follows the kernel's interfaces is told (``changed(name, device or None)``)."""

    def __init__(self, changed: Callable[[str, object], None]):
        super().__init__()
        self._changed = changed

    def up(self, device) -> None:
        if self.get(device.name) is not device:
            self[device.name] = device
            self._changed(device.name, device)

    def down(self, device) -> None:
        if self.get(device.name) is device:
            del self[device.name]
            self._changed(device.name, None)


class DomainKernel:
    def __init__(self, start: StartInfo, drivers: Callable[["DomainKernel"], list] | None = None,
                 memory_map=None, doorbell=None,
                 agent: Callable[["DomainKernel"], Awaitable[object]] | None = None,
                 paging_pool=None, hypervisor_idle_close: float | None = None):
        """``drivers(kernel)``: the XenbusDrivers to register at boot (none
        if not given); ``agent(kernel)``: started once they are, its result
        stopped (``await result.stop()``) first at close (none if not given
        or if it returns None); ``memory_map``: the domain's memory, already
        mapped from the object its launcher handed over or the doorbell
        brought (else boot opens the segment); ``doorbell``: that doorbell
        connection, greeted; ``paging_pool``: in shadow or HAP mode, the
        paging pool the doorbell brought, mapped read-only (a PageMap);
        ``hypervisor_idle_close``: close the gRPC connection to the
        hypervisor after that many seconds with no hypercall in flight
        (Hypercalls.connect; None: keep it open)."""
        self.start_info = start
        self._memory_map = memory_map
        self._doorbell = doorbell
        self.paging_pool = paging_pool
        self.domid = start.domid
        self.name = start.name
        # Every call to the hypervisor, typed (xenlab.domain.hypercall).
        self.hypercall = Hypercalls.connect(start.hypervisor, start.domid, start.secret,
                                            idle_close=hypervisor_idle_close)
        self.gnttab: GrantTable = self.hypercall.gnttab
        self.memory: GuestMemory | None = None
        self.paging: KernelPagingService | None = None     # its MMU and address spaces
        self.shared_info: SharedInfo | None = None
        self.evtchn: GuestEventChannels | None = None
        self.xenbus: XenbusClient | None = None
        self._store_ring: WireXenStore | None = None     # a store ring, or xenstored's socket
        self.console: ConsoleFront | None = None         # when start_info names a console ring
        # Called with the console as soon as it is up (boot.domu routes the log to it).
        self.on_console: list[Callable[[ConsoleFront], None]] = []
        self.sysrq = SysrqHandler(self)
        self.nmis = 0
        self._emergency = False
        self.bus: XenbusBus | None = None
        self.vcpus = Vcpus(start.vcpus)
        self.ticks = 0
        self.booted = time.monotonic()      # when this kernel started (the console's uptime)
        self.shutdown_reason = ""
        self._stop = asyncio.Event()
        self._balloon_lock = asyncio.Lock()
        self._driver_factory = drivers
        self._agent_factory = agent
        self.drivers: list = []
        self.agent = None
        self.netifs = NetifTable(self.netif_changed)    # netfront: "eth0" -> NetfrontDevice
        self.vifs = NetifTable(self.netif_changed)      # netback: "vif1.0" -> VifDevice
        self.on_netif_change: list[Callable[[str, object], None]] = []
        # Coroutine functions run once boot is complete (e.g. dom0 saying netback is ready).
        self.on_boot: list[Callable[[], object]] = []
        # Suspend: each saver returns what must survive in the suspend
        # record (domain.saved_state); a resumed kernel's record, read at
        # boot, is ``resumed_state`` for them to take back.
        self.suspend_savers: list[Callable[[], list]] = []
        self.resumed_state: list | None = None
        self.suspends = 0          # suspends cancelled (resumed in place)
        self._suspending = False
        self._agent_factory = agent
        self.agent = None

    def netif_changed(self, name: str, device) -> None:
        """An interface came (``device``) or went (None): tell whoever
        follows them (the guest agent, the events publisher)."""
        for callback in list(self.on_netif_change):
            try:
                callback(name, device)
            except Exception:
                log.exception("netif change callback for %s failed", name)

    async def boot(self) -> None:
        self.vcpus.start()        # first: the toolstack may be waiting to pin them
        mm = await self.hypercall.memory.memory_map(with_populated=True)
        self.memory = GuestMemory(mm.shm_path, mm.segment_pages, mm.first_frame_offset,
                                  mapping=self._memory_map)
        self.memory.set_populated(mm.populated)
        # Paging on (its direct map built and loaded, in its domain's mode)
        # before anything reaches a frame: from here frame() is an access
        # through the MMU.
        self.paging = await KernelPagingService.start(self.memory, self.hypercall,
                                                      self.paging_pool)
        await self.gnttab.setup(self.memory)
        if self.paging.mode is PagingMode.DIRECT:
            # the grants it maps are PTEs in its vmalloc area, reached through its MMU
            self.gnttab.attach_grant_area(GrantArea(self.paging))
        self.shared_info = SharedInfo(self.memory.mm, mm.shared_info_offset,
                                      self.start_info.vcpus)
        start = self.start_info
        if start.resume_gfn >= 0:
            self.resumed_state = self._read_suspend_record(start.resume_gfn)
        doorbell = self._doorbell
        if doorbell is None:
            doorbell = start.doorbell_fd if start.doorbell_fd >= 0 else (start.doorbell or None)
        self.evtchn = GuestEventChannels(self.hypercall.evtchn, self.shared_info, doorbell,
                                         start.secret)
        await self.evtchn.start()
        self.gnttab.attach_doorbell(self.evtchn)
        self._open_console()
        self.xenbus = XenbusClient(await self._xenstore_transport(), self.domid)
        await self.xenbus.start()
        self.bus = XenbusBus(self.xenbus)
        await self._start_timer()
        await self._register_drivers()
        for feature in ("feature-poweroff", "feature-reboot", "feature-suspend"):
            await self.xenbus.write(f"control/{feature}", "1")
        await self.xenbus.watch("control/shutdown", self._on_shutdown_request)
        await self.xenbus.watch("memory/target", self._on_memory_target)
        await self.sysrq.start()
        await self.xenbus.watch("cpu", self._on_cpu_availability)
        await self.xenbus.write("data/kernel", "xenlab-domain")
        log.info("d%d (%s) booted: %d frames, doorbell %s, xenstore over %s", self.domid,
                 self.name, self.memory.nr_frames,
                 "yes" if self.evtchn.via_doorbell else "no (gRPC fallback)",
                 self._xenstore_carrier)
        if self._agent_factory is not None:
            self.agent = await self._agent_factory(self)
        for hook in self.on_boot:
            await hook()

    async def _xenstore_transport(self):
        """The store ring start_info names, as a Xen guest's xenbus uses;
        for Domain-0, xenstored's socket; without either (a kernel started
        by hand, or a socket that does not answer), the hypervisor's
        XenStore service."""
        start = self.start_info
        if start.store_port:
            self._store_ring = WireXenStore.open(self.memory, self.evtchn, start.store_gfn,
                                                 start.store_port)
        elif start.xenstored:
            try:
                self._store_ring = await WireXenStore.connect(start.xenstored)
            except OSError as err:
                log.warning("d%d: xenstored's socket %s: %s; xenstore over gRPC instead",
                            self.domid, start.xenstored, err.strerror or err)
        return self._store_ring or self.hypercall.xenstore

    @property
    def _xenstore_carrier(self) -> str:
        """How this kernel reaches xenstored (its boot log says it)."""
        return self._store_ring.ring.carrier if self._store_ring is not None else "gRPC"

    def _open_console(self) -> None:
        """hvc_xen: the console ring start_info names (none for a kernel
        started by hand, or Domain-0, whose console is Xen's own)."""
        start = self.start_info
        if not getattr(start, "console_port", 0):
            return
        self.console = ConsoleFront.open(self.memory, self.evtchn, start.console_gfn,
                                         start.console_port)
        for hook in self.on_console:
            hook(self.console)

    async def _register_drivers(self) -> None:
        if self._driver_factory is None:
            return
        for driver in self._driver_factory(self):
            self.drivers.append(driver)
            await self.bus.register(driver)

    async def _start_timer(self) -> None:
        """Bind VIRQ_TIMER, as Linux's xen_setup_timer does, and arm
        nothing: the kernel is tickless (NO_HZ_IDLE) and programs the
        singleshot timer only for a timeout it waits on. It has none (its
        timeouts are its event loop's), so an idle domain costs the
        hypervisor no message and is woken by nothing."""
        port = await self.evtchn.bind_virq(abi.VIRQ_TIMER, 0)
        self.evtchn.bind_handler(port, self._on_timer)
        for cpu in range(max(1, self.start_info.vcpus)):
            nmi = await self.evtchn.bind_virq(abi.VIRQ_NMI, cpu)
            self.evtchn.bind_handler(nmi, lambda port, cpu=cpu: self._on_nmi(cpu))

    def _on_nmi(self, cpu: int) -> None:
        """An NMI nothing claims: what Linux's unknown_nmi_error says."""
        self.nmis += 1
        log.warning("Uhhuh. NMI received for unknown reason 00 on CPU %d.", cpu)
        log.warning("Dazed and confused, but trying to continue")

    def memory_summary(self) -> dict:
        """What sysrq's Show Memory prints, in pages."""
        populated, free = self.memory.counts()
        return dict(nr_frames=self.memory.nr_frames, populated=populated, free=free,
                    reserved=RESERVED_FRAMES)

    def _on_timer(self, port: int) -> None:
        self.ticks += 1

    async def _on_shutdown_request(self, path: str) -> None:
        try:
            request = await self.xenbus.read("control/shutdown", default="")
        except XenError as err:
            log.warning("ignoring a shutdown request: %s", err.message)
            return
        if request in ("poweroff", "halt", "reboot"):
            # Acknowledge by clearing the node, as Linux's shutdown_handler does.
            await self.xenbus.write("control/shutdown", "")
            self.stop("reboot" if request == "reboot" else "poweroff")
        elif request == "suspend":
            await self.xenbus.write("control/shutdown", "")
            if not self._suspending:
                self._suspending = True
                # Not in the watch callback: the xenbus reader must go on.
                asyncio.get_running_loop().create_task(self.suspend())
        elif request:
            log.warning("ignoring unknown shutdown request %r", request)

    async def _on_cpu_availability(self, path: str) -> None:
        """Linux's xen cpu_hotplug: cpu/N/availability brings vCPU N up or down."""
        for vcpu in range(1, self.vcpus.count):
            try:
                state = await self.xenbus.read(f"cpu/{vcpu}/availability", default="")
            except XenError as err:
                log.warning("vcpu hotplug: ignoring %s", err.message)
                return
            if state in ("online", "offline"):
                self.vcpus.set_online(vcpu, state == "online")

    # -- suspend and resume (Linux's drivers/xen/manage.c do_suspend) -------------------
    async def suspend(self) -> int:
        """Freeze the drivers, write the suspend record into this domain's
        own frames, then SCHEDOP_shutdown(suspend). Its return is 1 when the
        suspend is cancelled (xl save -c, or a failed save): the drivers
        thaw and the domain runs on. A domain saved and destroyed never
        returns; its restored kernel resumes at boot (``resumed_state``)."""
        try:
            for driver in self.drivers:
                if hasattr(driver, "suspend"):
                    await driver.suspend()
            state = [iface for saver in self.suspend_savers for iface in saver()]
            record = saved_state.encode(state)
            chunks = saved_state.pages(record)
            gfns = self.memory.alloc_frames(1 + len(chunks))
        except (MemoryError, ValueError) as err:
            log.error("suspend failed: no suspend record (%s); running on", err)
            gfns, cancelled = [], 1
        else:
            for gfn, data in zip(gfns, [saved_state.descriptor(gfns[1:])] + chunks):
                frame = self.memory.frame(gfn)
                frame[:len(data)] = data
                frame.release()
            log.info("d%d (%s): suspending (%d byte suspend record, descriptor at gfn %d)",
                     self.domid, self.name, len(record), gfns[0])
            try:
                cancelled = await self.hypercall.domains.sched_suspend(gfns[0])
            except XenError as err:
                log.error("suspend failed: %s; running on", err.message)
                cancelled = 1
        finally:
            self._suspending = False
        self.memory.free_frames(gfns)
        for driver in self.drivers:
            if hasattr(driver, "thaw"):
                await driver.thaw()
        self.suspends += 1
        log.info("d%d (%s): suspend cancelled (SCHEDOP_shutdown returned %d): running on",
                 self.domid, self.name, cancelled)
        return cancelled

    def _read_suspend_record(self, gfn: int) -> list:
        """A restored kernel's first act, as a guest whose SCHEDOP_shutdown
        (suspend) returned 0 in its new domain: take back what it kept."""
        try:
            frames = saved_state.read_descriptor(bytes(self.memory.frame(gfn)))
            state = saved_state.decode(b"".join(bytes(self.memory.frame(g)) for g in frames))
        except (IndexError, saved_state.SavedStateError) as err:
            log.error("resumed, but the suspend record at gfn %d is unusable: %s; booting "
                      "afresh", gfn, err)
            return []
        log.info("d%d (%s): resumed in a new domain (SCHEDOP_shutdown returned 0): %d "
                 "interface(s) from the suspend record", self.domid, self.name, len(state))
        return state

    async def _on_memory_target(self, path: str) -> None:
        """The balloon driver: follow memory/target (KiB) by giving frames
        back to, or taking them from, the hypervisor."""
        try:
            target_kb = await self.xenbus.read("memory/target", default="")
            if not target_kb:
                return
            target = parse_decimal(target_kb, "memory/target", maximum=U64_MAX) // 4
        except XenError as err:
            log.warning("balloon: ignoring %s", err.message)
            return
        memory = self.hypercall.memory
        async with self._balloon_lock:
            res = await memory.reservation()
            if target < res.current_pages:
                give = self.memory.balloon_candidates(res.current_pages - target)
                for start in range(0, len(give), abi.MAX_EXTENTS):
                    await self._give_back(give[start:start + abi.MAX_EXTENTS])
            elif target > res.current_pages:
                want = min(target, res.max_pages) - res.current_pages
                while want > 0:
                    got = await memory.increase_reservation(min(want, abi.MAX_EXTENTS))
                    self.memory.add_frames(got)
                    if self.paging is not None:
                        await self.paging.populate(got)     # new mfns in the direct map
                    want -= len(got)
            now = await memory.reservation()
            await self.xenbus.write("data/balloon", str(now.current_pages * 4))
            log.info("balloon: target %s KiB, now %d KiB", target_kb, now.current_pages * 4)

    async def _give_back(self, gfns: list[int]) -> None:
        """XENMEM_decrease_reservation of frames this domain stops using
        first; if the hypervisor refuses, they are still the domain's."""
        self.memory.forget_frames(gfns)
        if self.paging is not None:
            # Out of the direct map first, as Linux's balloon clears a page's
            # mapping before XENMEM_decrease_reservation.
            await self.paging.release(gfns)
        try:
            await self.hypercall.memory.decrease_reservation(gfns)
        except BaseException:
            self.memory.add_frames(gfns)
            if self.paging is not None:
                await self.paging.populate(gfns)
            raise

    async def emergency_stop(self, reason: str) -> None:
        """emergency_restart / panic: SCHEDOP_shutdown now, then stop
        without shutting devices down in order."""
        self._emergency = True
        try:
            await self.hypercall.domains.sched_shutdown(reason)
        except XenError as err:
            log.warning("SCHEDOP_shutdown failed: %s", err.message)
        self.stop(reason)

    def stop(self, reason: str = "poweroff") -> None:
        if not self._stop.is_set():
            self.shutdown_reason = reason
            self._stop.set()

    async def run(self) -> str:
        """Boot, serve until stopped, shut down. Returns the shutdown reason."""
        await self.boot()
        lost = asyncio.create_task(self.xenbus.closed.wait())
        stop = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait({lost, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in (lost, stop):
            task.cancel()
        if stop not in done:
            log.error("lost the hypervisor's xenstore connection: halting")
            self.shutdown_reason = "crash"
            await self.close()
            return "crash"
        if self._emergency:
            await self.close(orderly=False)
        else:
            await self.shutdown()
        return self.shutdown_reason

    async def shutdown(self) -> None:
        """SCHEDOP_shutdown: tell the hypervisor why, then stop."""
        log.info("d%d (%s): shutting down (%s)", self.domid, self.name, self.shutdown_reason)
        try:
            await self.hypercall.domains.sched_shutdown(self.shutdown_reason or "poweroff")
        except XenError as err:
            log.warning("SCHEDOP_shutdown failed: %s", err.message)
        await self.close()

    async def close(self, orderly: bool = True) -> None:
        """Release what boot took (agent, drivers, xenbus, event channels,
        memory) without telling the hypervisor: shutdown() tells it first.
        Not ``orderly`` (an emergency restart, a panic): the agent and the
        drivers are not shut down, only dropped with the rest."""
        self.vcpus.stop()
        if self.agent is not None and orderly:    # the agent: before xenbus goes
            await self.agent.stop()
        for driver in reversed(self.drivers if orderly else []):   # drivers: before xenbus goes
            await driver.close()
        await self.gnttab.close()
        if self.xenbus is not None:
            # the store ring first: a watch callback waiting on a reply that
            # is not coming (a released ring) must not keep xenbus from closing
            await self.xenbus.close()
        if self.console is not None:
            self.console.close()
        if self.evtchn is not None:
            await self.evtchn.close()
        await self.hypercall.close()
        if self.shared_info is not None:
            self.shared_info.release()
        if self.paging is not None:
            self.paging.close()
        if self.memory is not None:
            self.memory.close()
