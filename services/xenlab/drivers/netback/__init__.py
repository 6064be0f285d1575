"""netback: the backend of every vif a driver domain serves, split as Linux
splits xen-netback.

* ``xenbus``: the handshake (Linux's xenbus.c): the backend directory and
  the frontend's keys, parsed; the features; the device and the driver.
* ``interface``: the vif (interface.c): ``VifDevice``, connecting it to the
  frontend's rings and giving them back, the hotplug contract.
* ``datapath``: the data path (netback.c): the tx and rx workers, the grant
  copies, the persistent grants' mappings.
* ``tx``, ``rx``: the pure cores of guest transmit and guest receive;
  ``scratch``, ``antispoof``, ``grant_cache``, ``ratelimit``: pure pieces
  they use.
"""
from __future__ import annotations

from xenlab.drivers.netback.xenbus import NetbackDriver

__all__ = ["NetbackDriver"]
