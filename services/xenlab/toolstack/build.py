"""The nodes libxl writes for a new domain, and the domain builder's store
page and port.

``write_domain_tree`` is libxl__domain_make's /local/domain/D and /vm/UUID,
with libxl's permissions; ``setup_store`` is what the domain builder and
libxl__build_pre/post do for xenstore: a clear store page, an unbound port
offered to the store domain, both published in store/ring-ref and
store/port. ``remove_domain_tree`` is libxl__destroy_domid's removal of all
of it, the toolstack's record included.
"""
from __future__ import annotations

import time

from xenlab.hypervisor.domains import Domain
from xenlab.hypervisor.evtchn import EventChannels
from xenlab.hypervisor.caller import DOM0
from xenlab.hypervisor.memory import MachineMemory
from xenlab.hypervisor.xenstore import XenStore
from xenlab.hypervisor.xenconsoled import CONSOLE_DOMID, CONSOLE_GFN
from xenlab.hypervisor.xenstored_ring import STORE_DOMID, STORE_GFN
from xenlab.xen import abi
from xenlab.xen import console as cons
from xenlab.xen.cmdline import kernel_cmdline
from xenlab.xen.xenstore_paths import console_backend_path, record_root
from xenlab.xen.xs_ring import XsRingPage

DOMAIN_TYPE = "pv"

# Subtrees of /local/domain/N the guest may write (libxl's rwperm paths);
# everything else under it is read-only to the guest (roperm).
GUEST_WRITABLE = ("device", "data", "drivers", "feature", "attr", "error", "control/shutdown",
                  "control/feature-poweroff", "control/feature-reboot",
                  "control/feature-suspend", "control/sysrq")


def guest_writable(key: str) -> bool:
    return any(key == p or key.startswith(p + "/") for p in GUEST_WRITABLE)


def write_domain_tree(xs: XenStore, dom: Domain, reservation: tuple[int, int, int]) -> None:
    """The nodes libxl writes for a new domain, with libxl's permissions:
    /local/domain/N readable by N, its rw subtrees owned by N.
    ``reservation``: the domain's (current, maximum, target) pages."""
    d = dom.domid
    base = f"/local/domain/{d}"
    vm = f"/vm/{dom.uuid}"
    current, maximum, target = reservation
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
    }
    for vcpu in range(dom.vcpus):
        values[f"cpu/{vcpu}/availability"] = "online" if vcpu < dom.online_vcpus else "offline"
    xs.write(DOM0, base, b"")
    xs.set_perms(DOM0, base, ro)
    for key, value in values.items():
        xs.write(DOM0, f"{base}/{key}", value.encode())
        xs.set_perms(DOM0, f"{base}/{key}", rw if guest_writable(key) else ro)
    for sub in ("memory", "control", "cpu"):
        xs.set_perms(DOM0, f"{base}/{sub}", ro)
    for vcpu in range(dom.vcpus):
        xs.set_perms(DOM0, f"{base}/cpu/{vcpu}", ro)
    if d:
        xs.write(DOM0, vm, b"")
        xs.set_perms(DOM0, vm, ro)
        image = {"image/ostype": "linux"}
        # libxl__domain_build records a PV guest's kernel command line here.
        cmdline = kernel_cmdline(dict(dom.spec.extra)) if dom.spec is not None else ""
        if cmdline:
            image["image/cmdline"] = cmdline
        for key, value in {"name": dom.name, "uuid": dom.uuid,
                           "start_time": f"{time.time():.2f}", **image}.items():
            xs.write(DOM0, f"{vm}/{key}", value.encode())
        # libxl__domain_make: the toolstack's own record of the domain type
        # (libxl_domain_type_to_string); every xenlab guest is PV.
        xs.write(DOM0, f"{record_root(d)}/type", DOMAIN_TYPE.encode())


def setup_store(xs: XenStore, memory: MachineMemory, evtchn: EventChannels, domid: int) -> int:
    """The store page (a clear xenstore_domain_interface, as the domain
    builder leaves it) and an unbound port offered to the store domain,
    published as libxl does in store/ring-ref and store/port, read-only
    to the guest. The port is xenstored's to bind when introduced."""
    view = memory.frame(domid, STORE_GFN)
    page = XsRingPage(view)
    page.clear()
    page.release()
    view.release()
    port = evtchn.alloc_unbound(DOM0, domid, STORE_DOMID)
    base = f"/local/domain/{domid}/store"
    xs.write(DOM0, f"{base}/ring-ref", str(STORE_GFN).encode())
    xs.write(DOM0, f"{base}/port", str(port).encode())
    for path in (base, f"{base}/ring-ref", f"{base}/port"):
        xs.set_perms(DOM0, path, [(0, "n"), (domid, "r")])
    return port


