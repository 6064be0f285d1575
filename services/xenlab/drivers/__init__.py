"""Paravirtual device drivers: netfront (every domU) and netback (dom0 or a
driver domain), mirror images over the shared ring (xenlab.xen.ring) and the
xenbus state machine (xenbus_state, pure), each device a task of
xenbus_device. Protocol logic is pure (netfront_core; netback's tx, rx and
the pieces they use); netfront.py and the netback package are the asyncio
adapters, which reach the hypervisor through the kernel's typed hypercall
layer (xenlab.domain.hypercall) only.
"""
from __future__ import annotations


def default_drivers(kernel) -> list:
    """The drivers a domain kernel registers unless told otherwise: netfront
    in every domain but Domain-0. netback needs a Hotplug (how a vif reaches
    its bridge), so whoever starts a driver domain passes it in:
    ``DomainKernel(start, drivers=lambda k: [NetbackDriver(k, hotplug)])``."""
    from xenlab.drivers.netfront import NetfrontDriver
    return [NetfrontDriver(kernel)] if kernel.domid != 0 else []
