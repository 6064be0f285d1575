"""Issue 22: an idle lab costs nothing. Once its domUs are up and no frame
flows, the hypervisor, Domain-0 and the bridge publish nothing, and their
event loops sleep; an idle domU runs no gRPC (its agent dormant, its
hypervisor channel closed): counted (MQTT messages, wake-ups, threads), not
timed."""
import asyncio
from pathlib import Path

import pytest

from procfs import thread_files
from xenlab.bench.labs import lab_processes
from xenlab.boot.domu import HYPERVISOR_IDLE_CLOSE
from xenlab.events.watch import EventCollector
from xenlab.launchers.tasks import read_tasks
from xenlab.proto import agent_pb2
from xenlab.testing.eventually import eventually

pytestmark = pytest.mark.integration

INTERVAL = 0.2          # the counters' interval: short, so that a periodic publisher shows at once
WINDOW = 4.0            # seconds watched
# What may still wake a service's event loop in WINDOW, whatever the number
# of domains: aiomqtt's once-a-second housekeeping (paho's loop_misc), and
# MQTT's keepalive PINGREQ/PINGRESP every 10 s, and two for slack.
ALLOWED_WAKEUPS = int(WINDOW) + 4

LAB = f"""
[lab]
name = "idle"

[mqtt]
interval = {INTERVAL}
""" + "".join(f"""
[[domain]]
name = "i{i}"
memory = 16
vif = ["mac=00:16:3e:00:1d:{i:02x},ip=10.29.0.{i}/24"]
""" for i in range(1, 5))


def wakeups(pid: int) -> int:
    """Times the process's main thread (its event loop) went to sleep and
    was woken: voluntary context switches."""
    for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split(":")[1])
    raise AssertionError(f"no voluntary_ctxt_switches for {pid}")


def connected(e) -> bool:
    return (e.payload["type"] == "vif.state" and e.payload["frontend_state_name"] == "Connected"
            and e.payload["backend_state_name"] == "Connected")


async def test_an_idle_lab_publishes_nothing_and_its_services_sleep(lab_factory):
    lab = await lab_factory(LAB)
    config = lab.lab.events
    services = {s.name: s.proc.pid for s in lab.lab.services if s.name in ("hypervisor", "dom0", "bridge")}
    assert set(services) == {"hypervisor", "dom0", "bridge"}
    async with EventCollector(config.broker, [config.topics.all()]) as events:
        await eventually(lambda: len({e.payload["domid"] for e in events.events if connected(e)}) == 4,
                         "every vif Connected", timeout=60)

        async def quiet() -> bool:
            # The boot's last frames (ARP, the guests' announcements) have
            # their messages, then one more with rates at 0: then silence.
            mark = len(events.events)
            await asyncio.sleep(10 * INTERVAL)
            return len(events.events) == mark

        await eventually(quiet, "the lab going quiet", timeout=60)
        # The domUs' last hypercalls were at boot: their channels to the
        # hypervisor close once idle, which the hypervisor's loop sees.
        await asyncio.sleep(HYPERVISOR_IDLE_CLOSE)
        mark = len(events.events)
        before = {name: wakeups(pid) for name, pid in services.items()}
        await asyncio.sleep(WINDOW)
        woken = {name: wakeups(pid) - before[name] for name, pid in services.items()}
        published = [(e.topic, e.payload.get("type")) for e in events.events[mark:]]
    assert published == []
    assert all(n <= ALLOWED_WAKEUPS for n in woken.values()), woken


TWO = """
[lab]
name = "idle2"
""" + "".join(f"""
[[domain]]
name = "s{i}"
memory = 16
vif = ["mac=00:16:3e:00:2d:{i:02x},ip=10.30.0.{i}/24"]
""" for i in (1, 2))

# grpc-core's own threads: they run while a gRPC channel or server lives in
# the process, and wake it several times a second however idle it is.
GRPC_POOL = ("event_engine", "lifeguard")


def threads(pid: int) -> list[str]:
    return [task.name for task in read_tasks(pid)]


def all_wakeups(pid: int) -> int:
    """Context switches of every thread of the process."""
    total = 0
    for status in thread_files(pid, "status"):
        for line in status.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split(":")[1])
    return total


async def test_an_idle_domu_has_no_grpc_running_and_its_agent_wakes_on_a_call(lab_factory):
    lab = await lab_factory(TWO)
    pids = {p.name: p.pid for p in await lab_processes(lab.lab) if p.name in ("s1", "s2")}
    async with await lab.agent("s1") as s1:
        reply = await s1.Ping(agent_pb2.PingRequest(dst="10.30.0.2", count=2, interval=0.05,
                                                    timeout=5))
        assert reply.received == 2
        assert any(name.startswith(GRPC_POOL) for name in threads(pids["s1"]))
        # the agent's idle period and drain, and the hypervisor channel's
        await eventually(lambda: not any(name.startswith(GRPC_POOL)
                                         for pid in pids.values() for name in threads(pid)),
                         lambda: f"the domUs' gRPC threads to end: "
                                 f"{ {n: threads(p) for n, p in pids.items()} }", timeout=30)
        before = {name: all_wakeups(pid) for name, pid in pids.items()}
        await asyncio.sleep(WINDOW)
        woken = {name: all_wakeups(pid) - before[name] for name, pid in pids.items()}
        # grpc-core's global timer thread (once a second) is all that is left
        assert all(n <= int(WINDOW) + 4 for n in woken.values()), woken
        # the same client channel: its next call wakes the agent
        reply = await s1.Ping(agent_pb2.PingRequest(dst="10.30.0.2", count=2, interval=0.05,
                                                    timeout=5))
        assert reply.received == 2
