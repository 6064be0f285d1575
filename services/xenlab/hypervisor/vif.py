"""The toolstack's half of a vif, as libxl writes it (libxl_nic.c).

Pure: given a VifSpec it says which xenstore nodes to write, with which
permissions; given the nodes it builds what `xl network-list` shows. The
hypervisor (core.py) carries it out against its xenstore.
"""
from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass

from xenlab.xen import abi
from xenlab.xen.errors import ConfigError, DomainError
from xenlab.xen.xlcfg import format_mac, parse_mac, random_mac

Perms = list[tuple[int, str]]


@dataclass(frozen=True)
class VifNodes:
    backend_path: str
    frontend_path: str
    backend: dict[str, str]
    frontend: dict[str, str]
    backend_perms: Perms      # owned by the backend domain, readable by the frontend
    frontend_perms: Perms     # owned by the frontend domain, readable by the backend


def backend_path(backend_id: int, domid: int, devid: int) -> str:
    return f"/local/domain/{backend_id}/backend/vif/{domid}/{devid}"


def frontend_path(domid: int, devid: int) -> str:
    return f"/local/domain/{domid}/device/vif/{devid}"


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
    """libxl__device_nic_add: both directories with their keys and perms."""
    bpath, fpath = backend_path(backend_id, domid, devid), frontend_path(domid, devid)
    bridge = spec.bridge or abi.DEFAULT_BRIDGE
    mtu = spec.mtu or abi.ETH_DATA_LEN
    if not abi.ETH_MIN_MTU <= mtu <= 65535:
        raise DomainError(errno.EINVAL, f"vif mtu {mtu} is outside {abi.ETH_MIN_MTU}..65535")
    backend = {
        "frontend": fpath, "frontend-id": str(domid), "online": "1",
        "state": str(int(abi.XenbusState.Initialising)),
        "script": spec.script or "vif-bridge", "mac": mac, "bridge": bridge,
        "handle": str(devid), "type": "vif", "hotplug-status": "", "mtu": str(mtu),
    }
    if spec.ip:
        backend["ip"] = _check_ip(spec.ip)
    if spec.rate:
        backend["rate"] = spec.rate
    if spec.vifname:
        backend["vifname"] = spec.vifname
    frontend = {
        "backend": bpath, "backend-id": str(backend_id),
        "state": str(int(abi.XenbusState.Initialising)), "handle": str(devid),
        "mac": mac, "mtu": str(mtu),
    }
    return VifNodes(bpath, fpath, backend, frontend,
                    [(backend_id, "n"), (domid, "r")], [(domid, "n"), (backend_id, "r")])


def _check_ip(text: str) -> str:
    try:
        ipaddress.IPv4Interface(text)
    except ValueError:
        raise DomainError(errno.EINVAL, f"vif ip {text!r} is not an IPv4 address[/prefix]") from None
    return text


def vif_name(domid: int, devid: int, vifname: str = "") -> str:
    return vifname or f"vif{domid}.{devid}"


def pick_mac(spec_mac: str) -> str:
    return normalise_mac(spec_mac) if spec_mac else random_mac()


def _int(value: str | None, default: int = -1) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


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
        mtu=_int(front.get("mtu"), abi.ETH_DATA_LEN), rate=back.get("rate", ""))
