"""netfront across a suspend: its queues stop (Linux's netif_device_detach
while xenbus freezes the device), what is handed to it is counted as
dropped "suspended", and a cancelled suspend (thaw) starts them again."""
from __future__ import annotations

from xenlab.drivers.netfront import NetfrontDevice, NetfrontDriver
from xenlab.xen.abi import XenbusState


class _Dev:
    def __init__(self, dev):
        self.dev = dev


async def test_suspend_stops_sending_and_thaw_starts_again():
    dev = NetfrontDevice("eth0", bytes.fromhex("00163e000001"), 1500, 0)
    dev.xenbus_state = XenbusState.Connected
    driver = NetfrontDriver(kernel=None)
    driver.devices["device/vif/0"] = _Dev(dev)
    await driver.suspend()
    assert dev.state == "suspended"
    dev.transmit([b"\xff" * 60, b"\xff" * 60])
    assert dev.drops["suspended"] == 2 and dev.drops["not_connected"] == 0
    await driver.thaw()
    assert dev.state != "suspended"
    dev.transmit([b"\xff" * 60])
    assert dev.drops["not_connected"] == 1              # no rings here: as before the suspend
