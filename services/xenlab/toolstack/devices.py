"""The toolstack's devices, carried out against the xenstore: vifs planned
and written (libxl_nic.c), listed, attached and detached, and backends
removed or closed (libxl_device.c).

The planning itself is pure (toolstack/vif.py); this is where its nodes
meet the xenstore, as Domain-0 writes them.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time

from xenlab.hypervisor.domains import Domain, DomainTable, RunState
from xenlab.hypervisor.caller import DOM0
from xenlab.hypervisor.xenstore import XenStore
from xenlab.toolstack import vif as vifs
from xenlab.xen import abi
from xenlab.xen.digits import is_decimal
from xenlab.xen.errors import DomainError, XenError
from xenlab.xen.names import DEFAULT_BRIDGE
from xenlab.xen.xenstore_paths import BRIDGE_REGISTRY, frontend_path, record_path

log = logging.getLogger(__name__)


class Devices:
    def __init__(self, xenstore: XenStore, domains: DomainTable):
        self.xs = xenstore
        self.domains = domains
        # (bridge, mac) -> {(domid, devid): domain} whose vif record said so
        # when it was written: which vifs to check for a clash, so that a
        # create reads one record, not every domain's (O(N) per create).
        # Each holder is checked against its record before it counts.
        self._mac_users: dict[tuple[str, str], dict[tuple[int, int], Domain]] = {}

    # -- planning and writing (libxl__device_nic_add) --------------------------------
    def plan_vifs(self, domid: int, specs: list, first_devid: int = 0) -> list[vifs.VifNodes]:
        """Every vif's nodes, checked before anything is written, so that a
        bad vif leaves nothing half-created."""
        plans, macs = [], {}
        for offset, spec in enumerate(specs):
            devid = first_devid + offset
            backend_id = self._backend_domid(spec.backend)
            mac = vifs.pick_mac(spec.mac)
            bridge = vifs.check_bridge(spec.bridge or DEFAULT_BRIDGE)
            self._check_bridge_runs(devid, bridge)
            user = macs.get((bridge, mac)) or self._mac_user(bridge, mac)
            if user is not None:
                raise DomainError(errno.EEXIST, f"vif {devid}: mac {mac} is already used on "
                                                f"bridge {bridge} by {user}")
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
            running = self.xs.directory(DOM0, BRIDGE_REGISTRY)
        except XenError:
            return
        if running and bridge not in running:
            raise DomainError(errno.ENOENT, f"vif {devid}: no bridge {bridge!r} is running "
                                            f"(bridges: {', '.join(sorted(running))})")

    def _mac_user(self, bridge: str, mac: str) -> str | None:
        """The vif that has ``mac`` on ``bridge``, if one does. A domain shut
        down or crashed will never send again: rename-restart's new domain
        takes its MACs while it is kept."""
        holders = self._mac_users.get((bridge, mac))
        if not holders:
            return None
        for (domid, devid), dom in list(holders.items()):
            record = self._read_dir(record_path(domid, devid)) if self.domains.find(domid) is dom else {}
            if (record.get("bridge", ""), record.get("mac", "")) != (bridge, mac):
                del holders[(domid, devid)]     # the vif, or its domain, is gone
                continue
            if dom.state not in (RunState.SHUTDOWN, RunState.CRASHED):
                return f"d{domid} vif {devid}"
        if not holders:
            del self._mac_users[(bridge, mac)]
        return None

    def write_vif(self, nodes: vifs.VifNodes) -> None:
        for path, values, perms in ((nodes.backend_path, nodes.backend, nodes.backend_perms),
                                    (nodes.frontend_path, nodes.frontend, nodes.frontend_perms)):
            self.xs.write(DOM0, path, b"")
            self.xs.set_perms(DOM0, path, perms)
            for key, value in values.items():
                self.xs.write(DOM0, f"{path}/{key}", value.encode())
                self.xs.set_perms(DOM0, f"{path}/{key}", perms)
        # The backend's per-domain directory must be readable by its owner.
        parent = nodes.backend_path.rsplit("/", 1)[0]
        backend_id = int(nodes.backend_perms[0][0])
        for path in (parent.rsplit("/", 1)[0], parent):
            # Set once: a set_perms fires the watches on the backend's whole
            # vif directory, which every vif it serves is under.
            if self.xs.get_perms(DOM0, path) != [(backend_id, "n")]:
                self.xs.set_perms(DOM0, path, [(backend_id, "n")])
        # libxl's own record of the device (/libxl/DOMID/device/vif/DEVID),
        # readable by Domain-0 only: the frontend directory is the guest's to
        # rewrite, so where the backend is and which MAC the vif has are never
        # read back from it.
        record = record_path(nodes.domid, nodes.devid)
        for key, value in nodes.record().items():
            self.xs.write(DOM0, f"{record}/{key}", value.encode())
        dom = self.domains.find(nodes.domid)
        if dom is not None:
            key = (nodes.backend["bridge"], nodes.backend["mac"])
            self._mac_users.setdefault(key, {})[(nodes.domid, nodes.devid)] = dom

    # -- reading back ----------------------------------------------------------------
    def _read_dir(self, path: str) -> dict[str, str]:
        out = {}
        try:
            names = self.xs.directory(DOM0, path)
        except XenError:
            return out
        for name in names:
            try:
                out[name] = self.xs.read(DOM0, f"{path}/{name}").decode(errors="replace")
            except XenError:
                pass
        return out

    def _vif_records(self, domid: int) -> list[tuple[int, dict]]:
        """The toolstack's own record of each vif it attached to ``domid``."""
        base = record_path(domid)
        try:
            devids = sorted(int(d) for d in self.xs.directory(DOM0, base) if is_decimal(d))
        except XenError:
            return []
        return [(devid, self._read_dir(f"{base}/{devid}")) for devid in devids]

    def _vif_dirs(self, domid: int) -> list[tuple[int, dict, dict]]:
        """(devid, frontend dir, backend dir) of each vif, found through the
        toolstack's record; the record's mac, bridge and backend path win
        over what either directory says now."""
        out = []
        for devid, record in self._vif_records(domid):
            front = self._read_dir(frontend_path(domid, devid))
            back = self._read_dir(record["backend"]) if record.get("backend") else {}
            front.update({k: record[k] for k in ("backend", "backend-id", "mac") if k in record})
            back.update({k: record[k] for k in ("bridge",) if k in record})
            out.append((devid, front, back))
        return out

    # -- xl network-list, network-attach, network-detach -------------------------------
    def network_list(self, domid: int) -> list[dict]:
        self.domains.get(domid)
        return [vifs.vif_info(domid, devid, front, back) for devid, front, back in self._vif_dirs(domid)]

    def network_attach(self, domid: int, spec) -> dict:
        dom = self.domains.get(domid)
        if dom.state not in (RunState.RUNNING, RunState.PAUSED):
            raise DomainError(errno.EINVAL, f"d{domid} is {dom.state.value}: cannot attach a vif")
        existing = [devid for devid, _, _ in self._vif_dirs(domid)]
        devid = max(existing) + 1 if existing else 0
        (nodes,) = self.plan_vifs(domid, [spec], first_devid=devid)
        self.write_vif(nodes)
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
        bpath, fpath = front.get("backend", ""), frontend_path(domid, devid)
        if bpath and self.xs.exists(bpath):
            closed = await self._close_backend(bpath, fpath, force, timeout)
            if not closed and not force:
                log.warning("vif %d of d%d: the backend did not reach Closed within %gs; "
                            "removing the device forcibly", devid, domid, timeout)
                closed = await self._close_backend(bpath, fpath, True, timeout)
            if not closed:
                log.warning("vif %d of d%d: removing a backend that never reached Closed",
                            devid, domid)
            self._rm_backend_dir(bpath)
        for path in (fpath, record_path(domid, devid)):
            if self.xs.exists(path):
                self.xs.rm(DOM0, path)

    async def _close_backend(self, bpath: str, fpath: str, force: bool, timeout: float) -> bool:
        """libxl__initiate_device_generic_remove; True once the backend is
        Closed (or gone). Forced, the frontend directory goes first: a
        backend that is alive sees its frontend vanish and closes."""
        if force and self.xs.exists(fpath):
            self.xs.rm(DOM0, fpath)
        if not self.xs.exists(bpath):
            return True
        closed_state = str(int(abi.XenbusState.Closed))
        self.xs.write(DOM0, f"{bpath}/online", b"0")
        # A backend already Closed (netback disabled the vif, say) is left
        # Closed, not sent back to Closing to wait for a Closed that never comes.
        if self._read_value(f"{bpath}/state") != closed_state:
            self.xs.write(DOM0, f"{bpath}/state", str(int(abi.XenbusState.Closing)).encode())
        return await self._wait_xenstore(f"{bpath}/state", closed_state, timeout)

    def _read_value(self, path: str) -> str | None:
        try:
            return self.xs.read(DOM0, path).decode(errors="replace")
        except XenError:
            return None

    async def _wait_xenstore(self, path: str, value: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.xs.read(DOM0, path) == value.encode():
                    return True
            except XenError:
                return True     # the node went away: the backend is gone too
            await asyncio.sleep(0.05)
        return False

    # -- backends of a domain that dies, or of a backend kernel that died -------------
    def remove_backends(self, domid: int) -> None:
        """A dying domain's vifs: remove their backend directories so that
        the backend tears the devices down at once (libxl on destroy)."""
        for _, record in self._vif_records(domid):
            if record.get("backend"):
                self._rm_backend_dir(record["backend"])

    def _rm_backend_dir(self, bpath: str) -> None:
        """A device's backend directory, and backend/TYPE/DOMID once empty
        (as libxl__xs_path_cleanup removes the parents it emptied)."""
        if self.xs.exists(bpath):
            self.xs.rm(DOM0, bpath)
        parent = bpath.rsplit("/", 1)[0]
        if self.xs.exists(parent) and not self.xs.directory(DOM0, parent):
            self.xs.rm(DOM0, parent)

    def close_backends(self, domid: int) -> tuple[list[str], list[str]]:
        """Every backend that domain ``domid`` serves marked Closed, without
        its hotplug-status (as netback_remove leaves it), so that each
        frontend disconnects: (the backends closed now, the frontends of all
        of them)."""
        closed, frontends = [], []
        closed_state = str(int(abi.XenbusState.Closed)).encode()
        for path in self._backend_dirs(domid):
            if path.startswith(f"/local/domain/{domid}/backend/console/"):
                continue    # served by xenconsoled, which outlives the backend's kernel
            try:
                # A driver domain that is not Domain-0 owns its backend directories.
                frontend = self.xs.read(DOM0, f"{path}/frontend").decode(errors="replace")
                if self.xs.read(DOM0, f"{path}/state") != closed_state:
                    self.xs.write(DOM0, f"{path}/state", closed_state)
                    closed.append(path)
                if self.xs.exists(f"{path}/hotplug-status"):
                    self.xs.rm(DOM0, f"{path}/hotplug-status")
            except XenError:
                continue        # a half-written or vanishing directory
            frontends.append(frontend)
        return closed, frontends

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
            return sorted(self.xs.directory(DOM0, path))
        except XenError:
            return []

    async def wait_closed(self, frontends: list[str], timeout: float) -> list[str]:
        """The frontends of ``frontends`` not Closed after ``timeout``."""
        closed = str(int(abi.XenbusState.Closed)).encode()
        deadline = time.monotonic() + timeout
        while True:
            waiting = []
            for path in frontends:
                try:
                    if self.xs.read(DOM0, f"{path}/state") != closed:
                        waiting.append(path)
                except XenError:
                    pass        # the frontend is gone altogether
            if not waiting or time.monotonic() >= deadline:
                return waiting
            await asyncio.sleep(0.02)
