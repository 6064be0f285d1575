"""The toolstack's half of a vif, as libxl writes it (libxl_nic.c).

Pure: given a VifSpec it says which xenstore nodes to write, with which
permissions; given the nodes it builds what `xl network-list` shows. The
toolstack's devices (devices.py) carry it out against the xenstore.
"""
from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass

from xenlab.xen import abi
from xenlab.xen.digits import decimal_or
from xenlab.xen.errors import ConfigError, DomainError, XenError
from xenlab.xen.names import DEFAULT_BRIDGE, IFNAME_RULE, check_bridge_name, is_ifname
from xenlab.xen.netconf import format_mac, parse_mac, parse_rate, parse_vlan, random_mac
from xenlab.xen.xenstore_paths import LINK_NODE, backend_path, frontend_path

Perms = list[tuple[int, str]]

# libxl__xen_script_dir_path(): XEN_SCRIPT_DIR, $sysconfdir/xen/scripts as Xen
# is configured by default; and the script libxl gives a vif without script=.
XEN_SCRIPT_DIR = "/etc/xen/scripts"
DEFAULT_SCRIPT = "vif-bridge"


@dataclass(frozen=True)
class VifNodes:
    backend_path: str
    frontend_path: str
    backend: dict[str, str]
    frontend: dict[str, str]
    backend_perms: Perms      # owned by the backend domain, readable by the frontend
    frontend_perms: Perms     # owned by the frontend domain, readable by the backend
    domid: int
    devid: int

    def record(self) -> dict[str, str]:
        """What the toolstack keeps for itself at record_path(domid, devid)."""
        return {"frontend": self.frontend_path, "backend": self.backend_path,
                "backend-id": self.frontend["backend-id"], "mac": self.backend["mac"],
                "bridge": self.backend["bridge"]}


def normalise_mac(text: str) -> str:
    """A vif MAC: six octets, unicast (a multicast source could not be learned)."""
    try:
        mac = parse_mac(text)
    except ConfigError as err:
        raise DomainError(errno.EINVAL, err.message) from None
    if mac[0] & 1:
        raise DomainError(errno.EINVAL, f"vif mac {text} is a multicast address")
    return format_mac(mac)


def vif_nodes(domid: int, devid: int, backend_id: int, spec, mac: str) -> VifNodes:
    """libxl__device_nic_add: both directories with their keys and perms.
    Every value is checked here, as xl.cfg's parser checks it, since the API
    takes a VifSpec from any client: what netback would refuse later (and
    leave the domain with a dead vif) is refused now."""
    bpath, fpath = backend_path(backend_id, domid, devid), frontend_path(domid, devid)
    bridge = check_bridge(spec.bridge or DEFAULT_BRIDGE)
    mtu = spec.mtu or abi.ETH_DATA_LEN
    if not abi.ETH_MIN_MTU <= mtu <= 65535:
        raise DomainError(errno.EINVAL, f"vif mtu {mtu} is outside {abi.ETH_MIN_MTU}..65535")
    backend = {
        "frontend": fpath, "frontend-id": str(domid), "online": "1",
        "state": str(int(abi.XenbusState.Initialising)),
        "script": script_path(spec.script or DEFAULT_SCRIPT), "mac": mac, "bridge": bridge,
        "handle": str(devid), "type": "vif", "hotplug-status": "", "mtu": str(mtu),
    }
    if spec.ip:
        backend["ip"] = _check_ip(spec.ip)
    if spec.rate:
        backend["rate"] = rate_node(spec.rate)
    if spec.vifname:
        backend["vifname"] = _check_vifname(spec.vifname)
    if spec.vlan:
        backend["vlan"] = _check_vlan(spec.vlan)    # libxl__device_nic_add writes it as given
    frontend = {
        "backend": bpath, "backend-id": str(backend_id),
        "state": str(int(abi.XenbusState.Initialising)), "handle": str(devid),
        "mac": mac, "mtu": str(mtu),
    }
    return VifNodes(bpath, fpath, backend, frontend,
                    [(backend_id, "n"), (domid, "r")], [(domid, "n"), (backend_id, "r")],
                    domid, devid)


def _check_ip(text: str) -> str:
    """One or more space-separated addresses, as xl.cfg's ip= takes them."""
    for word in text.split() or [text]:
        try:
            ipaddress.IPv4Interface(word)
        except ValueError:
            raise DomainError(errno.EINVAL, f"vif ip {word!r} is not an IPv4 address[/prefix]") \
                from None
    return text


def rate_node(text: str) -> str:
    """The backend's rate node as libxl_nic.c writes it: "BYTES,USEC" (bytes
    per interval, the interval in µs), what netback's xen_net_read_rate
    reads; 10Mb/s@20ms is 25000,20000."""
    try:
        credit_bytes, credit_usec = parse_rate(text)
    except ConfigError as err:
        raise DomainError(errno.EINVAL, f"vif {err.message}") from None
    return f"{credit_bytes},{credit_usec}"


def script_path(script: str) -> str:
    """libxl__abs_path: a script named without a directory is in Xen's
    script directory. xenlab runs no script: Domain-0's hotplug
    (drivers/hotplug.py) does what vif-bridge does."""
    return script if script.startswith("/") else f"{XEN_SCRIPT_DIR}/{script}"


def _check_vlan(text: str) -> str:
    try:
        parse_vlan(text)
    except ConfigError as err:
        raise DomainError(errno.EINVAL, f"vif {err.message}") from None
    return text


def _check_vifname(text: str) -> str:
    if not is_ifname(text):
        raise DomainError(errno.EINVAL, f"vifname {text!r} is not an interface name ({IFNAME_RULE})")
    return text


def check_bridge(name: str) -> str:
    """A bridge name is a path component of the bridge registry in xenstore."""
    try:
        return check_bridge_name(name)
    except XenError as err:
        raise DomainError(errno.EINVAL, f"vif {err.message}") from None


def vif_name(domid: int, devid: int, vifname: str = "") -> str:
    return vifname or f"vif{domid}.{devid}"


def pick_mac(spec_mac: str) -> str:
    return normalise_mac(spec_mac) if spec_mac else random_mac()


def _int(value: str | None, default: int = -1) -> int:
    return decimal_or(value, default)


def vif_info(domid: int, devid: int, front: dict[str, str], back: dict[str, str]) -> dict:
    """The fields of VifInfo (xl network-list) from the two directories."""
    return dict(
        domid=domid, devid=devid, backend_id=_int(front.get("backend-id"), 0),
        mac=front.get("mac", ""), bridge=back.get("bridge", ""), ip=back.get("ip", ""),
        vifname=vif_name(domid, devid, back.get("vifname", "")),
        state=_int(front.get("state"), 0), backend_state=_int(back.get("state"), 0),
        evtchn=_int(front.get("event-channel")), tx_ring_ref=_int(front.get("tx-ring-ref")),
        rx_ring_ref=_int(front.get("rx-ring-ref")), backend_path=front.get("backend", ""),
        frontend_path=frontend_path(domid, devid), hotplug_status=back.get("hotplug-status", ""),
        mtu=_int(front.get("mtu"), abi.ETH_DATA_LEN), rate=back.get("rate", ""),
        frontend_link=_link(front.get(LINK_NODE)), backend_link=_link(back.get(LINK_NODE)))


def _link(value: str | None) -> str:
    # A side that never wrote the node is up (drivers/link.py).
    return "down" if (value or "").strip() == "down" else "up"
