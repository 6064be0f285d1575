"""Where things are in xenstore, as libxl lays the tree out: a vif's
frontend and backend directories, the toolstack's own record of a domain
(/libxl/D, Domain-0's alone) and the bridge registry.
"""
from __future__ import annotations

BRIDGE_REGISTRY = "/tool/xenlab/bridges"    # where bridge services register (bridge/server.py)


def backend_path(backend_id: int, domid: int, devid: int) -> str:
    return f"/local/domain/{backend_id}/backend/vif/{domid}/{devid}"


def frontend_path(domid: int, devid: int) -> str:
    return f"/local/domain/{domid}/device/vif/{devid}"


def record_root(domid: int) -> str:
    """libxl__domain_libxl_path: the toolstack's private nodes for a domain."""
    return f"/libxl/{domid}"


def record_path(domid: int, devid: int | None = None) -> str:
    """libxl__device_libxl_path: the toolstack's own record of a vif."""
    base = f"{record_root(domid)}/device/vif"
    return base if devid is None else f"{base}/{devid}"


def agent_record_path(domid: int) -> str:
    """Where the toolstack keeps a domain's guest agent: ``address`` and
    ``token`` (what a caller must present), written at creation from what
    the launcher decided. Under /libxl, so Domain-0 alone reads it and the
    guest can neither read the token nor point the toolstack elsewhere."""
    return f"{record_root(domid)}/agent"
