"""Paravirtual device drivers: netfront (every domU) and netback (dom0 or a
driver domain), mirror images over the shared ring (xenlab.xen.ring) and the
xenbus state machine (xenbus_state, pure), each device a task of
xenbus_device. Protocol logic is pure (netfront_core; netback's tx, rx and
the pieces they use); netfront.py and the netback package are the asyncio
adapters, which reach the hypervisor through the kernel's typed hypercall
layer (xenlab.domain.hypercall) only. The kernel does not know them: the
process that starts it hands them in (xenlab.boot).
"""
