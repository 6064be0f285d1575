"""What a domain process runs, put together, as Linux's init/ puts the core
kernel, its built-in drivers and the first process together: the domain
kernel (xenlab.domain.kernel) knows no driver and no agent; it is handed
them here.

* ``domu``: ``xenlab domain`` (what a launcher starts): the kernel, netfront
  and the guest agent.
* ``dom0``: ``xenlab dom0``: Domain-0's kernel, netback with its bridge
  hotplug, the guest agent and the vif counters for the event bus.
"""
