"""Issue 22: an idle lab costs nothing, and a domain's events cost the same
however many domains there are. Every assertion counts work (messages,
timers, calls), never time."""
import asyncio
import json
import shutil
import types

import pytest
import pytest_asyncio

from xenlab.bridge.events import BridgeSource
from xenlab.bridge.server import BridgeService
from xenlab.events import topics as t
from xenlab.events.broker import EmbeddedBroker
from xenlab.events.publisher import EventPublisher
from xenlab.events.sources import Dom0Source, HypervisorSource, Pacer, affected_domains
from xenlab.events.watch import EventCollector
from xenlab.net.device import NetDevice
from xenlab.proto import domains_pb2
from xenlab.testing import ManualClock, short_tempdir
from xenlab.testing.eventually import eventually

TOPICS = t.Topics("idle")


class Sink:
    """An EventSink that keeps what it is handed."""

    def __init__(self):
        self.topics = TOPICS
        self.messages: list[t.Message] = []

    def publish(self, message: t.Message) -> None:
        self.messages.append(message)

    def take(self) -> list[dict]:
        out = [json.loads(m.payload) for m in self.messages if m.payload]
        self.messages.clear()
        return out


class Timers:
    """call_later that records the timers instead of running them."""

    def __init__(self):
        self.armed: list[asyncio.TimerHandle] = []

    def __call__(self, delay, callback):
        handle = asyncio.get_running_loop().call_later(3600, callback)
        self.armed.append(handle)
        return handle

    @property
    def live(self) -> int:
        return sum(1 for h in self.armed if not h.cancelled())


class Vif(NetDevice):
    def __init__(self, domid: int):
        super().__init__(f"vif{domid}.0", bytes(6))
        self.frontend_id, self.devid = domid, 0

    @property
    def state(self) -> str:
        return "connected"

    def transmit(self, frames):
        self.count_tx(frames)


# -- the pacer ---------------------------------------------------------------------------
async def test_a_pacer_arms_one_timer_while_keys_move_and_none_when_they_stand_still():
    published, timers = [], Timers()
    pacer = Pacer(5.0, published.append, timers)
    for _ in range(100):            # a burst of batches: one timer
        pacer.moved("a")
    pacer.moved("b")
    assert timers.live == 1
    pacer.tick()
    assert published == [["a", "b"]]
    pacer.moved("a")
    pacer.tick()                    # a still moves; b stopped: its last message
    assert published[-1] == ["a", "b"]
    pacer.tick()                    # a stopped
    assert published[-1] == ["a"] and not pacer.armed
    for _ in range(10):             # idle: nothing published, nothing armed
        pacer.tick()
    assert len(published) == 3 and timers.live == 0
    pacer.close()


# -- Domain-0's vif counters -----------------------------------------------------------------
async def test_an_idle_dom0_publishes_nothing_however_many_vifs_it_serves():
    # Dom0Source published every vif's counters every interval: O(vifs)
    # messages and work each interval with no frame flowing.
    sink, clock = Sink(), ManualClock(100.0)
    vifs = {f"vif{d}.0": Vif(d) for d in range(1, 65)}
    source = Dom0Source(types.SimpleNamespace(domid=0, vifs=vifs), sink, interval=3600, clock=clock)
    source.start()
    try:
        source.publish_stats()
        assert len(sink.take()) == 64           # each vif once, as it appears
        for _ in range(5):
            clock.advance(5.0)
            source.publish_stats()
        assert sink.take() == []
        assert not source.pacer.armed

        vifs["vif7.0"].transmit([bytes(100)] * 20)      # one vif moves: one message
        clock.advance(2.0)
        source.publish_stats()
        (moving,) = sink.take()
        assert (moving["domid"], moving["counters"]["tx_packets"]) == (7, 20)
        assert moving["rates"]["tx_packets"] == 10.0    # since the frames came, not since the last message
        clock.advance(5.0)
        source.publish_stats()
        (stopped,) = sink.take()
        assert stopped["domid"] == 7 and stopped["rates"]["tx_packets"] == 0.0
        clock.advance(5.0)
        source.publish_stats()
        assert sink.take() == [] and not source.pacer.armed
    finally:
        await source.close()
    assert all(v.on_count is None for v in vifs.values())


