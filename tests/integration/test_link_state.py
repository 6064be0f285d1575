"""Link state in a running lab: `xenlab ip link set ... down` stops a ping,
`up` brings it back, and a subscriber sees the link go and come on MQTT
and on the gRPC Events stream; the frame books still balance."""
import asyncio
import json
import os
import sys

import pytest

from xenlab.events.watch import EventCollector
from xenlab.lab import conservation
from xenlab.lab.stream import lab_events
from xenlab.proto import agent_pb2, bridge_pb2

pytestmark = pytest.mark.integration

LAB = """
[lab]
name = "lk"

[mqtt]
engine = "amqtt"
interval = 1

[[domain]]
name = "a"
memory = 32
vif = ["mac=00:16:3e:00:0e:01,ip=10.9.0.1/24"]

[[domain]]
name = "b"
memory = 32
vif = ["mac=00:16:3e:00:0e:02,ip=10.9.0.2/24"]
"""
B_MAC = "00:16:3e:00:0e:02"
WATCHED = ["xenlab/lk/domain/+/vif/+/link", "xenlab/lk/bridge/+/port/+/state",
           "xenlab/lk/bridge/+/fdb/#"]


async def ip(lab, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xenlab.cli.main", "ip", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "XENLAB_RUNDIR": str(lab.rundir)})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def ping(lab, count: int = 2) -> int:
    async with await lab.agent("a") as a:
        reply = await a.Ping(agent_pb2.PingRequest(dst="10.9.0.2", count=count, interval=0.1,
                                                    timeout=1.5))
    return reply.received


async def eventually_ping(lab, tries: int = 10) -> int:
    # A link that came back up announces itself (gratuitous ARP); the
    # first try may still race the carrier's way across.
    for _ in range(tries):
        received = await ping(lab)
        if received:
            return received
    return 0


async def unbalanced(lab) -> list:
    """The hops of the frame books that do not balance, once the lab is
    quiet (frames in flight make a hop look short for a moment)."""
    hops = []
    for _ in range(20):
        async with await lab.agent("Domain-0") as d0:
            dom0 = (await d0.InterfaceStats(agent_pb2.StatsRequest(gone=True))).interfaces
        async with await lab.bridge() as br:
            bridge = (await br.Stats(bridge_pb2.BridgeStatsRequest(bridge="xenbr0"))).bridges[0]
        guests = {}
        for name in ("a", "b"):
            async with await lab.agent(name) as agent:
                guests[lab.domid(name)] = (await agent.InterfaceStats(
                    agent_pb2.StatsRequest(gone=True))).interfaces
        paths, totals = conservation.lab_paths(dom0, bridge, guests)
        hops = [h for h in conservation.check(paths, [totals]) if not h.ok]
        if not hops:
            return []
        await asyncio.sleep(0.2)
    return [(h.path, h.name, h.unaccounted, h.drops) for h in hops]


def port_state(port: str, carrier: bool):
    return lambda e: e.payload["type"] == "port.state" and e.payload["port"] == port \
        and e.payload["carrier"] is carrier \
        and e.payload["state"] == ("forwarding" if carrier else "disabled")


def link_event(domid: int, link: str, **sides: str):
    return lambda e: e.payload["type"] == "vif.link" and e.payload["domid"] == domid \
        and e.payload["link"] == link and all(e.payload[k] == v for k, v in sides.items())


async def test_vif_down_stops_ping_flushes_fdb_and_up_restores_it(lab_factory):
    lab = await lab_factory(LAB)
    b = lab.domid("b")
    vif = f"vif{b}.0"
    grpc_seen: list[dict] = []
    subscribed = asyncio.Event()

    async def follow():
        async for event in lab_events(lab.hv, WATCHED, retained=False,
                                      subscribed=subscribed.set):
            grpc_seen.append(json.loads(event.payload))

    async with EventCollector(lab.lab.events.broker, WATCHED) as mqtt:
        follower = asyncio.create_task(follow())
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            assert await ping(lab) == 2           # b's MAC is learned on its port
            mark = len(mqtt.events)

            rc, out, err = await ip(lab, "link", "set", "dev", vif, "down")
            assert (rc, out, err) == (0, "", "")
            await mqtt.wait_for(port_state(vif, False), since=mark, timeout=10)
            await mqtt.wait_for(lambda e: e.payload["type"] == "fdb.event"
                                and e.payload["kind"] == "flush" and e.payload["mac"] == B_MAC,
                                since=mark, timeout=10)
            await mqtt.wait_for(link_event(b, "down", backend="down", frontend="up"),
                                since=mark, timeout=10)

            rc, out, _ = await ip(lab, "link", "show", vif)
            assert rc == 0 and f": {vif}: <BROADCAST,MULTICAST> mtu 1500 master xenbr0 state DOWN" \
                in out
            # The guest's netfront lost its carrier with the backend's link.
            for _ in range(50):
                rc, out, _ = await ip(lab, "-n", "b", "link", "show", "eth0")
                if "NO-CARRIER" in out:
                    break
                await asyncio.sleep(0.1)
            assert ": eth0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 state DOWN" in out

            assert await ping(lab) == 0
            async with await lab.agent("Domain-0") as d0:
                (stats,) = (await d0.InterfaceStats(agent_pb2.StatsRequest(interface=vif))).interfaces
            # Nothing reached it: the bridge no longer forwards to its port.
            assert not stats.admin_up and stats.carrier

            mark = len(mqtt.events)
            rc, out, err = await ip(lab, "link", "set", vif, "up")
            assert (rc, out, err) == (0, "", "")
            await mqtt.wait_for(port_state(vif, True), since=mark, timeout=10)
            await mqtt.wait_for(link_event(b, "up", backend="up", frontend="up"),
                                since=mark, timeout=10)
            assert await eventually_ping(lab) == 2
            rc, out, _ = await ip(lab, "link", "show", vif)
            assert f": {vif}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master xenbr0 state UP" in out

            # Once each: the gRPC stream carried what MQTT did.
            for _ in range(100):
                if sum(1 for p in grpc_seen if p["type"] == "vif.link") >= 2:
                    break
                await asyncio.sleep(0.05)
            links = [(p["link"], p["backend"]) for p in grpc_seen if p["type"] == "vif.link"]
            assert links == [("down", "down"), ("up", "up")]
            mqtt_links = [(e.payload["link"], e.payload["backend"]) for e in mqtt.events
                          if e.payload["type"] == "vif.link" and not e.retained]
            assert mqtt_links == links
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
    assert await unbalanced(lab) == []


async def test_guest_eth0_down_takes_the_carrier_from_its_vif(lab_factory):
    lab = await lab_factory(LAB)
    b = lab.domid("b")
    vif = f"vif{b}.0"
    async with EventCollector(lab.lab.events.broker, WATCHED) as mqtt:
        assert await ping(lab) == 2
        mark = len(mqtt.events)
        rc, out, err = await ip(lab, "-n", "b", "link", "set", "eth0", "down")
        assert (rc, out, err) == (0, "", "")
        await mqtt.wait_for(link_event(b, "down", backend="up", frontend="down"),
                            since=mark, timeout=10)
        await mqtt.wait_for(port_state(vif, False), since=mark, timeout=10)
        rc, out, _ = await ip(lab, "link", "show", vif)
        assert f": {vif}: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 master xenbr0 state DOWN" in out
        rc, out, _ = await ip(lab, "-n", "b", "link", "show")
        assert ": eth0: <BROADCAST,MULTICAST> mtu 1500 state DOWN" in out
        assert await ping(lab) == 0
        async with await lab.agent("b") as agent:
            reply = await agent.Ping(agent_pb2.PingRequest(dst="10.9.0.1", count=1, timeout=0.5))
            assert reply.received == 0
            (eth0,) = (await agent.InterfaceStats(agent_pb2.StatsRequest(interface="eth0"))).interfaces
        # b's own ARP request was refused by its interface, and counted so.
        assert not eth0.admin_up and eth0.drops["dev_down"] > 0

        rc, _, _ = await ip(lab, "-n", "b", "link", "set", "eth0", "up")
        assert rc == 0
        await mqtt.wait_for(port_state(vif, True), since=mark, timeout=10)
        assert await eventually_ping(lab) == 2
    assert await unbalanced(lab) == []


async def test_veth_end_down_disables_the_bridge_port(lab_factory):
    lab = await lab_factory(LAB)
    b = lab.domid("b")
    async with EventCollector(lab.lab.events.broker, WATCHED) as mqtt:
        assert await ping(lab) == 2
        mark = len(mqtt.events)
        rc, _, err = await ip(lab, "link", "set", f"veth{b}.0", "down")
        assert rc == 0, err
        await mqtt.wait_for(port_state(f"vif{b}.0", False), since=mark, timeout=10)
        assert await ping(lab) == 0
        rc, _, err = await ip(lab, "link", "set", f"veth{b}.0", "up")
        assert rc == 0, err
        await mqtt.wait_for(port_state(f"vif{b}.0", True), since=mark, timeout=10)
        assert await eventually_ping(lab) == 2
    assert await unbalanced(lab) == []


async def test_an_unknown_device_is_one_line(lab_factory):
    lab = await lab_factory(LAB)
    assert await ip(lab, "link", "set", "vif99.0", "down") == \
        (1, "", 'Cannot find device "vif99.0"\n')
    assert await ip(lab, "link", "show", "nope0") == (1, "", 'Device "nope0" does not exist.\n')
    assert await ip(lab, "-n", "b", "link", "set", "eth7", "up") == \
        (1, "", 'Cannot find device "eth7"\n')


async def test_a_restarted_bridge_service_finds_the_link_still_down(lab_factory):
    # Hotplug re-attaches the vif to the new bridge service and tells it the
    # vif is down: the new port starts disabled, and forwards once it is up.
    lab = await lab_factory(LAB)
    b = lab.domid("b")
    vif = f"vif{b}.0"
    rc, _, err = await ip(lab, "link", "set", vif, "down")
    assert rc == 0, err
    await lab.lab.restart_service("bridge", kill=True)
    async with await lab.bridge() as br:
        for _ in range(100):
            ports = (await br.ShowBridges(bridge_pb2.ShowBridgesRequest())).bridges[0].ports
            port = next((p for p in ports if p.name == vif), None)
            if port is not None and not port.carrier:
                break
            await asyncio.sleep(0.1)
    assert port is not None and not port.carrier and port.state == "disabled"
    assert await ping(lab) == 0
    rc, _, err = await ip(lab, "link", "set", vif, "up")
    assert rc == 0, err
    assert await eventually_ping(lab) == 2


async def test_a_restarted_domain0_reads_the_guests_link_from_xenstore(lab_factory):
    # The guest's side is a node in its own directory: a new Domain-0
    # kernel's netback reads it when it connects the vif again.
    lab = await lab_factory(LAB)
    b = lab.domid("b")
    vif = f"vif{b}.0"
    rc, _, err = await ip(lab, "-n", "b", "link", "set", "eth0", "down")
    assert rc == 0, err
    await lab.lab.restart_service("dom0", kill=True)
    for _ in range(100):
        rc, out, _ = await ip(lab, "link", "show", vif)
        if rc == 0 and "NO-CARRIER" in out:
            break
        await asyncio.sleep(0.1)
    assert f": {vif}: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 master xenbr0 state DOWN" in out
    assert await ping(lab) == 0
    rc, _, err = await ip(lab, "-n", "b", "link", "set", "eth0", "up")
    assert rc == 0, err
    assert await eventually_ping(lab) == 2
