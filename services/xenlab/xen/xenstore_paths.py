"""Where things are in xenstore, as libxl lays the tree out: a vif's
frontend and backend directories, the toolstack's own record of a domain
(/libxl/D, Domain-0's alone) and the bridge registry.
"""
from __future__ import annotations

import re

# Where bridge services register each bridge they run (bridge/server.py):
# BRIDGE_REGISTRY/NAME/{address,grpc,pid}. hotplug finds a bridge's data
# socket at "address", clients its gRPC API at "grpc".
BRIDGE_REGISTRY = "/tool/xenlab/bridges"


# Each side of a vif writes its link's administrative state, "up" or "down",
# in its own directory (the frontend's and the backend's), and the other side
# follows it as its carrier. Xen defines no such node (Linux's netfront and
# netback never tell each other about `ip link set down`): it is xenlab's,
# named so, and a side that never writes it is up.
LINK_NODE = "xenlab-link"


def backend_path(backend_id: int, domid: int, devid: int) -> str:
    return f"/local/domain/{backend_id}/backend/vif/{domid}/{devid}"


_BACKEND_PATH = re.compile(r"/local/domain/([0-9]+)/backend/vif/([0-9]+)/([0-9]+)")


def parse_backend_path(path: str) -> tuple[int, int, int] | None:
    """(backend_id, domid, devid) of a vif backend directory, or None."""
    m = _BACKEND_PATH.fullmatch(path)
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def frontend_path(domid: int, devid: int) -> str:
    return f"/local/domain/{domid}/device/vif/{devid}"


def record_root(domid: int) -> str:
    """libxl__domain_libxl_path: the toolstack's private nodes for a domain."""
    return f"/libxl/{domid}"


def record_path(domid: int, devid: int | None = None) -> str:
    """libxl__device_libxl_path: the toolstack's own record of a vif."""
    base = f"{record_root(domid)}/device/vif"
    return base if devid is None else f"{base}/{devid}"


def console_backend_path(domid: int, backend: int = 0) -> str:
    """libxl__device_backend_path of the primary console (devid 0)."""
    return f"/local/domain/{backend}/backend/console/{domid}/0"


def agent_record_path(domid: int) -> str:
    """Where the toolstack keeps a domain's guest agent: ``address`` and
    ``token`` (what a caller must present), written at creation from what
    the launcher decided. Under /libxl, so Domain-0 alone reads it and the
    guest can neither read the token nor point the toolstack elsewhere."""
    return f"{record_root(domid)}/agent"


def bridge_registry_path(name: str, key: str | None = None) -> str:
    """A bridge's directory in the registry, or one of its keys
    (``address``, ``grpc``, ``pid``)."""
    base = f"{BRIDGE_REGISTRY}/{name}"
    return base if key is None else f"{base}/{key}"