def setup_console(xs: XenStore, memory: MachineMemory, evtchn: EventChannels, domid: int) -> int:
    """The primary console, as the domain builder and libxl__device_console_add
    leave it: a clear console page (disconnected), an unbound port offered
    to the console backend's domain, and the nodes: the frontend directory
    /local/domain/D/console read-only to the guest (console 0 is the special
    case: no PV state machine, and nothing the guest may rewrite but
    backend-id), the backend directory under the backend domain, and
    libxl's own copy under /libxl. xenconsoled fills in ``tty``."""
    view = memory.frame(domid, CONSOLE_GFN)
    page = cons.ConsolePage(view)
    page.clear()
    page.release()
    view.release()
    port = evtchn.alloc_unbound(DOM0, domid, CONSOLE_DOMID)
    front, back = f"/local/domain/{domid}/console", console_backend_path(domid)
    ro = [(CONSOLE_DOMID, "n"), (domid, "r")]         # ro_frontend_perms, backend_perms
    rw = [(domid, "n"), (CONSOLE_DOMID, "r")]         # frontend_perms
    xs.write(DOM0, front, b"")
    xs.set_perms(DOM0, front, ro)
    xs.write(DOM0, f"{front}/backend", back.encode())
    xs.set_perms(DOM0, f"{front}/backend", ro)
    xs.write(DOM0, f"{front}/backend-id", str(CONSOLE_DOMID).encode())
    xs.set_perms(DOM0, f"{front}/backend-id", rw)
    for key, value in {"limit": str(cons.XENCONSOLE_LIMIT), "type": "xenconsoled",
                       "output": "pty", "tty": "", "port": str(port),
                       "ring-ref": str(CONSOLE_GFN)}.items():
        xs.write(DOM0, f"{front}/{key}", value.encode())
        xs.set_perms(DOM0, f"{front}/{key}", ro)
    backend = {"frontend": front, "frontend-id": str(domid), "online": "1",
               "state": str(int(abi.XenbusState.Initialising)),
               "protocol": cons.XENCONSOLE_PROTOCOL}
    xs.write(DOM0, back, b"")
    xs.set_perms(DOM0, back, ro)
    for key, value in backend.items():
        xs.write(DOM0, f"{back}/{key}", value.encode())
        xs.set_perms(DOM0, f"{back}/{key}", ro)
    record = f"{record_root(domid)}/device/console/0"
    for key, value in {**backend, "backend": back}.items():
        xs.write(DOM0, f"{record}/{key}", value.encode())
    return port


def rename_domain(xs: XenStore, dom: Domain, name: str, uuid: str) -> None:
    """libxl__domain_rename's nodes (and, with a new uuid, the /vm/UUID
    directory under its new name, as libxl_domain_preserve moves it)."""
    base = f"/local/domain/{dom.domid}"
    old_vm, vm = f"/vm/{dom.uuid}", f"/vm/{uuid}"
    xs.write(DOM0, f"{base}/name", name.encode())
    if not xs.exists(old_vm):
        return
    if vm != old_vm:
        for path in sorted(p for p in xs.nodes() if p == old_vm or p.startswith(old_vm + "/")):
            node = xs.nodes()[path]
            xs.write(DOM0, vm + path[len(old_vm):], node.value)
            xs.set_perms(DOM0, vm + path[len(old_vm):], node.perms)
        xs.rm(DOM0, old_vm)
        xs.write(DOM0, f"{base}/vm", vm.encode())
        xs.write(DOM0, f"{vm}/uuid", uuid.encode())
    xs.write(DOM0, f"{vm}/name", name.encode())


def remove_domain_tree(xs: XenStore, dom: Domain) -> None:
    """/local/domain/N, /vm/UUID, the console's backend directory (and its
    parent once empty) and the toolstack's own /libxl/N."""
    back = console_backend_path(dom.domid)
    for path in (f"/local/domain/{dom.domid}", f"/vm/{dom.uuid}", back.rsplit("/", 1)[0],
                 record_root(dom.domid)):
        if xs.exists(path):
            xs.rm(DOM0, path)
    kinds = back.rsplit("/", 2)[0]
    if xs.exists(kinds) and not xs.directory(DOM0, kinds):
        xs.rm(DOM0, kinds)
