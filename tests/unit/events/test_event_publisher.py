"""EventPublisher against a real broker: delivery, retained state, a broker
that is not there (bounded queue, drops counted, never blocking), and a
broker that restarts on the same port."""
import inspect

from xenlab.events import topics as t
from xenlab.osutil import free_port
from xenlab.events.config import BrokerAddress
from xenlab.events.publisher import EventPublisher
from xenlab.events.watch import EventCollector
from xenlab.testing import eventually

TOPICS = t.Topics("testhost")
FDB = {"kind": "learn", "bridge": "xenbr0", "port": "vif1.0", "old_port": "", "static": False}


def learn(n: int) -> t.Message:
    return t.fdb_event(TOPICS, {**FDB, "mac": f"00:16:3e:00:00:{n:02x}"}, float(n))


def domain(domid: int, state: str) -> t.Message:
    return t.domain_state(TOPICS, {"domid": domid, "name": f"d{domid}", "uuid": f"u{domid}"}, state, 0.0)


def publisher(address: BrokerAddress, **kw) -> EventPublisher:
    return EventPublisher(address, TOPICS, "test", min_backoff=0.05, max_backoff=0.3, **kw)


def macs(events) -> list[str]:
    return [e.payload["mac"] for e in events if e.payload["type"] == "fdb.event"]


async def test_events_arrive_and_a_late_subscriber_gets_the_states(broker):
    async with EventCollector(broker.address, [TOPICS.all()]) as early:
        async with publisher(broker.address) as pub:
            pub.publish(domain(1, "running"))
            pub.publish(learn(1))
            event = await early.wait_for(lambda e: e.payload["type"] == "fdb.event")
            assert event.topic == "xenlab/testhost/bridge/xenbr0/fdb/learn"
            assert event.payload["mac"] == "00:16:3e:00:00:01"
            async with EventCollector(broker.address, [TOPICS.domain_state(1)]) as late:
                state = await late.wait_for(lambda e: True)
            assert state.retained and state.payload["state"] == "running"
            assert macs(late.events) == []
            assert pub.counters["published"] >= 3 and pub.counters["dropped"] == 0


async def test_closing_says_offline(broker):
    async with EventCollector(broker.address, [TOPICS.service_status("test")]) as watcher:
        pub = publisher(broker.address)
        pub.start()
        await watcher.wait_for(lambda e: e.payload["state"] == "online")
        await pub.close()
        offline = await watcher.wait_for(lambda e: e.payload["state"] == "offline")
    assert offline.payload["service"] == "test" and offline.payload["pid"] > 0


async def test_without_a_broker_publishing_never_blocks_and_drops_the_oldest(closed_port):
    address = BrokerAddress("127.0.0.1", closed_port)       # nobody listens there
    pub = publisher(address, queue_size=8)
    pub.start()
    try:
        assert not inspect.iscoroutinefunction(pub.publish)
        for n in range(50):
            assert pub.publish(learn(n)) is None
        assert (pub.queued, pub.counters["dropped"]) == (8, 42)
        await eventually(lambda: pub.counters["connect_failures"] >= 2, "two failed connects")
        assert not pub.connected and pub.counters["published"] == 0
        assert (pub.queued, pub.counters["dropped"]) == (8, 42)
    finally:
        await pub.close()


async def test_the_newest_queued_events_go_out_in_order_once_connected():
    from xenlab.events.broker import EmbeddedBroker
    port = free_port()
    pub = publisher(BrokerAddress("127.0.0.1", port), queue_size=8)
    for n in range(20):
        pub.publish(learn(n))
    assert pub.counters["dropped"] == 12
    async with EmbeddedBroker(port=port) as broker:
        async with EventCollector(broker.address, [TOPICS.fdb("xenbr0", "learn")]) as watcher:
            pub.start()
            try:
                await watcher.wait_for(lambda e: e.payload["mac"] == "00:16:3e:00:00:13")
            finally:
                await pub.close()
    assert macs(watcher.events) == [f"00:16:3e:00:00:{n:02x}" for n in range(12, 20)]


async def test_a_restarted_broker_gets_the_states_back_and_later_events(broker):
    async with EventCollector(broker.address, [TOPICS.all()]) as watcher:
        pub = publisher(broker.address, queue_size=16)
        pub.start()
        try:
            pub.publish(domain(1, "running"))
            pub.publish(learn(1))
            await watcher.wait_for(lambda e: macs([e]) == ["00:16:3e:00:00:01"])

            await broker.stop()
            await eventually(lambda: not pub.connected, "the publisher to notice the broker gone")
            for n in range(2, 40):      # more than the queue holds, none of it blocks
                pub.publish(learn(n))
            pub.publish(domain(2, "paused"))
            assert pub.queued == 16 and pub.counters["dropped"] > 0
            mark = len(watcher.events)

            await broker.start()
            await pub.wait_connected(10)
            await watcher.wait_subscribed()
            pub.publish(learn(200))
            await watcher.wait_for(lambda e: macs([e]) == ["00:16:3e:00:00:c8"], since=mark)
            assert pub.counters["reconnects"] >= 1
        finally:
            await pub.close()
    # The broker restarted empty: the retained states it has now are the
    # ones the publisher sent again, the latest of each.
    async with EventCollector(broker.address, [TOPICS.domain_state("+")]) as late:
        await late.wait_for(lambda e: e.payload["domid"] == 1)
        await late.wait_for(lambda e: e.payload["domid"] == 2)
    assert {(e.payload["domid"], e.payload["state"]) for e in late.events} == {(1, "running"), (2, "paused")}
