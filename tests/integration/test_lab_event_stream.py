"""The lab's gRPC Events streams against its MQTT broker: one action, the
same events on both; and a lab without a broker, whose events `xenlab
events` reads from the streams."""
import asyncio
import json
import os
import subprocess
import sys

import pytest

from xenlab.events.watch import EventCollector
from xenlab.lab.stream import lab_events
from xenlab.proto import agent_pb2, bridge_pb2, common_pb2

pytestmark = pytest.mark.integration

LAB = """
[lab]
name = "gev"

[mqtt]
broker = "{broker}"
engine = "amqtt"
interval = 1

[[domain]]
name = "a"
memory = 32
vif = ["mac=00:16:3e:00:0f:01,ip=10.8.0.1/24"]

[[domain]]
name = "b"
memory = 32
vif = ["mac=00:16:3e:00:0f:02,ip=10.8.0.2/24"]
"""
# What the action below makes happen: lifecycle and FDB events. Counters are
# left out: each side samples them at its own moment.
WATCHED = ["xenlab/gev/domain/+/state", "xenlab/gev/bridge/+/fdb/#"]


async def test_one_action_yields_the_same_events_on_mqtt_and_grpc(lab_factory):
    lab = await lab_factory(LAB.format(broker="embedded"))
    config = lab.lab.events
    b = common_pb2.DomainRef(domid=lab.domid("b"))
    grpc_seen: list[tuple[str, dict]] = []
    subscribed = asyncio.Event()
    resumed = asyncio.Event()

    async def follow_grpc():
        async for event in lab_events(lab.hv, WATCHED, retained=False, subscribed=subscribed.set):
            payload = json.loads(event.payload)
            grpc_seen.append((event.topic, payload))
            if payload["type"] == "domain.state" and payload["name"] == "b" \
                    and payload["state"] == "running":
                resumed.set()

    async with EventCollector(config.broker, WATCHED) as mqtt:
        follower = asyncio.create_task(follow_grpc())
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            # The MQTT subscription has its retained states by now: count from here.
            await mqtt.wait_for(lambda e: e.payload["type"] == "domain.state"
                                and e.payload["name"] == "b", timeout=10)
            mark = len(mqtt.events)

            await lab.hv.domains.Pause(b)
            await lab.hv.domains.Unpause(b)
            async with await lab.bridge() as bridge:
                await bridge.Flush(bridge_pb2.FlushFdbRequest(bridge="xenbr0"))
            async with await lab.agent("a") as a:
                assert (await a.Ping(agent_pb2.PingRequest(dst="10.8.0.2", count=2,
                                                            interval=0.05, timeout=5))).received == 2

            learned = lambda e: e.payload["type"] == "fdb.event" and e.payload["kind"] == "learn" \
                and e.payload["mac"] == "00:16:3e:00:0f:02"
            await mqtt.wait_for(learned, since=mark, timeout=10)
            await asyncio.wait_for(resumed.wait(), 10)
            for _ in range(100):
                if any(learned(type("E", (), {"payload": p})) for _, p in grpc_seen):
                    break
                await asyncio.sleep(0.05)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        mqtt_seen = [(e.topic, e.payload) for e in mqtt.events[mark:]]

    def by_topic(seen):
        out = {}
        for topic, payload in seen:
            out.setdefault(topic, []).append(payload)
        return out

    assert by_topic(grpc_seen) == by_topic(mqtt_seen)
    states = [p["state"] for t, p in grpc_seen if t.endswith(f"/domain/{b.domid}/state")]
    assert states == ["paused", "running"]
    kinds = {p["kind"] for t, p in grpc_seen if "/fdb/" in t}
    assert {"flush", "learn"} <= kinds


async def test_a_lab_without_a_broker_streams_its_events_to_xenlab_events(lab_factory):
    lab = await lab_factory(LAB.format(broker="none"))
    env = {**os.environ, "XENLAB_RUNDIR": str(lab.rundir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xenlab.cli.main", "events", "--json", "-n", "3", "--timeout", "20",
        "-t", "xenlab/gev/domain/+/state", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert {(m["payload"]["name"], m["payload"]["state"], m["retained"]) for m in lines} == \
        {("Domain-0", "running", True), ("a", "running", True), ("b", "running", True)}


async def test_dom0_vif_counters_and_rates_reach_the_grpc_stream(lab_factory):
    # CORE's Throughputs: each vif's rates, as Domain-0's netback counts
    # them, on the stream a client without a broker reads.
    lab = await lab_factory(LAB.format(broker="none"))
    a = lab.domid("a")
    async with await lab.agent("a") as agent:
        async def pings():
            while True:
                await agent.Ping(agent_pb2.PingRequest(dst="10.8.0.2", count=5, interval=0.05,
                                                       timeout=1))
        async def first_moving():
            async for event in lab_events(lab.hv, [f"xenlab/gev/domain/{a}/vif/0/stats"],
                                          retained=False):
                payload = json.loads(event.payload)
                assert payload["type"] == "vif.stats" and payload["vifname"] == f"vif{a}.0"
                if payload["rates"].get("rx_packets", 0) > 0:
                    return payload

        pinger = asyncio.create_task(pings())
        try:
            moving = await asyncio.wait_for(first_moving(), 30)
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)
    assert moving["counters"]["rx_packets"] > 0 and moving["backend_id"] == 0
