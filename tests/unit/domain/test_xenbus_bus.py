"""XenbusBus: devices are probed when their directory appears and removed
when it goes, from the watch event's path, against a real (in-process)
xenstore."""
from __future__ import annotations

import asyncio

import pytest_asyncio

from xenlab.domain.hypercall import GrpcXenStore
from xenlab.domain.xenbus import XenbusBus, XenbusClient, XenbusDriver
from xenlab.proto import xenstore_pb2

ROOT = "/local/domain/0/backend/vif"


class Recorder(XenbusDriver):
    devicetype = "vif"
    side = "backend"

    def __init__(self):
        self.log: list[tuple[str, str]] = []
        self.closed: set[str] = set()

    async def probe(self, path: str) -> None:
        self.log.append(("probe", path))

    async def remove(self, path: str) -> None:
        self.log.append(("remove", path))
        self.closed.discard(path)

    def stale(self, path: str) -> bool:
        return path in self.closed


class CountingXenbus(XenbusClient):
    """Counts the directory listings the bus makes."""

    def __init__(self, store, domid):
        super().__init__(store, domid)
        self.listings = 0

    async def directory(self, path, tx=0):
        self.listings += 1
        return await super().directory(path, tx)


async def _settle(xenbus: XenbusClient) -> None:
    # A watch registered after the writes fires once; its event comes back
    # after every event queued before it, so the bus has seen them all.
    done = asyncio.Event()
    await xenbus.watch("/local/domain/0/settle", lambda _p: done.set())
    await asyncio.wait_for(done.wait(), 5)


async def _write(hypervisor, path: str, value: str = "x") -> None:
    await hypervisor.dom0.xenstore.Write(xenstore_pb2.WriteRequest(path=path, value=value.encode()))


async def _rm(hypervisor, path: str) -> None:
    await hypervisor.dom0.xenstore.Rm(xenstore_pb2.PathRequest(path=path))


@pytest_asyncio.fixture
async def watched(hypervisor):
    """Domain-0's xenbus with a recording vif backend driver registered:
    (xenbus, bus, driver). Devices a test writes first are there before it."""
    xenbus = CountingXenbus(GrpcXenStore(hypervisor.dom0.xenstore), 0)
    await xenbus.start()
    bus = XenbusBus(xenbus)
    driver = Recorder()

    async def register():
        await bus.register(driver)
        await _settle(xenbus)
        return xenbus, bus, driver
    try:
        yield register
    finally:
        await xenbus.close()


async def test_probe_on_appearance_and_remove_on_rm(hypervisor, watched):
    xenbus, bus, driver = await watched()
    await _write(hypervisor, f"{ROOT}/1/0/frontend-id", "1")
    await _write(hypervisor, f"{ROOT}/1/0/state", "1")
    await _write(hypervisor, f"{ROOT}/2/0/state", "1")
    await _settle(xenbus)
    assert driver.log == [("probe", f"{ROOT}/1/0"), ("probe", f"{ROOT}/2/0")]

    await _rm(hypervisor, f"{ROOT}/1/0")
    await _rm(hypervisor, f"{ROOT}/2")
    await _settle(xenbus)
    assert driver.log[2:] == [("remove", f"{ROOT}/1/0"), ("remove", f"{ROOT}/2/0")]
    assert bus.devices == {}


async def test_keys_of_a_known_device_cost_no_listing(hypervisor, watched):
    """Every key a backend writes fires the watch; none of them may rescan
    the whole tree (that was O(N^2) for N domains)."""
    xenbus, _, driver = await watched()
    await _write(hypervisor, f"{ROOT}/1/0/state", "1")
    await _settle(xenbus)
    before = xenbus.listings
    for key in ("feature-sg", "feature-rx-copy", "hotplug-status", "state"):
        await _write(hypervisor, f"{ROOT}/1/0/{key}", "1")
    await _settle(xenbus)
    assert xenbus.listings == before
    assert driver.log == [("probe", f"{ROOT}/1/0")]


async def test_device_recreated_is_probed_again(hypervisor, watched):
    xenbus, _, driver = await watched()
    await _write(hypervisor, f"{ROOT}/3/1/state", "1")
    await _settle(xenbus)
    await _rm(hypervisor, f"{ROOT}/3/1")
    await _settle(xenbus)
    await _write(hypervisor, f"{ROOT}/3/1/state", "1")
    await _settle(xenbus)
    assert driver.log == [("probe", f"{ROOT}/3/1"), ("remove", f"{ROOT}/3/1"),
                          ("probe", f"{ROOT}/3/1")]


async def test_devices_present_before_registration_are_probed(hypervisor, watched):
    await _write(hypervisor, f"{ROOT}/4/0/state", "1")
    await _write(hypervisor, f"{ROOT}/5/2/state", "1")
    xenbus, _, driver = await watched()
    assert driver.log == [("probe", f"{ROOT}/4/0"), ("probe", f"{ROOT}/5/2")]
    await _rm(hypervisor, "/local/domain/0/backend")
    await _settle(xenbus)
    assert sorted(driver.log[2:]) == [("remove", f"{ROOT}/4/0"), ("remove", f"{ROOT}/5/2")]


async def test_a_closed_device_removed_and_made_again_before_the_bus_saw_it_is_probed_again(
        hypervisor, watched):
    """A vif detached and re-attached with the same devid faster than the
    domain's xenbus handles the removal's event: the event finds the
    directory there again. The device the bus knows has closed down, so
    the one there is new: remove the old, probe the new (both ends were
    left in Initialising for ever before)."""
    xenbus, bus, driver = await watched()
    await _write(hypervisor, f"{ROOT}/6/0/state", "1")
    await _settle(xenbus)
    driver.closed.add(f"{ROOT}/6/0")          # the device reached Closed
    async with bus._scan_lock:                 # the bus is busy: events wait
        await _rm(hypervisor, f"{ROOT}/6/0")
        await _write(hypervisor, f"{ROOT}/6/0/state", "1")
    await _settle(xenbus)
    assert driver.log == [("probe", f"{ROOT}/6/0"), ("remove", f"{ROOT}/6/0"),
                          ("probe", f"{ROOT}/6/0")]


async def test_a_live_device_is_not_reprobed_by_an_event_for_its_directory(hypervisor, watched):
    xenbus, bus, driver = await watched()
    await _write(hypervisor, f"{ROOT}/7/0/state", "1")
    await _settle(xenbus)
    await _write(hypervisor, f"{ROOT}/7/0", "")
    await _settle(xenbus)
    assert driver.log == [("probe", f"{ROOT}/7/0")]


class CountingDevices(dict):
    """The bus's device table, counting the passes over all of it."""
    passes = 0

    def items(self):
        CountingDevices.passes += 1
        return super().items()


async def test_an_event_for_one_device_looks_at_no_other_device(hypervisor, watched):
    # Each event for a device's directory took a pass over every device the
    # bus knew: O(domains) per event in Domain-0, O(N^2) for a lab.
    for d in range(1, 41):
        await _write(hypervisor, f"{ROOT}/{d}/0/state", "1")
    xenbus, bus, driver = await watched()
    assert len(bus.devices) == 40
    bus.devices = CountingDevices(bus.devices)
    CountingDevices.passes = 0
    await _rm(hypervisor, f"{ROOT}/7/0")
    await _write(hypervisor, f"{ROOT}/41/0/state", "1")
    await _settle(xenbus)
    assert ("remove", f"{ROOT}/7/0") in driver.log and ("probe", f"{ROOT}/41/0") in driver.log
    assert CountingDevices.passes == 0
