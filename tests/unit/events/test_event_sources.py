"""The event sources against in-process services and a real (amqtt)
broker: the hypervisor's domain lifecycle and vif states, the bridge's FDB
events and counters, dom0's per-vif counters."""
import asyncio
import json
import shutil
import types

import pytest_asyncio

from xenlab.bridge.server import BridgeService
from xenlab.events import topics as t
from xenlab.events.broker import EmbeddedBroker
from xenlab.events.publisher import EventPublisher
from xenlab.bridge.events import BridgeSource
from xenlab.events.sources import Dom0Source, HypervisorSource
from xenlab.events.watch import EventCollector
from xenlab.net.device import NetDevice
from xenlab.proto import common_pb2, domains_pb2, xenstore_pb2
from xenlab.testing import short_tempdir

TOPICS = t.Topics("src")


@pytest_asyncio.fixture
async def mqtt():
    """(broker, collector of everything, publisher)."""
    async with EmbeddedBroker() as broker:
        async with EventCollector(broker.address, [TOPICS.all()]) as events:
            async with EventPublisher(broker.address, TOPICS, "test", min_backoff=0.05,
                                      max_backoff=0.3) as pub:
                yield broker, events, pub


def of(type_, **fields):
    return lambda e: e.payload["type"] == type_ and all(e.payload.get(k) == v for k, v in fields.items())


async def test_domain_lifecycle_and_vif_handshake(hypervisor, mqtt):
    _, events, pub = mqtt
    source = HypervisorSource(hypervisor.hv, hypervisor.toolstack, pub)
    source.start()
    try:
        await events.wait_for(of("domain.state", domid=0, state="running"))
        domid, _ = await hypervisor.create_domain(
            "web", vif=[domains_pb2.VifSpec(mac="00:16:3e:00:00:01", ip="10.0.0.1/24")])
        created = await events.wait_for(of("domain.state", domid=domid, state="created"))
        assert created.topic == f"xenlab/src/domain/{domid}/state"
        assert created.payload["name"] == "web"
        await events.wait_for(of("domain.state", domid=domid, state="running"))
        first = await events.wait_for(of("vif.state", domid=domid, devid=0))
        assert (first.payload["frontend_state"], first.payload["backend_state"]) == (1, 1)
        assert first.payload["vifname"] == f"vif{domid}.0" and first.payload["present"]

        # The backend's side of the handshake, as netback and hotplug write it.
        back = f"/local/domain/0/backend/vif/{domid}/0"
        xs = hypervisor.dom0.xenstore
        await xs.Write(xenstore_pb2.WriteRequest(path=f"{back}/hotplug-status", value=b"connected"))
        await xs.Write(xenstore_pb2.WriteRequest(path=f"{back}/state", value=b"4"))
        hotplug = await events.wait_for(of("vif.hotplug", domid=domid, hotplug_status="connected"))
        assert hotplug.payload["bridge"] == "xenbr0"
        await events.wait_for(of("vif.state", domid=domid, backend_state=4,
                                 backend_state_name="Connected", hotplug_status="connected"))

        await hypervisor.dom0.domains.Pause(common_pb2.DomainRef(domid=domid))
        await events.wait_for(of("domain.state", domid=domid, state="paused"))
        await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=domid))
        await events.wait_for(of("domain.state", domid=domid, state="destroyed"))
        gone = next(e for e in events.events if of("vif.state", domid=domid, present=False)(e))
        assert (gone.payload["frontend_state"], gone.payload["backend_state"]) == (0, 0)
        states = [e.payload["state"] for e in events.events
                  if of("domain.state", domid=domid)(e)]
        assert states == ["created", "running", "paused", "dying", "destroyed"]
    finally:
        await source.close()
    assert source._on_change not in hypervisor.hv.observers


