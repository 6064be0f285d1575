"""The toolstack: libxl's part of a domain's life, driving the hypervisor.

Creating a domain reads top to bottom in ``create``, as
libxl_domain_create_new does it: the hypervisor makes the domain, the
toolstack plans its vifs, the hypervisor sets up its memory and
credentials, the toolstack writes its xenstore tree, its vifs and its
store ring, xenstored is told about it, the hypervisor starts it, and the
toolstack keeps its record. ``destroy`` is libxl__destroy_domid. A domain
that shuts down is left shut down by the hypervisor, which fires
@releaseDomain; the toolstack's monitor (lifecycle.DomainMonitor, xl's
per-domain monitor) then applies its on_poweroff / on_reboot / on_crash /
on_watchdog action in ``apply_policy``.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import uuid as uuidlib
from datetime import datetime, timezone

from xenlab.hypervisor.core import PAGES_PER_MB, Hypervisor
from xenlab.hypervisor.domains import Domain, RunState
from xenlab.hypervisor.caller import DOM0
from xenlab.hypervisor.xenstored_ring import STORE_GFN
from xenlab.net.ipconfig import check_guest_net
from xenlab.toolstack import build
from xenlab.toolstack.devices import Devices
from xenlab.toolstack.sched_cfg import SchedConfig, sched_config
from xenlab.toolstack.save import SaveRestore
from xenlab.toolstack.lifecycle import DomainMonitor, action_for, check_policies, preserved_name
from xenlab.toolstack.xlcfg import (DOMAIN_TYPES, HAP_ON_PV, MIN_PAGING_POOL_MB, paging_mode,
                                    paging_pool_mb, pool_too_small)
from xenlab.xen.cmdline import kernel_cmdline
from xenlab.xen.errors import DomainError, XenError
from xenlab.xen.names import check_domain_name
from xenlab.xen.paging import PagingMode
from xenlab.xen.xenstore_paths import agent_record_path

log = logging.getLogger(__name__)

DEFAULT_MEMORY_MB = 128
VCPU_THREADS_TIMEOUT = 30.0     # seconds for a new domain to start its vCPU threads (cpus= lists)
# What xl's xl.cfg calls xl shutdown's and xl reboot's reasons, and domain_crash.
SHUTDOWN_REQUESTS = ("poweroff", "reboot", "crash")


class Toolstack:
    caller = DOM0       # the domain the toolstack acts as

    def __init__(self, hv: Hypervisor):
        self.hv = hv
        self.xs = hv.xenstore
        self.devices = Devices(hv.xenstore, hv.domains)
        self.monitor = DomainMonitor(hv.xenstore, hv.domains, self.apply_policy)
        self.saver = SaveRestore(self)      # xl save, xl restore

    def start(self) -> None:
        """Domain-0's own tree, as xen-init-dom0 writes it at boot, and the
        watch on @releaseDomain through which shut-down domains are heard of."""
        dom0 = self.hv.domains.get(0)
        build.write_domain_tree(self.xs, dom0, self.hv.memory.reservation(0))
        self.monitor.start()

    async def close(self) -> None:
        await self.monitor.close()
        for dom in list(self.hv.domains):
            if dom.domid != 0:
                await self.destroy_domain(dom.domid)

    # -- create ------------------------------------------------------------------------
    async def create(self, spec, paused: bool = False, restore=None) -> tuple[Domain, str]:
        """A domain from a DomainSpec; it and the secret it acts with.
        ``restore`` (xl restore: save._RestoreSteps) fills its memory before
        its kernel starts, writes its saved nodes back, and has the kernel
        start resumed."""
        memory_mb = spec.memory_mb or DEFAULT_MEMORY_MB
        maxmem_mb = spec.maxmem_mb or memory_mb
        if maxmem_mb < memory_mb:
            raise DomainError(errno.EINVAL, f"maxmem={maxmem_mb} is below memory={memory_mb}")
        launcher = self.hv.launcher_for(spec.launcher)
        vcpus = spec.vcpus or 1
        if spec.maxvcpus and spec.maxvcpus < vcpus:
            raise DomainError(errno.EINVAL, f"maxvcpus={spec.maxvcpus} is below vcpus={vcpus}")
        check_policies(spec)
        sched = sched_config(dict(spec.extra))
        paging, pool_mb = resolve_paging(spec, maxmem_mb, spec.maxvcpus or vcpus)
        dom = self.hv.domains.allocate(spec.name, maxmem_mb * PAGES_PER_MB,
                                       spec.maxvcpus or vcpus, spec.uuid)
        dom.spec = spec
        dom.paging_mode, dom.paging_pool_pages = paging, pool_mb * PAGES_PER_MB
        dom.online_vcpus = vcpus
        dom.launcher = launcher.name
        try:
            # Every vif and the command line are checked before anything is written.
            nics = self.devices.plan_vifs(dom.domid, list(spec.vif))
            cmdline = kernel_cmdline(dict(spec.extra))
            check_guest_net(cmdline, [f"eth{i}" for i in range(len(spec.vif))])
            secret = self.hv.populate(dom, memory_mb * PAGES_PER_MB)
            if restore is not None:
                restore.memory(dom)
            build.write_domain_tree(self.xs, dom, self.hv.memory.reservation(dom.domid))
            for nodes in nics:
                self.devices.write_vif(nodes)
            store_port = build.setup_store(self.xs, self.hv.memory, self.hv.evtchn, dom.domid)
            if restore is not None:
                restore.xenstore(dom)
            self.hv.xenstored.introduce(dom.domid, STORE_GFN, store_port)
            build.setup_console(self.xs, self.hv.memory, self.hv.evtchn, dom.domid)
            self.hv.consoles.connect(dom.domid)
            token = secrets.token_urlsafe(32)
            agent = await self.hv.launch(dom, launcher, secret, token, cmdline,
                                         resume_gfn=restore.resume_gfn if restore else -1)
            await self._apply_sched(dom, sched)
        except BaseException:
            await self._destroy(dom)
            raise
        dom.agent, dom.agent_token = agent, token
        self._record_agent(dom.domid, agent, token)
        self.hv.run(dom, paused)
        log.info("created d%d (%s): %d MiB, %d vCPU, launcher %s, %s paging%s", dom.domid,
                 dom.name, memory_mb, dom.vcpus, launcher.name, paging.value,
                 f" (pool {pool_mb} MiB)" if pool_mb else "")
        return dom, secret

    async def _apply_sched(self, dom: Domain, sched: SchedConfig) -> None:
        """xl.cfg's pool=, cpus=, cpu_weight= and cap=, as libxl applies them
        at create (libxl__build_pre): on the domain's process. A list of
        CPU lists pins each vCPU apart, so its threads are waited for."""
        if sched.empty:
            return
        proc = self.hv.sched_process(dom.domid)
        if proc is None:
            log.warning("d%d (%s) has no process: pool=, cpus=, cpu_weight= and cap= not applied",
                        dom.domid, dom.name)
            return
        if sched.pool:
            self.hv.sched.migrate(dom, sched.pool)
        if len(sched.hard) == 1:
            self.hv.sched.pin(dom, -1, sched.hard[0])
        elif sched.hard:
            await self._vcpu_threads(dom, proc)
            for vcpu, cpus in enumerate(sched.hard[:dom.vcpus]):
                self.hv.sched.pin(dom, vcpu, cpus)
        if sched.weight is not None or sched.cap is not None:
            self.hv.sched.set(dom, sched.weight, sched.cap)

    @staticmethod
    async def _vcpu_threads(dom: Domain, proc, timeout: float = VCPU_THREADS_TIMEOUT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(proc.vcpu_tasks()[0]) < dom.vcpus:
            if loop.time() > deadline:
                raise DomainError(errno.ETIMEDOUT, f"d{dom.domid} did not start its {dom.vcpus} "
                                                   f"vCPU threads in {timeout:g} s: cpus= not applied")
            await asyncio.sleep(0.05)

    def _record_agent(self, domid: int, address: str, token: str) -> None:
        """The toolstack's record of where the guest agent is and what opens
        it: the address is the launcher's, never what the guest says."""
        if not address:
            return
        base = agent_record_path(domid)
        self.xs.write(DOM0, f"{base}/address", address.encode())
        self.xs.write(DOM0, f"{base}/token", token.encode())

    # -- destroy -----------------------------------------------------------------------
    async def destroy_domain(self, domid: int) -> None:
        if domid == 0:
            raise DomainError(errno.EPERM, "Domain-0 cannot be destroyed")
        dom = self.hv.domains.get(domid)
        if dom.state is RunState.DYING:
            return
        await self._destroy(dom)

    async def _destroy(self, dom: Domain) -> None:
        """libxl__destroy_domid: the domain stops, its backends go so that
        they tear their devices down at once, then its xenstore tree, then
        the hypervisor undoes the rest. Its id stays taken until this is done."""
        await self.hv.halt(dom)
        self.devices.remove_backends(dom.domid)
        build.remove_domain_tree(self.xs, dom)
        self.hv.destroy(dom)

    # -- shutdown and the on_* policies -----------------------------------------------
    async def shutdown_domain(self, domid: int, reason: str, wait: bool = False,
                              timeout: float = 30.0) -> None:
        """xl shutdown/reboot: write control/shutdown for the guest and
        return, as libxl_domain_shutdown does, paused or not (a paused guest
        acts on it once unpaused); ``wait`` (-w) waits for it to shut down
        and for its on_* action. 'crash' is the hypervisor crashing it
        (domain_crash)."""
        if reason not in SHUTDOWN_REQUESTS:
            raise DomainError(errno.EINVAL, f"shutdown reason {reason!r}: expected poweroff, reboot or crash")
        dom = self.hv.running_domu(domid, "shut down")
        if reason == "crash":
            await self.hv.crash(dom)
        elif self.hv.process(domid) is None:
            # No guest to ask (launcher none): shut it down from outside,
            # as SCHEDOP_remote_shutdown does.
            await self.hv.remote_shutdown(dom, reason)
        else:
            self.xs.write(DOM0, f"/local/domain/{domid}/control/shutdown", reason.encode())
        if wait:
            await self.hv.wait_gone_or_stopped(dom, timeout)
            await self.monitor.settled(dom)

    async def apply_policy(self, dom: Domain) -> None:
        """What xl.cfg says to do with a domain that shut down, as xl's
        handle_domain_death does it."""
        reason = dom.shutdown_reason
        if dom.state not in (RunState.SHUTDOWN, RunState.CRASHED):
            # It runs again: a suspend resumed (a save abandoned) before this
            # handler ran. Its shutdown is over; there is nothing to act on
            # (its reason is gone with it: acting would destroy it).
            log.info("d%d (%s) runs again (resumed): no action", dom.domid, dom.name)
            return
        if not dom.monitored:
            log.info("d%d (%s) shut down (%s): not monitored (restored with -e), left as it is",
                     dom.domid, dom.name, reason)
            return
        action = action_for(dom.spec, reason)
        if action is None:
            log.info("d%d (%s) has suspended: left as it is", dom.domid, dom.name)
            return
        log.info("d%d (%s): %s -> on_%s=%s", dom.domid, dom.name, reason,
                 reason if reason in ("poweroff", "reboot", "crash", "watchdog") else "crash",
                 action)
        if action.startswith("coredump-"):
            log.warning("d%d (%s): on_%s=%s: core dumps are not emulated, no core is written",
                        dom.domid, dom.name, reason, action)
            action = action.removeprefix("coredump-")
        if action == "preserve":
            return
        spec = dom.spec
        if action == "rename-restart":
            self.rename(dom, preserved_name(dom.name, datetime.now(timezone.utc)),
                        str(uuidlib.uuid4()))
        else:
            await self._destroy(dom)
        if action in ("restart", "rename-restart") and spec is not None:
            try:
                new, _ = await self.create(spec)
                log.info("restarted %s as d%d", spec.name, new.domid)
            except XenError as err:
                log.error("could not restart %s: %s", spec.name, err)

    def rename(self, dom: Domain, name: str, uuid: str = "") -> None:
        """libxl_domain_preserve's rename (and new handle, when ``uuid``):
        the domain keeps running or stays shut down under another name."""
        check_domain_name(name)
        if any(d.name == name and d is not dom and d.state is not RunState.DYING
               for d in self.hv.domains):
            raise DomainError(errno.EEXIST, f"domain {name!r} already exists")
        build.rename_domain(self.xs, dom, name, uuid or dom.uuid)
        log.info("d%d renamed from %s to %s", dom.domid, dom.name, name)
        dom.name = name
        dom.uuid = uuid or dom.uuid

    # -- xl mem-set, mem-max, vcpu-set ------------------------------------------------
    def set_memory_target(self, domid: int, kb: int) -> None:
        self.hv.memory.set_target(domid, kb // 4)
        self.xs.write(DOM0, f"/local/domain/{domid}/memory/target", str(kb).encode())

    def set_memory_max(self, domid: int, kb: int) -> None:
        self.hv.set_max_pages(domid, kb // 4)
        self.xs.write(DOM0, f"/local/domain/{domid}/memory/static-max", str(kb).encode())

    def set_vcpus(self, domid: int, vcpus: int) -> None:
        dom = self.hv.domains.get(domid)
        if not 1 <= vcpus <= dom.vcpus:
            raise DomainError(errno.EINVAL, f"d{domid} has {dom.vcpus} vCPUs at most (maxvcpus); asked {vcpus}")
        for vcpu in range(dom.vcpus):
            state = "online" if vcpu < vcpus else "offline"
            self.xs.write(DOM0, f"/local/domain/{domid}/cpu/{vcpu}/availability", state.encode())
        dom.online_vcpus = vcpus

    # -- devices -----------------------------------------------------------------------
    def network_list(self, domid: int) -> list[dict]:
        return self.devices.network_list(domid)

    def network_attach(self, domid: int, spec) -> dict:
        return self.devices.network_attach(domid, spec)

    async def network_detach(self, domid: int, device: str, force: bool = False,
                             timeout: float = 10.0) -> None:
        await self.devices.network_detach(domid, device, force, timeout)

    async def backend_gone(self, domid: int, timeout: float = 2.0) -> dict:
        """The kernel of backend domain `domid` died but the domain stays in
        the table (Domain-0, whose kernel is the `xenlab dom0` process).

        What the dead kernel held goes first, as Xen's soft reset clears a
        domain's grant mappings and event channels before a new kernel runs:
        then every backend it served is marked Closed, without its
        hotplug-status (as netback_remove leaves it), so that each frontend
        disconnects and can end its grants at once. Waits up to `timeout`
        for the frontends to reach Closed, so that a new kernel that probes
        the backends next finds them let go of; the ones that did not (a
        paused domain) are returned as stuck."""
        dom = self.hv.domains.get(domid)
        if dom.state not in (RunState.RUNNING, RunState.PAUSED):
            raise DomainError(errno.EINVAL, f"d{domid} is {dom.state.value}: destroy it instead")
        unmapped, ports = self.hv.soft_reset(dom)
        closed, frontends = self.devices.close_backends(domid)
        log.info("d%d's backend kernel is gone: %d mapping(s) and %d port(s) released, "
                 "%d backend(s) Closed", domid, unmapped, ports, len(closed))
        stuck = await self.devices.wait_closed(frontends, timeout)
        return dict(closed=closed, stuck=stuck, unmapped=unmapped, ports=ports)


def resolve_paging(spec, maxmem_mb: int, maxvcpus: int) -> tuple[PagingMode, int]:
    """A DomainSpec's paging mode and pool size in MiB, as libxl's setdefault
    fills in type=, hap= and shadow_memory= (libxl__domain_create_info_setdefault,
    libxl__get_required_paging_memory); the spec is given those values, so
    that xl list -l shows what the domain got and a restart gets the same."""
    kind = spec.type or "pv"
    if kind not in DOMAIN_TYPES:
        raise DomainError(errno.EINVAL, f"type = {kind!r}: expected one of "
                                        f"{', '.join(DOMAIN_TYPES)}")
    hap = spec.hap if spec.HasField("hap") else None
    shadow = spec.shadow_memory_mb if spec.HasField("shadow_memory_mb") else None
    if kind == "pv":
        if hap:
            raise DomainError(errno.EINVAL, HAP_ON_PV)
        spec.ClearField("hap")
        spec.ClearField("shadow_memory_mb")
        hap = shadow = None
    elif shadow is not None and shadow < MIN_PAGING_POOL_MB:
        raise DomainError(errno.EINVAL, pool_too_small(kind, shadow))
    mode = paging_mode(kind, hap)
    pool_mb = paging_pool_mb(kind, hap, shadow, maxmem_mb, maxvcpus)
    spec.type = kind
    if mode is not PagingMode.DIRECT:
        spec.hap = mode is PagingMode.HAP
        spec.shadow_memory_mb = pool_mb
    return mode, pool_mb