async def test_dom0_follows_vifs_that_come_and_go():
    sink, clock = Sink(), ManualClock(100.0)
    kernel = types.SimpleNamespace(domid=0, vifs={}, on_netif_change=[])
    source = Dom0Source(kernel, sink, interval=3600, clock=clock)
    source.start()
    try:
        vif = Vif(3)
        kernel.vifs[vif.name] = vif
        for callback in kernel.on_netif_change:
            callback(vif.name, vif)
        source.publish_stats()
        assert [m["domid"] for m in sink.take()] == [3]
        del kernel.vifs[vif.name]
        for callback in kernel.on_netif_change:
            callback(vif.name, None)
        vif.transmit([bytes(60)])               # a device we let go of: not ours to publish
        source.publish_stats()
        assert sink.take() == [] and vif.on_count is None
    finally:
        await source.close()
    assert kernel.on_netif_change == []


# -- the bridge ------------------------------------------------------------------------------
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


async def test_an_idle_bridge_publishes_no_counters_and_only_the_ports_that_moved(bridge_service):
    sink = Sink()
    for d in range(1, 33):
        bridge_service.add_port("xenbr0", f"vif{d}.0")
    source = BridgeSource(bridge_service, sink, interval=3600)
    source.start()
    try:
        source.publish_stats()
        first = sink.take()
        assert sum(m["type"] == "port.stats" for m in first) == 32
        for _ in range(5):
            source.publish_stats()
        assert sink.take() == [] and not source.pacer.armed

        a, b = bytes.fromhex("00163e0000aa"), bytes.fromhex("00163e0000bb")
        bridge_service.inject("xenbr0", "vif1.0", [frame(b"\xff" * 6, a)])    # floods: every port
        bridge_service.inject("xenbr0", "vif2.0", [frame(a, b)])              # vif2.0 -> vif1.0 only
        await eventually(lambda: source.pacer.armed, "the stats timer armed by the frames")
        source.publish_stats()
        sink.take()
        bridge_service.inject("xenbr0", "vif2.0", [frame(a, b)])
        await eventually(lambda: source.pacer.moving("xenbr0"), "the bridge marked")
        source.publish_stats()
        moved = sink.take()
        ports = sorted(m["port"] for m in moved if m["type"] == "port.stats")
        # The two that carried the frame, and the 30 that moved last time
        # (the flood) once more, their rates at 0.
        assert sum(m["type"] == "bridge.stats" for m in moved) == 1
        assert len(ports) == 32
        source.publish_stats()
        again = sink.take()
        assert sorted(m["port"] for m in again if m["type"] == "port.stats") == ["vif1.0", "vif2.0"]
        source.publish_stats()
        assert sink.take() == [] and not source.pacer.armed
    finally:
        await source.close()


async def test_the_bridge_ageing_loop_sleeps_without_a_timer_while_nothing_can_age(bridge_service):
    # It woke once a second (MAX_EXPIRY_SLEEP) to look at every bridge.
    br = bridge_service.bridge("xenbr0")
    passes = []
    br.expire = lambda _expire=br.expire: passes.append(1) or _expire()
    assert bridge_service._expiry_delay() is None
    await asyncio.sleep(2.5)
    assert passes == []
    # A learned entry is due to age: the loop is woken, and ages it.
    br.set_ageing(0.2)
    bridge_service.add_port("xenbr0", "vif1.0")
    sub = bridge_service.subscribe("xenbr0")
    bridge_service.inject("xenbr0", "vif1.0", [frame(b"\xff" * 6, bytes.fromhex("00163e0000aa"))])
    kinds = []
    while "age" not in kinds:
        event, _ = await asyncio.wait_for(sub.get(), 20)
        kinds.append(event.kind)
    assert passes
    assert bridge_service._expiry_delay() is None


