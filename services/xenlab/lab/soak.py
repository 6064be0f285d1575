"""`xenlab soak`: a lab under mixed traffic and injected faults for a while,
then a frame count: on every path, at every hop, frames sent = frames
received + frames counted under a named drop reason (xenlab.lab.conservation).

The lab (SOAK_LAB) is five domUs on xenbr0 (an FDB limit of 1024, storm
control on). While traffic runs without pause:

* pings a -> b, b -> flap, crash -> a, flap -> crash; UDP to the echo
  service a -> crash, b -> flap;
* frames injected at b's eth0, unicast to a (and some with another source
  MAC, which netback's anti-spoofing drops), broadcasts injected at flap;
* short blasts crash -> a;

faults come one after the other, each while the traffic goes on:

* flap's vif is detached and attached again (xl network-detach/attach);
* crash's process is killed (SIGKILL); on_crash=restart brings it back as
  a new domain, and the dead one's cleanup time is measured (2 s is the goal);
* flood sends a MAC flood (random source MACs): the FDB must stay within its
  limit and the bridge's memory bounded.

Then the traffic stops, the queues drain, and every counter is read: the
domains' (interfaces that went away included), Domain-0's vifs and veth
ends, the bridge's ports (removed ones included). A guest that was killed
took its netfront's counters with it: those two ring hops are reported,
not checked. The command exits 1 if any checked hop has frames unaccounted.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from xenlab import argtypes, eventloop
from xenlab.agent_client import NoAgentError, agent_for
from xenlab.lab import conservation
from xenlab.lab.runner import Lab, LabError
from xenlab.lab.spec import parse_lab
from xenlab.osutil import Interrupted, cancelled_by_stop_signal
from xenlab.proto import agent_pb2, bridge_pb2, common_pb2, domains_pb2

log = logging.getLogger(__name__)

SOAK_LAB = """
[lab]
name = "soak"

[mqtt]
broker = "none"

[[bridge]]
name = "xenbr0"
fdb_policy = "ovs"
fdb_max = 1024
flood_limit = "1000/1000"

[[domain]]
name = "a"
memory = 32
vif = ["mac=00:16:3e:5a:00:01,ip=10.55.0.1/24"]

[[domain]]
name = "b"
memory = 32
vif = ["mac=00:16:3e:5a:00:02,ip=10.55.0.2/24"]

[[domain]]
name = "flap"
memory = 32
vif = ["mac=00:16:3e:5a:00:03,ip=10.55.0.3/24"]

[[domain]]
name = "crash"
memory = 32
on_crash = "restart"
vif = ["mac=00:16:3e:5a:00:04,ip=10.55.0.4/24"]