async def test_destroyed_is_the_last_message_of_a_domain_and_its_vifs(hypervisor, mqtt):
    # A vif's present:false came after destroyed, which EVENTS.md says is last.
    broker, _, pub = mqtt
    source = HypervisorSource(hypervisor.hv, hypervisor.toolstack, pub)
    source.start()
    try:
        async with RawSubscriber(broker.address, [f"{TOPICS.base}/domain/#"]) as raw:
            domid, _ = await hypervisor.create_domain("web", vif=[domains_pb2.VifSpec(), domains_pb2.VifSpec()])
            await raw.wait_for(lambda m: m.topic == TOPICS.vif(domid, 1, "state"))
            await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=domid))
            await raw.wait_for(lambda m: m.topic == TOPICS.domain_state(domid) and not m.payload)
    finally:
        await source.close()
    mine = [m for m in raw.messages if m.topic.startswith(f"{TOPICS.base}/domain/{domid}/")]
    last_event = max(i for i, m in enumerate(mine) if m.payload)
    assert mine[last_event].topic == TOPICS.domain_state(domid)
    assert mine[last_event].payload["state"] == "destroyed"
    assert sorted(m.topic for m in mine[last_event + 1:]) == sorted(
        [TOPICS.domain_state(domid), TOPICS.vif(domid, 0, "state"), TOPICS.vif(domid, 1, "state")])


async def test_a_late_subscriber_hears_nothing_of_a_destroyed_domain(hypervisor, mqtt):
    # Retained states were never cleared: domain/4/state "destroyed" was
    # still handed to every new subscriber, long after.
    broker, events, pub = mqtt
    source = HypervisorSource(hypervisor.hv, hypervisor.toolstack, pub)
    source.start()
    try:
        async with RawSubscriber(broker.address, [f"{TOPICS.base}/domain/#"]) as live:
            gone, _ = await hypervisor.create_domain("gone", vif=[domains_pb2.VifSpec()])
            kept, _ = await hypervisor.create_domain("kept", vif=[domains_pb2.VifSpec()])
            await events.wait_for(of("vif.state", domid=kept))
            await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=gone))
            await live.wait_for(lambda m: m.topic == TOPICS.domain_state(gone) and not m.payload)
    finally:
        await source.close()
    async with RawSubscriber(broker.address, [f"{TOPICS.base}/domain/#"]) as late:
        # Retained messages come right after the subscription: a message
        # published after it arrives after all of them.
        await late.mark(TOPICS.domain_state("marker"))
    domids = {m.topic.split("/")[3] for m in late.messages if m.retained}
    assert str(kept) in domids and str(gone) not in domids


class RawSubscriber:
    """Every message on `filters` as the broker sends it, empty ones too."""

    def __init__(self, address, filters):
        self.address, self.filters = address, filters
        self.messages: list = []
        self._arrived = asyncio.Event()

    async def __aenter__(self):
        import aiomqtt
        self._client = aiomqtt.Client(self.address.host, self.address.port)
        await self._client.__aenter__()
        for f in self.filters:
            await self._client.subscribe(f)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self):
        async for message in self._client.messages:
            payload = json.loads(message.payload) if message.payload else None
            self.messages.append(types.SimpleNamespace(topic=str(message.topic), payload=payload,
                                                       retained=bool(message.retain)))
            self._arrived.set()

    async def wait_for(self, predicate, timeout: float = 10):
        async def find():
            while not any(predicate(m) for m in self.messages):
                self._arrived.clear()
                await self._arrived.wait()
        await asyncio.wait_for(find(), timeout)

    async def mark(self, topic: str):
        await self._client.publish(topic, b'{"marker": true}')
        await self.wait_for(lambda m: m.topic == topic)
        self.messages = [m for m in self.messages if m.topic != topic]

    async def __aexit__(self, *exc):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._client.__aexit__(None, None, None)


async def test_a_running_domain_is_published_with_its_process_id(hypervisor, mqtt):
    # domain.state carried "pid":0 for running domains: the watch saw the
    # domain before its process started, and running was never sent again.
    _, events, pub = mqtt
    source = HypervisorSource(hypervisor.hv, hypervisor.toolstack, pub)
    source.start()
    try:
        # The collector hears the publisher before the domain exists: else a
        # late subscription finds only the retained last state, not "created".
        await events.wait_for(of("domain.state", domid=0, state="running"))
        domid, _ = await hypervisor.create_domain("web", launcher="local",
                                                  vif=[domains_pb2.VifSpec()])
        running = await events.wait_for(of("domain.state", domid=domid, state="running"))
        info = await hypervisor.dom0.domains.Info(common_pb2.DomainRef(domid=domid))
        assert running.payload["pid"] == info.pid != 0
        created = await events.wait_for(of("domain.state", domid=domid, state="created"))
        assert created.payload["launcher"] == "local"
        await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=domid))
        await events.wait_for(of("domain.state", domid=domid, state="destroyed"))
    finally:
        await source.close()
    assert [e.payload["pid"] for e in events.events if of("domain.state", domid=domid, state="running")(e)] \
        == [info.pid]


