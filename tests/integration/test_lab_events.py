"""A lab's MQTT events end to end: real processes publishing to the lab's
embedded broker, a subscriber watching; and the broker going away during
traffic, which the frames never notice."""
import asyncio

import pytest

from xenlab.events.broker import mosquitto_binary
from xenlab.events.watch import EventCollector
from xenlab.proto import agent_pb2, bridge_pb2

pytestmark = pytest.mark.integration

LAB = """
[lab]
name = "evlab"

[mqtt]
interval = 1
engine = "{engine}"

[[domain]]
name = "a"
memory = 32
vif = ["mac=00:16:3e:00:0e:01,ip=10.9.0.1/24"]

[[domain]]
name = "b"
memory = 32
vif = ["mac=00:16:3e:00:0e:02,ip=10.9.0.2/24"]
"""
MACS = {"00:16:3e:00:0e:01", "00:16:3e:00:0e:02"}


def connected(domid):
    return lambda e: (e.payload["type"] == "vif.state" and e.payload["domid"] == domid
                      and e.payload["frontend_state_name"] == e.payload["backend_state_name"] == "Connected"
                      and e.payload["hotplug_status"] == "connected")


def learned(mac):
    return lambda e: e.payload["type"] == "fdb.event" and e.payload["kind"] == "learn" and e.payload["mac"] == mac


async def flush_and_ping(lab, agent, count=2) -> agent_pb2.PingReply:
    stub = channel = await lab.bridge()
    try:
        await stub.Flush(bridge_pb2.FlushFdbRequest(bridge="xenbr0"))
    finally:
        await channel.close()
    return await agent.Ping(agent_pb2.PingRequest(dst="10.9.0.2", count=count, interval=0.05, timeout=3))


@pytest.mark.parametrize("engine", ["amqtt", "mosquitto"])
async def test_vif_connected_and_fdb_learn_events_survive_a_broker_restart(lab_factory, engine):
    if engine == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    lab = await lab_factory(LAB.format(engine=engine))
    config = lab.lab.events
    assert config.topics.host == "evlab"
    a = await lab.agent("a")
    try:
        async with EventCollector(config.broker, [config.topics.all()]) as events:
            # The vifs' retained states: both ends Connected, hotplugged.
            for name in ("a", "b"):
                await events.wait_for(connected(lab.domid(name)))
            await events.wait_for(lambda e: e.payload["type"] == "domain.state"
                                  and e.payload["name"] == "b" and e.payload["state"] == "running")

            mark = len(events.events)
            assert (await flush_and_ping(lab, a)).received == 2
            for mac in MACS:
                event = await events.wait_for(learned(mac), since=mark)
                assert event.topic == "xenlab/evlab/bridge/xenbr0/fdb/learn"

            # The broker is stopped during traffic: pings keep succeeding...
            ping = asyncio.ensure_future(a.Ping(agent_pb2.PingRequest(
                dst="10.9.0.2", count=20, interval=0.05, timeout=3)))
            await asyncio.sleep(0.2)
            await lab.lab.stop_broker()
            assert (await ping).received == 20
            assert (await flush_and_ping(lab, a, count=3)).received == 3

            # ... and events resume once it is back on the same port. The
            # mark is taken before the broker is back (nothing comes while it
            # is down): a retained status delivered with the new SUBACK may be
            # in before wait_subscribed returns.
            mark = len(events.events)
            await lab.lab.start_broker()
            await events.wait_subscribed()
            for name in ("a", "b"):     # states come back: the publishers send them again
                await events.wait_for(connected(lab.domid(name)), since=mark)
            for service in ("hypervisor", "bridge", "dom0"):
                await events.wait_for(lambda e: e.payload["type"] == "service.status"
                                      and e.payload["service"] == service and e.payload["state"] == "online"
                                      and e.payload["reconnects"] >= 1, since=mark)
            await events.wait_for(lambda e: e.payload["type"] == "vif.stats"
                                  and e.payload["counters"]["rx_packets"] >= 25, since=mark)
            mark = len(events.events)
            assert (await flush_and_ping(lab, a)).received == 2
            for mac in MACS:
                await events.wait_for(learned(mac), since=mark)
    finally:
        await a.close()