# -- the services' status ----------------------------------------------------------------------
async def test_an_idle_publisher_refreshes_no_status():
    # The status went out every status_interval, published or not.
    async with EmbeddedBroker() as broker:
        async with EventCollector(broker.address, [TOPICS.all()]) as events:
            async with EventPublisher(broker.address, TOPICS, "svc", status_interval=0.05) as pub:
                await events.wait_for(lambda e: e.payload["type"] == "service.status")
                await asyncio.sleep(0.6)
                statuses = [e for e in events.events if e.payload["type"] == "service.status"]
                assert len(statuses) == 1
                pub.publish(t.cleared(TOPICS.domain_state(9)))       # it publishes: one refresh
                await events.wait_for(lambda e: e.payload["type"] == "service.status"
                                      and e.payload["published"] >= 2)
                await asyncio.sleep(0.3)
                statuses = [e for e in events.events if e.payload["type"] == "service.status"]
                assert len(statuses) == 2


# -- the hypervisor's events: flat per create ---------------------------------------------------
def test_a_domain_directory_concerns_that_domain_and_those_it_serves():
    served = {5: {7, 8}}.get
    assert affected_domains("/local/domain/9", lambda b: served(b, set())) == {9}
    assert affected_domains("/local/domain/5", lambda b: served(b, set())) == {5, 7, 8}
    assert affected_domains("/local/domain/5/backend", lambda b: served(b, set())) == {7, 8}
    assert affected_domains("/local/domain/9") is None      # without the index: everyone


async def test_the_events_of_one_create_do_not_grow_with_the_domains_already_there(hypervisor):
    # Each create changed /local/domain/D, which rescanned every domain's
    # vifs (network_list for all of them) and rebuilt every domain's info:
    # O(N) per create, O(N^2) for a lab.
    sink = Sink()
    source = HypervisorSource(hypervisor.hv, hypervisor.toolstack, sink)
    calls = {"network_list": 0, "domain_info": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    hypervisor.toolstack.network_list = counted("network_list", hypervisor.toolstack.network_list)
    hypervisor.hv.domain_info = counted("domain_info", hypervisor.hv.domain_info)
    source.start()
    per_create = []
    try:
        for i in range(12):
            before = dict(calls)
            domid, _ = await hypervisor.create_domain(f"d{i}", vif=[domains_pb2.VifSpec()])
            await eventually(lambda: any(json.loads(m.payload).get("domid") == domid
                                         and json.loads(m.payload)["type"] == "vif.state"
                                         for m in sink.messages if m.payload),
                             f"d{i}'s vif.state")
            await asyncio.sleep(0)
            per_create.append({k: calls[k] - before[k] for k in calls})
    finally:
        await source.close()
    first, last = per_create[1], per_create[-1]
    assert last["network_list"] <= first["network_list"], per_create
    assert last["domain_info"] <= first["domain_info"], per_create


async def test_a_create_reads_no_other_domain_to_check_its_mac(hypervisor):
    # plan_vifs read every domain's vif records to find a MAC clash: O(N)
    # xenstore reads per create. It still refuses a clash.
    xs = hypervisor.hv.xenstore
    reads = {"n": 0}
    read, directory = xs.read, xs.directory

    def counted(fn):
        def wrapper(*args, **kwargs):
            reads["n"] += 1
            return fn(*args, **kwargs)
        return wrapper

    xs.read, xs.directory = counted(read), counted(directory)
    per_plan = []
    for i in range(1, 13):
        reads["n"] = 0
        hypervisor.toolstack.devices.plan_vifs(999, [domains_pb2.VifSpec(mac=f"00:16:3e:01:00:{i:02x}")])
        per_plan.append(reads["n"])
        await hypervisor.create_domain(f"m{i}", vif=[domains_pb2.VifSpec(mac=f"00:16:3e:01:00:{i:02x}")])
    assert per_plan[-1] <= per_plan[1], per_plan
    with pytest.raises(Exception, match="already used"):
        hypervisor.toolstack.devices.plan_vifs(999, [domains_pb2.VifSpec(mac="00:16:3e:01:00:05")])