async def test_a_failed_hotplug_carries_its_error(hypervisor, mqtt):
    _, events, pub = mqtt
    source = HypervisorSource(hypervisor.hv, hypervisor.toolstack, pub)
    source.start()
    try:
        domid, _ = await hypervisor.create_domain("db", vif=[domains_pb2.VifSpec()])
        back = f"/local/domain/0/backend/vif/{domid}/0"
        xs = hypervisor.dom0.xenstore
        await xs.Write(xenstore_pb2.WriteRequest(path=f"{back}/hotplug-error", value=b"no bridge xenbr9"))
        await xs.Write(xenstore_pb2.WriteRequest(path=f"{back}/hotplug-status", value=b"error"))
        failed = await events.wait_for(of("vif.hotplug", domid=domid, hotplug_status="error"))
        assert failed.payload["hotplug_error"] == "no bridge xenbr9"
    finally:
        await source.close()


@pytest_asyncio.fixture
async def bridge_service():
    tmp = short_tempdir()
    service = BridgeService(["xenbr0"], listen=f"unix:{tmp}/veth.sock", grpc=f"unix:{tmp}/bridge.sock")
    await service.start()
    try:
        yield service
    finally:
        await service.stop(grace=0.1)
        shutil.rmtree(tmp, ignore_errors=True)


def frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x08\x06" + bytes(28)


async def test_fdb_events_and_port_counters(bridge_service, mqtt):
    _, events, pub = mqtt
    a, b = bytes.fromhex("00163e0000aa"), bytes.fromhex("00163e0000bb")
    bridge_service.add_port("xenbr0", "vif1.0")
    bridge_service.add_port("xenbr0", "vif2.0")
    source = BridgeSource(bridge_service, pub, interval=0.2)
    source.start()
    try:
        bridge_service.inject("xenbr0", "vif1.0", [frame(b"\xff" * 6, a)])
        learned = await events.wait_for(of("fdb.event", kind="learn", mac="00:16:3e:00:00:aa"))
        assert learned.topic == "xenlab/src/bridge/xenbr0/fdb/learn"
        assert learned.payload["port"] == "vif1.0"
        # The same station behind the other port: a move.
        bridge_service.inject("xenbr0", "vif2.0", [frame(b, a)])
        moved = await events.wait_for(of("fdb.event", kind="move", mac="00:16:3e:00:00:aa"))
        assert (moved.payload["port"], moved.payload["old_port"]) == ("vif2.0", "vif1.0")
        bridge_service.bridge("xenbr0").flush()
        bridge_service.publish(bridge_service.bridge("xenbr0"))
        await events.wait_for(of("fdb.event", kind="flush", mac="00:16:3e:00:00:aa"))

        port = await events.wait_for(lambda e: of("port.stats", port="vif1.0")(e)
                                     and e.payload["counters"]["rx_packets"] == 1)
        assert port.topic == "xenlab/src/bridge/xenbr0/port/vif1.0/stats"
        stats = await events.wait_for(lambda e: of("bridge.stats")(e) and e.payload["counters"]["rx"] == 2)
        assert stats.payload["ports"] == 2 and stats.payload["fdb"]["moved"] == 1
        assert set(stats.payload["rates"]) == set(stats.payload["counters"])
        assert set(port.payload["rates"]) == set(port.payload["counters"])
    finally:
        await source.close()


class FakeVif(NetDevice):
    frontend_id, devid = 7, 1

    @property
    def state(self) -> str:
        return "connected"

    def transmit(self, frames):
        self.count_tx(frames)