[[domain]]
name = "flood"
memory = 32
vif = ["mac=00:16:3e:5a:00:05"]
"""
IP = {"a": "10.55.0.1", "b": "10.55.0.2", "flap": "10.55.0.3", "crash": "10.55.0.4"}
MAC = {"a": "00:16:3e:5a:00:01", "b": "00:16:3e:5a:00:02", "flap": "00:16:3e:5a:00:03",
       "crash": "00:16:3e:5a:00:04", "flood": "00:16:3e:5a:00:05"}
ETHERTYPE = b"\x88\xb5"
QUIET = 1.0                 # seconds every counter must stay still to call the lab drained
QUIET_MAX = 60.0
CLEANUP_GOAL = 2.0          # seconds for a killed domU to be gone (the figure)


@dataclass
class SoakResult:
    seconds: float = 0.0
    hops: list = field(default_factory=list)
    paths: list = field(default_factory=list)
    faults: dict = field(default_factory=lambda: {"detach": 0, "crash": 0, "flood": 0})
    traffic: dict = field(default_factory=dict)
    cleanup: list = field(default_factory=list)       # seconds for each killed domU to go
    flood: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)        # faults that did not go as planned

    @property
    def unaccounted(self) -> list:
        return [h for h in self.hops if not h.ok]

    @property
    def ok(self) -> bool:
        return not self.unaccounted and not self.errors

    def report(self) -> str:
        lines = [conservation.format_report(self.hops, self.paths), ""]
        checked = [h for h in self.hops if h.checked]
        lines.append(f"soak: {self.seconds:.0f}s; faults {self.faults}; traffic {self.traffic}")
        if self.cleanup:
            worst = max(self.cleanup)
            lines.append(f"killed domU cleanup: {', '.join(f'{c:.2f}s' for c in self.cleanup)} "
                         f"(goal {CLEANUP_GOAL:g}s: {'met' if worst <= CLEANUP_GOAL else 'MISSED'})")
        if self.flood:
            lines.append("MAC flood: " + ", ".join(f"{k} {v}" for k, v in self.flood.items()))
        for error in self.errors:
            lines.append(f"fault failed: {error}")
        lines.append(f"{len(checked)} hops checked, {len(self.hops) - len(checked)} not checkable "
                     f"(killed guests), {len(self.unaccounted)} with frames unaccounted")
        return "\n".join(lines)


class Soak:
    def __init__(self, lab: Lab, seconds: float, flood_frames: int, progress=print):
        self.lab = lab
        self.seconds = seconds
        self.flood_frames = flood_frames
        self.progress = progress
        self.result = SoakResult()
        self.stop = asyncio.Event()
        self.lost: dict[int, str] = {}          # domid -> why its counters are gone
        self.names: dict[int, str] = {}
        self._agents: dict[int, object] = {}
        self._counts: dict[str, int] = {}

    # -- domains and agents -------------------------------------------------------------
    async def domid(self, name: str) -> int | None:
        for dom in (await self.lab.hv.domains.List(common_pb2.Empty())).domains:
            if dom.name == name and dom.shutdown_reason == "":
                self.names[dom.domid] = name
                return dom.domid
        return None

    async def agent(self, name: str):
        domid = await self.domid(name)
        if domid is None:
            return None
        if domid not in self._agents:
            try:
                self._agents[domid] = await agent_for(self.lab.hv, domid)
            except NoAgentError:
                return None
        return self._agents[domid]

    def count(self, what: str, n: int = 1) -> None:
        self._counts[what] = self._counts.get(what, 0) + n

    # -- traffic -----------------------------------------------------------------------------
    async def _loop(self, what: str, step, pause: float) -> None:
        """Run one kind of traffic until told to stop; errors (a domain
        being detached or restarted under it) are part of the soak."""
        while not self.stop.is_set():
            try:
                await step()
            except (grpc.aio.AioRpcError, NoAgentError, OSError) as err:
                self.count(f"{what} errors")
                log.debug("%s: %s", what, err)
            try:
                await eventloop.wait_for(self.stop.wait(), pause)
            except asyncio.TimeoutError:
                pass

    def _ping(self, src: str, dst: str):
        async def step():
            agent = await self.agent(src)
            if agent is not None:
                reply = await agent.Ping(agent_pb2.PingRequest(
                    dst=IP[dst], count=5, interval=0.02, timeout=0.5), timeout=10)
                self.count("ping replies", reply.received)
        return step

    def _udp(self, src: str, dst: str):
        async def step():
            agent = await self.agent(src)
            if agent is not None:
                reply = await agent.SendUdp(agent_pb2.SendUdpRequest(
                    dst=IP[dst], dport=7, payload=b"soak" * 50, wait_reply=True, timeout=0.5),
                    timeout=10)
                self.count("udp echoes", int(reply.replied))
        return step

    def _inject(self, src: str, frames_for):
        async def step():
            agent = await self.agent(src)
            if agent is not None:
                frames = frames_for()
                summary = await agent.InjectFrames(iter([agent_pb2.Frame(data=f) for f in frames]),
                                                   timeout=10)
                self.count("injected", summary.accepted)
        return step

    def _blast(self, src: str, dst: str):
        async def step():
            agent = await self.agent(src)
            if agent is not None:
                reply = await agent.Blast(agent_pb2.BlastRequest(
                    dst_mac=MAC[dst], count=2000, size=200, batch=64, timeout=10), timeout=30)
                self.count("blasted", reply.sent)
        return step

    def traffic(self) -> list:
        b, a, flap = mac_bytes("b"), mac_bytes("a"), mac_bytes("flap")
        unicast = [a + b + ETHERTYPE + bytes([i]) * 60 for i in range(40)]
        spoofed = [a + bytes.fromhex("00163e5aff02") + ETHERTYPE + bytes(60)] * 5
        broadcast = [b"\xff" * 6 + flap + ETHERTYPE + bytes([i]) * 80 for i in range(10)]
        jobs = [("ping a-b", self._ping("a", "b"), 0.05), ("ping b-flap", self._ping("b", "flap"), 0.05),
                ("ping crash-a", self._ping("crash", "a"), 0.05),
                ("ping flap-crash", self._ping("flap", "crash"), 0.05),
                ("udp a-crash", self._udp("a", "crash"), 0.05), ("udp b-flap", self._udp("b", "flap"), 0.05),
                ("inject b", self._inject("b", lambda: unicast + spoofed), 0.05),
                ("inject flap", self._inject("flap", lambda: broadcast), 0.1),
                ("blast crash-a", self._blast("crash", "a"), 0.5)]
        return [asyncio.create_task(self._loop(name, step, pause), name=f"soak {name}")
                for name, step, pause in jobs]

    # -- faults ---------------------------------------------------------------------------------
    async def detach_attach(self) -> None:
        domid = await self.domid("flap")
        hv = self.lab.hv
        await hv.domains.NetworkDetach(domains_pb2.NetworkDetachRequest(
            domain=common_pb2.DomainRef(domid=domid), device="0"))
        await asyncio.sleep(0.5)
        await hv.domains.NetworkAttach(domains_pb2.NetworkAttachRequest(
            domain=common_pb2.DomainRef(domid=domid),
            vif=domains_pb2.VifSpec(mac=MAC["flap"], ip=IP["flap"] + "/24")))
        await self.wait_vif(domid)
        self.result.faults["detach"] += 1

    async def crash(self) -> None:
        hv = self.lab.hv
        old = await self.domid("crash")
        info = await hv.domains.Info(common_pb2.DomainRef(domid=old))
        self.lost[old] = f"d{old} was killed"
        stub = self._agents.pop(old, None)
        os.kill(info.pid, signal.SIGKILL)
        started = time.monotonic()
        while old in {d.domid for d in (await hv.domains.List(common_pb2.Empty())).domains}:
            if time.monotonic() - started > 30:
                raise LabError(f"d{old} was not cleaned up within 30s")
            await asyncio.sleep(0.01)
        self.result.cleanup.append(time.monotonic() - started)
        if stub is not None:
            await stub.close()
        new = None
        while new is None or new == old:
            if time.monotonic() - started > 30:
                raise LabError("the killed domain was not restarted (on_crash=restart)")
            await asyncio.sleep(0.05)
            new = await self.domid("crash")
        self.lab.domids["crash"] = new
        await self.wait_vif(new)
        self.result.faults["crash"] += 1

    async def mac_flood(self, frames: int) -> None:
        agent = await self.agent("flood")
        async with await self.lab.bridge_client("xenbr0") as stub:
            bridge_pid = self.lab.service("bridge").proc.pid
            rss_before = rss_kb(bridge_pid)
            reply = await agent.Blast(agent_pb2.BlastRequest(
                dst_mac="02:00:00:00:99:99", count=frames, batch=256, random_src=True,
                timeout=3600), timeout=7200)
            stats = (await stub.Stats(bridge_pb2.BridgeStatsRequest(bridge="xenbr0"))).bridges[0]
            limit = (await stub.ShowBridges(bridge_pb2.ShowBridgesRequest(bridge="xenbr0"))).bridges[0].fdb_max
        self.result.flood = {"frames": reply.sent, "seconds in the guest": round(reply.finished - reply.started, 1),
                             "fdb entries": f"{stats.fdb['entries']}/{limit}",
                             "evicted": stats.fdb["evicted"],
                             "bridge RSS growth KiB": rss_kb(bridge_pid) - rss_before}
        if stats.fdb["entries"] > limit:
            raise LabError(f"the FDB holds {stats.fdb['entries']} entries, over its limit {limit}")
        self.result.faults["flood"] += 1

    async def wait_vif(self, domid: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            vifs = (await self.lab.hv.domains.NetworkList(common_pb2.DomainRef(domid=domid))).vifs
            if vifs and all(v.state == v.backend_state == 4 and v.hotplug_status == "connected"
                            for v in vifs):
                return
            if time.monotonic() > deadline:
                raise LabError(f"d{domid}'s vif did not come back: {list(vifs)}")
            await asyncio.sleep(0.05)

    # -- the run ---------------------------------------------------------------------------------
    async def run(self) -> SoakResult:
        started = time.monotonic()
        for name in ("a", "b", "flap", "crash", "flood"):
            await self.domid(name)
        tasks = self.traffic()
        faults = [("vif detach/attach", self.detach_attach), ("domU crash", self.crash)]
        if self.flood_frames:
            faults.append((f"MAC flood of {self.flood_frames}", lambda: self.mac_flood(self.flood_frames)))
        try:
            i = 0
            pause = min(5.0, max(1.0, self.seconds / 12))
            while time.monotonic() - started < self.seconds or i < len(faults):
                await asyncio.sleep(pause)
                name, fault = faults[i % len(faults)]
                self.progress(f"[{time.monotonic() - started:5.0f}s] fault: {name}")
                try:
                    await fault()
                except (LabError, grpc.aio.AioRpcError) as err:
                    message = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
                    self.result.errors.append(f"{name}: {message}")
                i += 1
        finally:
            self.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.result.seconds = time.monotonic() - started
        self.result.traffic = dict(self._counts)
        self.progress("traffic stopped; waiting for the queues to drain")
        await self.settle()
        self.result.paths, self.result.hops = await self.account()
        for stub in self._agents.values():
            await stub.close()
        return self.result

    async def counters(self) -> tuple:
        dom0 = await self.agent_of(0)
        async with await self.lab.bridge_client("xenbr0") as stub:
            bridge = (await stub.Stats(bridge_pb2.BridgeStatsRequest(bridge="xenbr0"))).bridges[0]
        d0 = (await dom0.InterfaceStats(agent_pb2.StatsRequest(gone=True))).interfaces
        guests = {}
        for dom in (await self.lab.hv.domains.List(common_pb2.Empty())).domains:
            if dom.domid == 0:
                continue
            self.names[dom.domid] = dom.name
            agent = await self.agent_of(dom.domid)
            guests[dom.domid] = (await agent.InterfaceStats(agent_pb2.StatsRequest(gone=True))).interfaces
        for domid in self.lost:
            guests[domid] = None
        return d0, bridge, guests

    async def agent_of(self, domid: int):
        if domid not in self._agents:
            self._agents[domid] = await agent_for(self.lab.hv, domid)
        return self._agents[domid]

    async def settle(self) -> None:
        deadline = time.monotonic() + QUIET_MAX
        last = _fingerprint(await self.counters())
        still = time.monotonic()
        while time.monotonic() - still < QUIET and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            now = _fingerprint(await self.counters())
            if now != last:
                last, still = now, time.monotonic()

    async def account(self):
        d0, bridge, guests = await self.counters()
        paths, totals = conservation.lab_paths(d0, bridge, guests, self.names, self.lost)
        return paths, conservation.check(paths, [totals])


def _fingerprint(counters) -> tuple:
    d0, bridge, guests = counters
    return (tuple((s.name, s.tx_packets, s.rx_packets, sum(s.drops.values())) for s in d0),
            tuple(sorted(bridge.counters.items())),
            tuple((d, tuple((s.name, s.tx_packets, s.rx_packets) for s in g or ()))
                  for d, g in sorted(guests.items())))


def mac_bytes(name: str) -> bytes:
    return bytes.fromhex(MAC[name].replace(":", ""))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def run_soak(rundir: Path, seconds: float, flood_frames: int, progress=print,
                   log_level: str = "INFO") -> SoakResult:
    """Bring the soak lab up in `rundir`, soak it, bring it down (also when
    cancelled)."""
    lab = Lab(parse_lab(SOAK_LAB, "<soak lab>"), rundir, log_level=log_level, progress=progress)
    await lab.up()
    try:
        return await Soak(lab, seconds, flood_frames, progress).run()
    finally:
        await lab.down()


# -- the command ------------------------------------------------------------------------------
async def _command(rundir: Path, seconds: float, flood_frames: int, progress, log_level: str
                   ) -> SoakResult:
    """run_soak, which SIGINT or SIGTERM cancels: the lab still goes down."""
    return await cancelled_by_stop_signal(run_soak(rundir, seconds, flood_frames, progress, log_level))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=argtypes.seconds(0, above=True, unit="min"), default=None,
                        help="how long the traffic and the faults go on (default 5)")
    length.add_argument("--seconds", type=argtypes.seconds(0, above=True), default=None, help="the same, in seconds")
    parser.add_argument("--flood", type=argtypes.whole(0), default=1_000_000, metavar="FRAMES",
                        help="frames of the MAC flood (random source MACs); 0: none "
                             "(default 1000000)")
    parser.add_argument("--rundir", type=Path, default=argparse.SUPPRESS,
                        help="where the soak lab's sockets and logs go (default: a new "
                             "directory in /tmp, removed afterwards unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the rundir (its logs)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="the services' log level (their logs go to RUNDIR/logs)")


def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes if args.minutes is not None else 5.0)
    given = getattr(args, "rundir", None)
    made = given is None
    # Short: unix socket paths live in it.
    rundir = Path(tempfile.mkdtemp(prefix="xl-soak-", dir="/tmp")) if made else given

    def progress(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    try:
        result = asyncio.run(_command(rundir, seconds, args.flood, progress, args.log_level))
    except LabError as err:
        print(f"xenlab soak: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print("xenlab soak: stopped before the end; the lab is down", file=sys.stderr)
        return stop.exit_status
    finally:
        if made and not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)
    print(result.report())
    if not result.ok:
        print(f"xenlab soak: {len(result.unaccounted)} hop(s) with frames unaccounted, "
              f"{len(result.errors)} fault(s) failed; logs in {rundir}/logs"
              + ("" if not made or args.keep else " (rerun with --keep to read them)"), file=sys.stderr)
        return 1
    return 0
