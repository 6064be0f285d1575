"""The hypervisor: one object that owns every core and carries out the
domain lifecycle across them (create, destroy, pause, shutdown policy).

The cores (memory, grants, evtchn, xenstore, domains) are pure; this module
is where their actions meet processes, shared memory and the doorbell.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import platform
import secrets
import socket
import time
from pathlib import Path

from xenlab.hypervisor.config import HypervisorConfig
from xenlab.hypervisor.doorbell import UpcallRouter
from xenlab.hypervisor.domains import Domain, DomainTable, RunState
from xenlab.hypervisor.evtchn import EventChannels
from xenlab.hypervisor.grants import PRIVILEGED_MAX_MAPTRACK, GrantTables
from xenlab.hypervisor.identity import Caller, Identity
from xenlab.launchers import make_launcher
from xenlab.launchers.base import DomainHandles, DomainProcess, Launcher
from xenlab.launchers.domains_dir import DomainsDir
from xenlab.xen.start_info import StartInfo
from xenlab.hypervisor.memory import MachineMemory
from xenlab.hypervisor import vif as vifs
from xenlab.hypervisor.xenstore import XenStore
from xenlab.hypervisor.xenstore_server import XenStoreConnections
from xenlab.hypervisor.xenstored import Xenstored, XsConnection
from xenlab.hypervisor.xenstored_ring import STORE_DOMID, STORE_GFN, StoreRings
from xenlab.hypervisor.xenstored_socket import XenstoredSocket
from xenlab.rundir import Rundir
from xenlab.xen import abi
from xenlab.xen.digits import is_decimal
from xenlab.xen.errors import DomainError, XenError
from xenlab.xen.shared_info import SharedInfo
from xenlab.xen.xs_ring import XsRingPage

log = logging.getLogger(__name__)

DOM0 = Caller(0, privileged=True)
PAGES_PER_MB = (1 << 20) // abi.PAGE_SIZE
XEN_VERSION = "4.19-xenlab"

# Subtrees of /local/domain/N the guest may write (libxl's rwperm paths);
# everything else under it is read-only to the guest (roperm).
GUEST_WRITABLE = ("device", "data", "drivers", "feature", "attr", "error", "control/shutdown",
                  "control/feature-poweroff", "control/feature-reboot",
                  "control/feature-suspend", "control/sysrq")


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
        self.doorbell = UpcallRouter(authenticate=self._doorbell_auth, on_send=self._doorbell_send,
                                     on_copy=self.grants.copy_gnttab,
                                     on_memory=self._doorbell_memory)
        self.evtchn = EventChannels(kick=self.doorbell.kick,
                                    default_max_ports=config.evtchn_max_ports)
        self.xs_connections = XenStoreConnections(quotas=config.xenstore_quotas)
        self.xenstore = XenStore(fire=self._fire_watch, quotas=config.xenstore_quotas)
        self.xenstored = Xenstored(self.xenstore, self.domain_exists)
        self.xenstored_socket = XenstoredSocket(self.xenstored, self.rundir.xenstored_socket)
        self.store_rings = StoreRings(self.xenstored, self.memory, self.evtchn, self.is_privileged)
        self.domains_dir = DomainsDir(self.rundir.path, config.domain_uids, config.domains_dir)
        self.launcher = launcher or self._make_launcher(config.launcher)
        self.launchers: dict[str, Launcher] = {self.launcher.name: self.launcher}
        self._procs: dict[int, DomainProcess] = {}
        self._reapers: dict[int, asyncio.Task] = {}
        self._shared_info: dict[int, SharedInfo] = {}
        self._state_changed = asyncio.Event()
        # Called (no arguments) after every domain state change: created,
        # paused, unpaused, shut down, dying, destroyed (xenlab.events).
        self.observers: list = []
        self.dom0_secret = ""

    # -- start and stop ------------------------------------------------------
    async def start(self) -> None:
        self._reap_stale_segments()
        self.rundir.create()
        # Before the first segment: what a SIGKILL leaves can then be found.
        self.rundir.record_hypervisor((self.memory.shm_dir / self.memory.prefix).absolute(),
                                      self.domains_dir.path if self.domains_dir.isolated else None)
        dom0 = self.domains.add_dom0(self.config.dom0_memory_mb * PAGES_PER_MB,
                                     self.config.dom0_vcpus)
        self._add_to_cores(dom0, dom0.max_pages)
        self.dom0_secret = self.identity.issue(0, privileged=True)
        self._write_domain_tree(dom0)
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
        for dom in list(self.domains):
            if dom.domid != 0:
                await self.destroy_domain(dom.domid)
        await self.doorbell.close()
        await self.xenstored_socket.close()
        self._remove_from_cores(0)
        for launcher in self.launchers.values():
            await launcher.close()
        self.domains_dir.close()
        self.rundir.withdraw_hypervisor()

    # -- helpers for servicers -------------------------------------------------
    def domain_exists(self, domid: int) -> bool:
        return domid in self.domains

    def is_privileged(self, domid: int) -> bool:
        return domid in self.domains and self.domains.get(domid).privileged

    def process(self, domid: int) -> DomainProcess | None:
        return self._procs.get(domid)

    def _fire_watch(self, conn, path: str, token: str) -> None:
        """The XenStore core's watch events, to whichever kind of connection
        set the watch: a gRPC WatchStream or a xenstored wire connection."""
        if isinstance(conn, XsConnection):
            conn.fire(path, token)
        else:
            self.xs_connections.fire(conn, path, token)

    def _doorbell_auth(self, domid: int, secret: str) -> Caller:
        return self.identity.check(str(domid), secret)

    def _doorbell_memory(self, caller: Caller) -> int:
        """A domain's own memory object, to the domain HELLO authenticated,
        and once: a launcher that hands it over at start has used that once
        (_launch). A domain that could ask again would get a descriptor to
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

    def _doorbell_send(self, domid: int, port: int) -> None:
        try:
            self.evtchn.send(domid, port)
        except XenError as err:
            log.debug("d%d: doorbell send on port %d refused: %s", domid, port, err)

    # -- create ------------------------------------------------------------------
    async def create_domain(self, spec, paused: bool = False) -> tuple[Domain, str]:
        memory_mb = spec.memory_mb or 128
        maxmem_mb = spec.maxmem_mb or memory_mb
        if maxmem_mb < memory_mb:
            raise DomainError(errno.EINVAL, f"maxmem={maxmem_mb} is below memory={memory_mb}")
        launcher = self._launcher_for(spec.launcher)
        vcpus = spec.vcpus or 1
        if spec.maxvcpus and spec.maxvcpus < vcpus:
            raise DomainError(errno.EINVAL, f"maxvcpus={spec.maxvcpus} is below vcpus={vcpus}")
        dom = self.domains.allocate(
            spec.name, maxmem_mb * PAGES_PER_MB, spec.maxvcpus or vcpus, spec.uuid,
            on_poweroff=spec.on_poweroff or "destroy", on_reboot=spec.on_reboot or "restart",
            on_crash=spec.on_crash or "destroy")
        dom.spec = spec
        dom.online_vcpus = vcpus
        dom.launcher = launcher.name
        try:
            nics = self._plan_vifs(dom.domid, list(spec.vif))
            self._add_to_cores(dom, memory_mb * PAGES_PER_MB)
            secret = self.identity.issue(dom.domid)
            self._write_domain_tree(dom)
            for nodes in nics:
                self._write_vif(nodes)
            store_port = self._build_store(dom)
            self.xenstored.introduce(dom.domid, STORE_GFN, store_port)
            token = secrets.token_urlsafe(32)
            proc = await self._launch(launcher, dom, secret, token)
        except BaseException:
            await self._teardown(dom)
            raise
        dom.agent = proc.agent if proc is not None else self._agent_without_process(dom.domid)
        dom.agent_token = token
        self._record_agent(dom.domid, dom.agent, token)
        if proc is not None:
            self._procs[dom.domid] = proc
            self._reapers[dom.domid] = asyncio.create_task(self._reap(dom, proc))
            if paused:
                proc.pause()
        if paused:
            dom.state = RunState.PAUSED
        log.info("created d%d (%s): %d MiB, %d vCPU, launcher %s", dom.domid, dom.name,
                 memory_mb, dom.vcpus, launcher.name)
        self._changed()
        return dom, secret

    # -- vifs (libxl_nic.c) ---------------------------------------------------------
    def _plan_vifs(self, domid: int, specs: list, first_devid: int = 0) -> list[vifs.VifNodes]:
        """Every vif's nodes, checked before anything is written, so that a
        bad vif leaves nothing half-created."""
        plans, macs = [], self._macs_by_bridge()
        for offset, spec in enumerate(specs):
            devid = first_devid + offset
            backend_id = self._backend_domid(spec.backend)
            mac = vifs.pick_mac(spec.mac)
            bridge = vifs.check_bridge(spec.bridge or abi.DEFAULT_BRIDGE)
            self._check_bridge_runs(devid, bridge)
            if (bridge, mac) in macs:
                raise DomainError(errno.EEXIST, f"vif {devid}: mac {mac} is already used on "
                                                f"bridge {bridge} by {macs[(bridge, mac)]}")
            macs[(bridge, mac)] = f"d{domid} vif {devid}"
            plans.append(vifs.vif_nodes(domid, devid, backend_id, spec, mac))
        return plans

    def _backend_domid(self, backend: str) -> int:
        if not backend:
            return 0
        dom = self.domains.lookup(name=backend)
        if dom.state not in (RunState.RUNNING, RunState.PAUSED):
            raise DomainError(errno.EINVAL, f"backend domain {backend!r} is not running")
        return dom.domid

    def _check_bridge_runs(self, devid: int, bridge: str) -> None:
        """Once bridge services have registered (/tool/xenlab/bridges), a vif
        on any other bridge is refused now, as a failing vif-bridge makes
        xl create fail; with none registered, the backend's hotplug judges."""
        try:
            running = self.xenstore.directory(DOM0, vifs.BRIDGE_REGISTRY)
        except XenError:
            return
        if running and bridge not in running:
            raise DomainError(errno.ENOENT, f"vif {devid}: no bridge {bridge!r} is running "
                                            f"(bridges: {', '.join(sorted(running))})")

    def _macs_by_bridge(self) -> dict[tuple[str, str], str]:
        found = {}
        for dom in self.domains:
            for devid, record in self._vif_records(dom.domid):
                found[(record.get("bridge", ""), record.get("mac", ""))] = f"d{dom.domid} vif {devid}"
        return found

    def _write_vif(self, nodes: vifs.VifNodes) -> None:
        for path, values, perms in ((nodes.backend_path, nodes.backend, nodes.backend_perms),
                                    (nodes.frontend_path, nodes.frontend, nodes.frontend_perms)):
            self.xenstore.write(DOM0, path, b"")
            self.xenstore.set_perms(DOM0, path, perms)
            for key, value in values.items():
                self.xenstore.write(DOM0, f"{path}/{key}", value.encode())
                self.xenstore.set_perms(DOM0, f"{path}/{key}", perms)
        # The backend's per-domain directory must be readable by its owner.
        parent = nodes.backend_path.rsplit("/", 1)[0]
        backend_id = int(nodes.backend_perms[0][0])
        for path in (parent.rsplit("/", 1)[0], parent):
            self.xenstore.set_perms(DOM0, path, [(backend_id, "n")])
        # libxl's own record of the device (/libxl/DOMID/device/vif/DEVID),
        # readable by Domain-0 only: the frontend directory is the guest's to
        # rewrite, so where the backend is and which MAC the vif has are never
        # read back from it.
        record = vifs.record_path(nodes.domid, nodes.devid)
        for key, value in nodes.record().items():
            self.xenstore.write(DOM0, f"{record}/{key}", value.encode())

    def _read_dir(self, path: str) -> dict[str, str]:
        out = {}
        try:
            names = self.xenstore.directory(DOM0, path)
        except XenError:
            return out
        for name in names:
            try:
                out[name] = self.xenstore.read(DOM0, f"{path}/{name}").decode(errors="replace")
            except XenError:
                pass
        return out

    def _vif_records(self, domid: int) -> list[tuple[int, dict]]:
        """The toolstack's own record of each vif it attached to ``domid``."""
        base = vifs.record_path(domid)
        try:
            devids = sorted(int(d) for d in self.xenstore.directory(DOM0, base) if is_decimal(d))
        except XenError:
            return []
        return [(devid, self._read_dir(f"{base}/{devid}")) for devid in devids]

    def _vif_dirs(self, domid: int) -> list[tuple[int, dict, dict]]:
        """(devid, frontend dir, backend dir) of each vif, found through the
        toolstack's record; the record's mac, bridge and backend path win
        over what either directory says now."""
        out = []
        for devid, record in self._vif_records(domid):
            front = self._read_dir(vifs.frontend_path(domid, devid))
            back = self._read_dir(record["backend"]) if record.get("backend") else {}
            front.update({k: record[k] for k in ("backend", "backend-id", "mac") if k in record})
            back.update({k: record[k] for k in ("bridge",) if k in record})
            out.append((devid, front, back))
        return out

    def network_list(self, domid: int) -> list[dict]:
        self.domains.get(domid)
        return [vifs.vif_info(domid, devid, front, back) for devid, front, back in self._vif_dirs(domid)]

    def network_attach(self, domid: int, spec) -> dict:
        dom = self.domains.get(domid)
        if dom.state not in (RunState.RUNNING, RunState.PAUSED):
            raise DomainError(errno.EINVAL, f"d{domid} is {dom.state.value}: cannot attach a vif")
        existing = [devid for devid, _, _ in self._vif_dirs(domid)]
        devid = max(existing) + 1 if existing else 0
        (nodes,) = self._plan_vifs(domid, [spec], first_devid=devid)
        self._write_vif(nodes)
        return next(v for v in self.network_list(domid) if v["devid"] == devid)

    async def network_detach(self, domid: int, device: str, force: bool = False,
                             timeout: float = 10.0) -> None:
        """libxl_device_nic_remove: ask the backend to close (online=0,
        state=Closing), wait for Closed, then remove both directories. A
        backend that does not close within ``timeout`` (its frontend never
        answers, say) is removed forcibly, as libxl re-runs a remove that
        timed out with LIBXL__FORCE_ON; ``force`` (libxl_device_nic_destroy)
        starts there. The backend's own removal is what tears it down."""
        self.domains.get(domid)
        match = [(devid, front) for devid, front, _ in self._vif_dirs(domid)
                 if device == str(devid) or device.lower() == front.get("mac", "").lower()]
        if not match:
            raise DomainError(errno.ENOENT, f"d{domid} has no vif {device!r}")
        devid, front = match[0]
        bpath, fpath = front.get("backend", ""), vifs.frontend_path(domid, devid)
        if bpath and self.xenstore.exists(bpath):
            closed = await self._close_backend(bpath, fpath, force, timeout)
            if not closed and not force:
                log.warning("vif %d of d%d: the backend did not reach Closed within %gs; "
                            "removing the device forcibly", devid, domid, timeout)
                closed = await self._close_backend(bpath, fpath, True, timeout)
            if not closed:
                log.warning("vif %d of d%d: removing a backend that never reached Closed",
                            devid, domid)
            self._rm_backend_dir(bpath)
        for path in (fpath, vifs.record_path(domid, devid)):
            if self.xenstore.exists(path):
                self.xenstore.rm(DOM0, path)

    async def _close_backend(self, bpath: str, fpath: str, force: bool, timeout: float) -> bool:
        """libxl__initiate_device_generic_remove; True once the backend is
        Closed (or gone). Forced, the frontend directory goes first: a
        backend that is alive sees its frontend vanish and closes."""
        if force and self.xenstore.exists(fpath):
            self.xenstore.rm(DOM0, fpath)
        if not self.xenstore.exists(bpath):
            return True
        closed_state = str(int(abi.XenbusState.Closed))
        self.xenstore.write(DOM0, f"{bpath}/online", b"0")
        # A backend already Closed (netback disabled the vif, say) is left
        # Closed, not sent back to Closing to wait for a Closed that never comes.
        if self._read_value(f"{bpath}/state") != closed_state:
            self.xenstore.write(DOM0, f"{bpath}/state", str(int(abi.XenbusState.Closing)).encode())
        return await self._wait_xenstore(f"{bpath}/state", closed_state, timeout)

    def _read_value(self, path: str) -> str | None:
        try:
            return self.xenstore.read(DOM0, path).decode(errors="replace")
        except XenError:
            return None

    async def _wait_xenstore(self, path: str, value: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.xenstore.read(DOM0, path) == value.encode():
                    return True
            except XenError:
                return True     # the node went away: the backend is gone too
            await asyncio.sleep(0.05)
        return False

    def _remove_backends(self, domid: int) -> None:
        """A dying domain's vifs: remove their backend directories so that
        the backend tears the devices down at once (libxl on destroy)."""
        for _, record in self._vif_records(domid):
            if record.get("backend"):
                self._rm_backend_dir(record["backend"])

    def _rm_backend_dir(self, bpath: str) -> None:
        """A device's backend directory, and backend/TYPE/DOMID once empty
        (as libxl__xs_path_cleanup removes the parents it emptied)."""
        if self.xenstore.exists(bpath):
            self.xenstore.rm(DOM0, bpath)
        parent = bpath.rsplit("/", 1)[0]
        if self.xenstore.exists(parent) and not self.xenstore.directory(DOM0, parent):
            self.xenstore.rm(DOM0, parent)

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
        dom = self.domains.get(domid)
        if dom.state not in (RunState.RUNNING, RunState.PAUSED):
            raise DomainError(errno.EINVAL, f"d{domid} is {dom.state.value}: destroy it instead")
        holder = Caller(domid, privileged=dom.privileged)
        mappings = self.grants.mappings(domid)
        for mapping in mappings:
            self.grants.unmap(holder, mapping.handle)
        ports = len(self.evtchn.ports(domid))
        self.evtchn.reset(DOM0, domid)
        closed, frontends = [], []
        closed_state = str(int(abi.XenbusState.Closed)).encode()
        for path in self._backend_dirs(domid):
            try:
                # A driver domain that is not Domain-0 owns its backend directories.
                frontend = self.xenstore.read(DOM0, f"{path}/frontend").decode(errors="replace")
                if self.xenstore.read(DOM0, f"{path}/state") != closed_state:
                    self.xenstore.write(DOM0, f"{path}/state", closed_state)
                    closed.append(path)
                if self.xenstore.exists(f"{path}/hotplug-status"):
                    self.xenstore.rm(DOM0, f"{path}/hotplug-status")
            except XenError:
                continue        # a half-written or vanishing directory
            frontends.append(frontend)
        log.info("d%d's backend kernel is gone: %d mapping(s) and %d port(s) released, "
                 "%d backend(s) Closed", domid, len(mappings), ports, len(closed))
        stuck = await self._wait_closed(frontends, timeout)
        return dict(closed=closed, stuck=stuck, unmapped=len(mappings), ports=ports)

    def _backend_dirs(self, domid: int) -> list[str]:
        """/local/domain/B/backend/TYPE/FRONTEND/DEVID, every one."""
        out, base = [], f"/local/domain/{domid}/backend"
        for kind in self._directory(base):
            for front in self._directory(f"{base}/{kind}"):
                out.extend(f"{base}/{kind}/{front}/{devid}"
                           for devid in self._directory(f"{base}/{kind}/{front}"))
        return out

    def _directory(self, path: str) -> list[str]:
        try:
            return sorted(self.xenstore.directory(DOM0, path))
        except XenError:
            return []

    async def _wait_closed(self, frontends: list[str], timeout: float) -> list[str]:
        closed = str(int(abi.XenbusState.Closed)).encode()
        deadline = time.monotonic() + timeout
        while True:
            waiting = []
            for path in frontends:
                try:
                    if self.xenstore.read(DOM0, f"{path}/state") != closed:
                        waiting.append(path)
                except XenError:
                    pass        # the frontend is gone altogether
            if not waiting or time.monotonic() >= deadline:
                return waiting
            await asyncio.sleep(0.02)

    def _launcher_for(self, name: str) -> Launcher:
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
                             private=(self.rundir.path, Path(self.config.shm_dir)))

    async def _launch(self, launcher: Launcher, dom: Domain, secret: str,
                      token: str) -> DomainProcess | None:
        """Start the domain's process, handing it its memory object and a
        doorbell connection already made for it where the launcher can pass
        descriptors: it is told no path into the rundir or /dev/shm."""
        info = self._start_info(dom, secret, token, launcher)
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
                    launcher: Launcher | None = None) -> StartInfo:
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
        return StartInfo(domid=dom.domid, name=dom.name, secret=secret,
                         hypervisor=self.domains_dir.hypervisor_address or self.address,
                         doorbell=doorbell, vcpus=dom.vcpus, console_log=str(console),
                         agent_token=agent_token, store_gfn=store.gfn if store else 0,
                         store_port=store.port if store else 0)

    def _agent_without_process(self, domid: int) -> str:
        """A domain with no launcher process (launcher none) is run by the
        toolstack itself: it gets a directory and an agent address all the
        same, returned with its credentials."""
        self.domains_dir.domain_dir(domid)
        return self.domains_dir.agent_address(domid)

    def _record_agent(self, domid: int, address: str, token: str) -> None:
        """The toolstack's record of where the guest agent is and what opens
        it: the address is the launcher's, never what the guest says."""
        if not address:
            return
        base = vifs.agent_record_path(domid)
        self.xenstore.write(DOM0, f"{base}/address", address.encode())
        self.xenstore.write(DOM0, f"{base}/token", token.encode())

    def console_log(self, dom: Domain) -> Path:
        return self.rundir.logs / f"d{dom.domid}-{dom.name}.console"

    address = ""   # set by the server once it listens

    def _add_to_cores(self, dom: Domain, initial_pages: int) -> None:
        self.memory.add_domain(dom.domid, dom.max_pages, initial_pages)
        buf, offset = self.memory.shared_info_buffer(dom.domid)
        shared = SharedInfo(buf, offset, dom.vcpus)
        self._shared_info[dom.domid] = shared
        self.evtchn.add_domain(dom.domid, shared, dom.vcpus)
        self.grants.add_domain(dom.domid, self.config.grant_frames,
                               PRIVILEGED_MAX_MAPTRACK if dom.privileged else None)

    def _remove_from_cores(self, domid: int) -> None:
        for step in (self.evtchn.remove_domain, self.grants.remove_domain):
            try:
                step(domid)
            except XenError:
                pass
        shared = self._shared_info.pop(domid, None)
        if shared is not None:
            shared.release()
        try:
            self.memory.remove_domain(domid)
        except XenError:
            pass

    def _write_domain_tree(self, dom: Domain) -> None:
        """The nodes libxl writes for a new domain, with libxl's permissions:
        /local/domain/N readable by N, its rw subtrees owned by N."""
        xs, d = self.xenstore, dom.domid
        base = f"/local/domain/{d}"
        vm = f"/vm/{dom.uuid}"
        current, maximum, target = self.memory.reservation(d)
        ro = [(0, "n"), (d, "r")] if d else [(0, "n")]
        rw = [(d, "n")]
        values = {
            "name": dom.name, "domid": str(d), "vm": vm,
            "memory/static-max": str(maximum * 4), "memory/target": str(target * 4),
            "memory/videoram": "-1",
            "control/shutdown": "", "control/platform-feature-multiprocessor-suspend": "1",
            "control/feature-poweroff": "", "control/feature-reboot": "",
            "control/feature-suspend": "", "control/sysrq": "",
            "device": "", "data": "", "drivers": "", "feature": "", "attr": "", "error": "",
            "console/limit": "1048576", "console/type": "xenconsoled",
        }
        for vcpu in range(dom.vcpus):
            values[f"cpu/{vcpu}/availability"] = "online" if vcpu < dom.online_vcpus else "offline"
        xs.write(DOM0, base, b"")
        xs.set_perms(DOM0, base, ro)
        for key, value in values.items():
            xs.write(DOM0, f"{base}/{key}", value.encode())
            xs.set_perms(DOM0, f"{base}/{key}", rw if self._guest_writable(key) else ro)
        for sub in ("memory", "control", "cpu", "console"):
            xs.set_perms(DOM0, f"{base}/{sub}", ro)
        for vcpu in range(dom.vcpus):
            xs.set_perms(DOM0, f"{base}/cpu/{vcpu}", ro)
        if d:
            xs.write(DOM0, vm, b"")
            xs.set_perms(DOM0, vm, ro)
            for key, value in {"name": dom.name, "uuid": dom.uuid,
                               "start_time": f"{time.time():.2f}",
                               "image/ostype": "linux"}.items():
                xs.write(DOM0, f"{vm}/{key}", value.encode())

    def _build_store(self, dom: Domain) -> int:
        """The store page (a clear xenstore_domain_interface, as the domain
        builder leaves it) and an unbound port offered to the store domain,
        published as libxl does in store/ring-ref and store/port, read-only
        to the guest. The port is xenstored's to bind when introduced."""
        view = self.memory.frame(dom.domid, STORE_GFN)
        page = XsRingPage(view)
        page.clear()
        page.release()
        view.release()
        port = self.evtchn.alloc_unbound(DOM0, dom.domid, STORE_DOMID)
        base = f"/local/domain/{dom.domid}/store"
        self.xenstore.write(DOM0, f"{base}/ring-ref", str(STORE_GFN).encode())
        self.xenstore.write(DOM0, f"{base}/port", str(port).encode())
        for path in (base, f"{base}/ring-ref", f"{base}/port"):
            self.xenstore.set_perms(DOM0, path, [(0, "n"), (dom.domid, "r")])
        return port

    @staticmethod
    def _guest_writable(key: str) -> bool:
        return any(key == p or key.startswith(p + "/") for p in GUEST_WRITABLE)

    # -- destroy ---------------------------------------------------------------------
    async def destroy_domain(self, domid: int) -> None:
        if domid == 0:
            raise DomainError(errno.EPERM, "Domain-0 cannot be destroyed")
        dom = self.domains.get(domid)
        if dom.state is RunState.DYING:
            return
        await self._teardown(dom)

    async def _teardown(self, dom: Domain) -> None:
        """Undo everything a domain had: process, ports, grants, xenstore,
        memory, credentials. Its id stays taken until this is done."""
        dom.state = RunState.DYING
        self._changed()
        proc = self._procs.pop(dom.domid, None)
        reaper = self._reapers.pop(dom.domid, None)
        if reaper is not None and reaper is not asyncio.current_task():
            reaper.cancel()
        if proc is not None:
            await proc.kill()
        self._remove_backends(dom.domid)
        self.domains_dir.remove_domain_dir(dom.domid)
        self.doorbell.disconnect(dom.domid)
        self.xs_connections.disconnect(dom.domid)
        self.identity.revoke(dom.domid)
        self._remove_from_cores(dom.domid)
        for path in (f"/local/domain/{dom.domid}", f"/vm/{dom.uuid}", vifs.record_root(dom.domid)):
            if self.xenstore.exists(path):
                self.xenstore.rm(DOM0, path)
        self.xenstored.release(dom.domid)
        self.domains.remove(dom.domid)
        log.info("destroyed d%d (%s)", dom.domid, dom.name)
        self._changed()

    # -- pause / shutdown ------------------------------------------------------------
    def pause(self, domid: int) -> None:
        dom = self._running_domu(domid, "pause")
        if dom.state is RunState.PAUSED:
            return
        proc = self._procs.get(domid)
        if proc is not None:
            proc.pause()
        dom.state = RunState.PAUSED
        self._changed()

    def unpause(self, domid: int) -> None:
        dom = self._running_domu(domid, "unpause")
        if dom.state is not RunState.PAUSED:
            return
        proc = self._procs.get(domid)
        if proc is not None:
            proc.unpause()
        dom.state = RunState.RUNNING
        self._changed()

    def _running_domu(self, domid: int, what: str) -> Domain:
        dom = self.domains.get(domid)
        if domid == 0:
            raise DomainError(errno.EPERM, f"cannot {what} Domain-0")
        if dom.state not in (RunState.RUNNING, RunState.PAUSED):
            raise DomainError(errno.EINVAL, f"cannot {what} d{domid}: it is {dom.state.value}")
        return dom

    async def shutdown_domain(self, domid: int, reason: str, wait: bool = False,
                              timeout: float = 30.0) -> None:
        """xl shutdown/reboot: ask the guest through control/shutdown, as xl
        does; 'crash' is the hypervisor crashing it (domain_crash)."""
        if reason not in ("poweroff", "reboot", "crash"):
            raise DomainError(errno.EINVAL, f"shutdown reason {reason!r}: expected poweroff, reboot or crash")
        dom = self._running_domu(domid, "shut down")
        proc = self._procs.get(domid)
        if reason == "crash":
            dom.shutdown_reason = "crash"
            if proc is not None:
                await proc.kill()          # the reaper applies on_crash
            else:
                await self._apply_policy(dom, "crash")
        elif proc is None:
            # No guest to ask (launcher none): shut it down from outside,
            # as SCHEDOP_remote_shutdown does.
            await self._apply_policy(dom, reason)
        else:
            if dom.state is RunState.PAUSED:
                raise DomainError(errno.EBUSY, f"d{domid} is paused: unpause it first, or it cannot react")
            self.xenstore.write(DOM0, f"/local/domain/{domid}/control/shutdown", reason.encode())
        if wait:
            await self.wait_gone_or_stopped(dom, timeout)

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
                await asyncio.wait_for(self._state_changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def sched_shutdown(self, domid: int, reason: str) -> None:
        """SCHEDOP_shutdown from the domain itself: remember why; the process
        exit that follows is handled with this reason."""
        if reason not in abi.SHUTDOWN_REASONS:
            raise DomainError(errno.EINVAL, f"unknown shutdown reason {reason!r}")
        dom = self.domains.get(domid)
        dom.shutdown_reason = reason
        if domid not in self._procs and domid != 0:
            asyncio.get_running_loop().create_task(self._apply_policy(dom, reason))

    async def _reap(self, dom: Domain, proc: DomainProcess) -> None:
        status = await proc.wait()
        if self._procs.get(dom.domid) is not proc:
            return
        del self._procs[dom.domid]
        self._reapers.pop(dom.domid, None)
        reason = dom.shutdown_reason or ("poweroff" if status == 0 else "crash")
        if reason != "crash" and status != 0:
            reason = "crash"
        log.info("d%d (%s): process %d exited with %s: %s", dom.domid, dom.name, proc.pid,
                 status, reason)
        await self._apply_policy(dom, reason)

    async def _apply_policy(self, dom: Domain, reason: str) -> None:
        action = dom.action_for(reason)
        dom.shutdown_reason = reason
        log.info("d%d (%s): %s -> on_%s=%s", dom.domid, dom.name, reason,
                 "crash" if reason not in ("poweroff", "reboot") else reason, action)
        if action in ("preserve", "coredump-preserve"):
            proc = self._procs.pop(dom.domid, None)
            if proc is not None:
                await proc.kill()
            dom.state = RunState.CRASHED if reason == "crash" else RunState.SHUTDOWN
            self._changed()
            return
        spec = dom.spec
        await self._teardown(dom)
        if action in ("restart", "rename-restart", "coredump-restart", "soft-reset") and spec is not None:
            try:
                new, _ = await self.create_domain(spec)
                log.info("restarted %s as d%d", spec.name, new.domid)
            except XenError as err:
                log.error("could not restart %s: %s", spec.name, err)

    def _changed(self) -> None:
        self._state_changed.set()
        for observer in list(self.observers):
            try:
                observer()
            except Exception:       # an observer must never break the lifecycle
                log.exception("domain state observer failed")

    # -- memory ------------------------------------------------------------------
    def set_memory_target(self, domid: int, kb: int) -> None:
        self.memory.set_target(domid, kb // 4)
        self.xenstore.write(DOM0, f"/local/domain/{domid}/memory/target", str(kb).encode())

    def set_memory_max(self, domid: int, kb: int) -> None:
        self.memory.set_max(domid, kb // 4)
        self.domains.get(domid).max_pages = kb // 4
        self.xenstore.write(DOM0, f"/local/domain/{domid}/memory/static-max", str(kb).encode())

    def set_vcpus(self, domid: int, vcpus: int) -> None:
        dom = self.domains.get(domid)
        if not 1 <= vcpus <= dom.vcpus:
            raise DomainError(errno.EINVAL, f"d{domid} has {dom.vcpus} vCPUs at most (maxvcpus); asked {vcpus}")
        for vcpu in range(dom.vcpus):
            state = "online" if vcpu < vcpus else "offline"
            self.xenstore.write(DOM0, f"/local/domain/{domid}/cpu/{vcpu}/availability", state.encode())
        dom.online_vcpus = vcpus

    # -- info -------------------------------------------------------------------------
    def domain_info(self, dom: Domain) -> dict:
        proc = self._procs.get(dom.domid)
        current, maximum, target = self.memory.reservation(dom.domid) if dom.state is not RunState.DYING else (0, 0, 0)
        return dict(domid=dom.domid, name=dom.name, uuid=dom.uuid,
                    state=dom.state_letters(proc.proc_state() if proc else ("R" if dom.domid == 0 else "")),
                    memory_kb=current * 4, maxmem_kb=maximum * 4, target_kb=target * 4,
                    vcpus=dom.online_vcpus, cpu_time=proc.cpu_time() if proc else 0.0,
                    privileged=dom.privileged, shutdown_reason=dom.shutdown_reason,
                    pid=proc.pid if proc else 0, launcher=dom.launcher)

    def host_info(self) -> dict:
        uname = platform.uname()
        return dict(host=uname.node, release=uname.release, xen_version=XEN_VERSION,
                    nr_cpus=os.cpu_count() or 1,
                    total_memory_kb=self.memory.total_pages * 4,
                    free_memory_kb=self.memory.free_pages * 4,
                    nr_domains=len(self.domains), xen_caps="xen-3.0-x86_64 (emulated by xenlab)",
                    rundir=str(self.rundir.path), doorbell=str(self.rundir.doorbell),
                    launcher=self.launcher.name, uptime=time.monotonic() - self.started)