async def test_counters_come_with_their_rates_per_second_over_the_interval(mqtt):
    # Counters were cumulative only: a dashboard had to difference them.
    _, events, pub = mqtt
    now = [100.0]
    vif = FakeVif("vif7.1", bytes(6))
    vif.transmit([bytes(60)] * 10)
    source = Dom0Source(types.SimpleNamespace(domid=0, vifs={"vif7.1": vif}), pub, interval=3600,
                        clock=lambda: now[0])
    source.start()
    try:
        vif.transmit([bytes(100)] * 30)
        now[0] += 2.0
        source.publish_stats()
        stats = await events.wait_for(of("vif.stats", domid=7, devid=1))
    finally:
        await source.close()
    assert stats.payload["counters"]["tx_packets"] == 40
    assert stats.payload["rates"] == {"tx_packets": 15.0, "tx_bytes": 1500.0,
                                      "rx_packets": 0.0, "rx_bytes": 0.0}


async def test_dom0_publishes_every_vif_counters(mqtt):
    _, events, pub = mqtt
    vif = FakeVif("vif7.1", bytes(6))
    vif.transmit([bytes(60)] * 3)
    vif.drop("not_connected", 2)
    source = Dom0Source(types.SimpleNamespace(domid=0, vifs={"vif7.1": vif}), pub, interval=0.1)
    source.start()
    try:
        stats = await events.wait_for(of("vif.stats", domid=7, devid=1))
    finally:
        await source.close()
    assert stats.topic == "xenlab/src/domain/7/vif/1/stats"
    assert stats.payload["counters"]["tx_packets"] == 3 and stats.payload["drops"] == {"not_connected": 2}
    assert stats.payload["link_state"] == "connected" and stats.payload["backend_id"] == 0


async def test_port_state_changes_and_stp_as_bridge_monitor_shows_them(bridge_service, mqtt):
    """Every port change is a retained port.state with the `bridge monitor
    link` line; every FDB change carries the `bridge monitor fdb` line; STP's
    counters and the ports' state transitions are in the counters."""
    _, events, pub = mqtt
    source = BridgeSource(bridge_service, pub, interval=0.2)
    source.start()
    try:
        br = bridge_service.bridge("xenbr0")
        bridge_service.add_port("xenbr0", "vif1.0")
        added = await events.wait_for(of("port.state", port="vif1.0", state="forwarding"))
        assert added.topic == "xenlab/src/bridge/xenbr0/port/vif1.0/state"
        assert added.payload["monitor"] == ("1: vif1.0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 "
                                            "master xenbr0 state forwarding priority 32 cost 2 ")
        br.set_port_flags("vif1.0", state="disabled", hairpin=True)
        bridge_service.settle(br)
        changed = await events.wait_for(of("port.state", port="vif1.0", state="disabled"))
        assert changed.payload["flags"]["hairpin"] is True and changed.payload["present"] is True
        br.set_port_flags("vif1.0", state="forwarding")
        br.set_stp(True, hello_time=1, forward_delay=2, max_age=6)
        bridge_service.add_port("xenbr0", "vif2.0")
        bridge_service.settle(br)
        listening = await events.wait_for(of("port.state", port="vif2.0", state="listening"))
        assert listening.payload["role"] == "designated"
        bridge_service.inject("xenbr0", "vif1.0", [frame(b"\xff" * 6, bytes.fromhex("00163e0000cc"))])
        learned = await events.wait_for(of("fdb.event", kind="learn", mac="00:16:3e:00:00:cc"))
        assert learned.payload["monitor"] == "00:16:3e:00:00:cc dev vif1.0 master xenbr0 "
        bridge_service.delete_port("xenbr0", "vif1.0")
        gone = await events.wait_for(of("fdb.event", kind="flush", mac="00:16:3e:00:00:cc"))
        assert gone.payload["monitor"] == "Deleted 00:16:3e:00:00:cc dev vif1.0 master xenbr0 "
        removed = await events.wait_for(of("port.state", port="vif1.0", present=False))
        assert removed.payload["monitor"].startswith("Deleted 1: vif1.0: ")
        stats = await events.wait_for(lambda e: of("bridge.stats")(e) and e.payload["stp"].get("config_sent", 0) > 0)
        assert stats.payload["stp"]["root_port"] == 0
        port = await events.wait_for(lambda e: of("port.stats", port="vif2.0")(e)
                                     and e.payload["transitions"].get("listening") == 1)
        assert port.payload["port_state"] in ("listening", "learning", "forwarding")
    finally:
        await source.close()
