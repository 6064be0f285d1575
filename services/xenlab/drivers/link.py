"""A vif's link state across the ring: each side tells the other through
xenstore (``xen.xenstore_paths.LINK_NODE`` in its own directory) and takes
the other's as its carrier.

Why xenstore and not the xenbus state: Linux's netfront drops its carrier
whenever the backend is not Connected (xennet_connect's netif_carrier_on,
xennet_disconnect_backend's off), but moving the xenbus state would tear
the rings down, and an `ip link set vif1.0 down` keeps them: the grants,
the event channel and the frames on the rings stay, only the traffic stops.
So the state machine stays Connected and the link goes on a node of its own
beside it, which the other side watches as it watches ``state``.
"""
from __future__ import annotations

import asyncio
import logging

from xenlab import eventloop
from xenlab.net.device import NetDevice
from xenlab.net.link import DOWN, UP
from xenlab.xen.errors import XenError
from xenlab.xen.xenstore_paths import LINK_NODE

log = logging.getLogger(__name__)


class PeerLink:
    """``device``'s side of the link between ``own_dir`` and ``other_dir``."""

    def __init__(self, xenbus, device: NetDevice, own_dir: str, other_dir: str):
        self.xenbus = xenbus
        self.device = device
        self.own = f"{own_dir}/{LINK_NODE}"
        self.other = f"{other_dir}/{LINK_NODE}"
        self._written: str | None = None
        self._token: str | None = None
        self._reads: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.device.link_watchers.append(self._on_change)
        await self._publish()
        # Fires once at once: the other side's state as it is now.
        self._token = await self.xenbus.watch(self.other, self._poke)

    async def stop(self) -> None:
        if self._on_change in self.device.link_watchers:
            self.device.link_watchers.remove(self._on_change)
        token, self._token = self._token, None
        if token is not None:
            try:
                await eventloop.wait_for(self.xenbus.unwatch(token), 2.0)
            except Exception as err:        # the store may be gone with the domain
                log.debug("%s: unwatching %s: %s", self.device.name, self.other, err)
        for task in list(self._reads):
            task.cancel()

    def _on_change(self, device: NetDevice):
        if (UP if device.admin_up else DOWN) != self._written:
            return self._publish()
        return None

    async def _publish(self) -> None:
        value = UP if self.device.admin_up else DOWN
        self._written = value
        await self.xenbus.write(self.own, value)

    def _poke(self, _path: str) -> None:
        # Runs in the xenbus reader, which a read from here would wait on.
        task = asyncio.get_running_loop().create_task(self._follow())
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _follow(self) -> None:
        try:
            value = await self.xenbus.read(self.other)
        except XenError as err:
            log.debug("%s: reading %s: %s", self.device.name, self.other, err.message)
            return
        # Anything but "down" (no node: a side that never says) is up.
        self.device.set_carrier((value or "").strip() != DOWN)
