"""BridgeHotplug keeps a vif attached when the bridge service goes away and
comes back: real veth sockets, a stand-in for xenstore."""
import asyncio

from xenlab.drivers.hotplug import BridgeHotplug, backoff_delays, bridge_address_path
from xenlab.net.device import NetDevice
from xenlab.net.veth import VethListener
from xenlab.testing import eventually


class FakeXenbus:
    def __init__(self, values):
        self.values = values
        self.watches = {}

    async def read(self, path):
        return self.values.get(path)

    async def watch(self, path, callback):
        token = f"t{len(self.watches)}"
        self.watches[token] = (path, callback)
        callback(path)          # a xenstore watch fires once when set
        return token

    async def unwatch(self, token):
        self.watches.pop(token, None)

    def write(self, path, value):
        self.values[path] = value
        for watched, callback in list(self.watches.values()):
            if watched == path:
                callback(path)


class Vif(NetDevice):
    def transmit(self, frames):
        self.count_tx(frames)


class Bridge:
    """A bridge service reduced to its veth listener."""

    def __init__(self, address):
        self.ends = {}
        self.frames = []
        self.listener = VethListener(address, lambda hello: (hello["name"], {"bridge": "xenbr0"}),
                                     self._attached)

    def _attached(self, end):
        end.receiver = self.frames.extend
        self.ends[end.name] = end

    def crash(self):
        for end in self.ends.values():
            end.close(say_bye=False)


def test_backoff_doubles_up_to_its_cap():
    delays = backoff_delays(0.05, 0.3)
    assert [next(delays) for _ in range(6)] == [0.05, 0.1, 0.2, 0.3, 0.3, 0.3]


async def test_a_vif_is_reattached_when_its_bridge_comes_back(sock_dir):
    address = f"unix:{sock_dir}/bridge.sock"
    xenbus = FakeXenbus({bridge_address_path("xenbr0"): address})
    announced = {}
    hotplug = BridgeHotplug(xenbus, announce=lambda name, dev: announced.__setitem__(name, dev),
                            backoff=(0.02, 0.05))
    bridge = Bridge(address)
    await bridge.listener.start()
    vif = Vif("vif3.0", bytes.fromhex("00163e000003"))
    await hotplug.online(vif, "xenbr0", "/local/domain/0/backend/vif/3/0")
    first = announced["veth3.0"]
    await eventually(lambda: "vif3.0" in bridge.ends, "vif3.0 at the bridge")
    vif.deliver([b"\x01" * 60] * 3)
    await eventually(lambda: len(bridge.frames) == 3, "three frames at the bridge")

    # The bridge service dies: its listener and every link go.
    await bridge.listener.close()
    bridge.crash()
    await first.closed.wait()
    vif.deliver([b"\x02" * 60] * 2)            # nowhere to go: counted on the old end
    await asyncio.sleep(0.15)                  # a few refused attempts
    assert hotplug.attachments() == {"vif3.0": 0}

    reborn = Bridge(address)
    await reborn.listener.start()
    xenbus.write(bridge_address_path("xenbr0"), address)    # it registers again
    await eventually(lambda: hotplug.attachments() == {"vif3.0": 1}, "vif3.0 reattached once")
    second = announced["veth3.0"]
    assert second is not first and second.state == "up"
    vif.deliver([b"\x03" * 60] * 4)
    await eventually(lambda: len(reborn.frames) == 4, "the fourth frame at the new bridge")
    # One device as far as counting goes: 3 + 4 sent, 2 dropped while down.
    stats = second.stats()
    assert stats["tx_packets"] == 7 and stats["drop_link_down"] == 2

    await hotplug.offline(vif)
    assert announced["veth3.0"] is None and second.state == "down"
    assert hotplug.attachments() == {}
    await hotplug.close()
    assert xenbus.watches == {}
    await reborn.listener.close()


async def test_offline_during_reattach_stops_trying(sock_dir):
    address = f"unix:{sock_dir}/bridge.sock"
    xenbus = FakeXenbus({bridge_address_path("xenbr0"): address})
    hotplug = BridgeHotplug(xenbus, backoff=(0.01, 0.02))
    bridge = Bridge(address)
    await bridge.listener.start()
    vif = Vif("vif4.0", bytes.fromhex("00163e000004"))
    await hotplug.online(vif, "xenbr0", "/local/domain/0/backend/vif/4/0")
    await eventually(lambda: "vif4.0" in bridge.ends, "vif4.0 at the bridge")
    await bridge.listener.close()
    bridge.crash()
    await asyncio.sleep(0.1)
    await hotplug.offline(vif)
    assert hotplug.attachments() == {} and vif.receiver is None


async def test_a_veth_end_set_down_stays_down_when_reattached(sock_dir):
    # The port's carrier follows the vif and the veth end; a new bridge
    # service hears it at once, and the end keeps its state and index.
    address = f"unix:{sock_dir}/bridge.sock"
    xenbus = FakeXenbus({bridge_address_path("xenbr0"): address})
    announced = {}
    hotplug = BridgeHotplug(xenbus, announce=lambda name, dev: announced.__setitem__(name, dev),
                            backoff=(0.02, 0.05))
    bridge = Bridge(address)
    await bridge.listener.start()
    vif = Vif("vif3.0", bytes.fromhex("00163e000003"))
    await hotplug.online(vif, "xenbr0", "/local/domain/0/backend/vif/3/0")
    first = announced["veth3.0"]
    first.ifindex = 7
    await eventually(lambda: "vif3.0" in bridge.ends, "vif3.0 at the bridge")
    port = bridge.ends["vif3.0"]
    assert vif.master == "xenbr0"

    vif.set_admin_up(False)
    await eventually(lambda: not port.carrier, "the port's carrier off with the vif")
    vif.set_admin_up(True)
    await eventually(lambda: port.carrier, "and on again")
    vif.set_carrier(False)              # its frontend's link went down
    await eventually(lambda: not port.carrier, "off with the frontend's link")
    vif.set_carrier(True)
    first.set_admin_up(False)
    await eventually(lambda: not port.carrier, "off with the veth end")
    vif.deliver([b"\x01" * 60])
    assert first.drops["dev_down"] == 1

    await bridge.listener.close()
    bridge.crash()
    reborn = Bridge(address)
    await reborn.listener.start()
    xenbus.write(bridge_address_path("xenbr0"), address)
    await eventually(lambda: hotplug.attachments() == {"vif3.0": 1}, "vif3.0 reattached")
    second = announced["veth3.0"]
    assert not second.admin_up and second.ifindex == 7
    await eventually(lambda: "vif3.0" in reborn.ends and not reborn.ends["vif3.0"].carrier,
                     "the new port without carrier")
    second.set_admin_up(True)
    await eventually(lambda: reborn.ends["vif3.0"].carrier, "the new port's carrier on")

    await hotplug.offline(vif)
    assert vif.link_watchers == [] and vif.master == ""
    await hotplug.close()
    await reborn.listener.close()
