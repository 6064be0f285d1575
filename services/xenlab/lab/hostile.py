"""`xenlab hostile-soak`: one hostile domU against its neighbours.

A small lab (web and db on xenbr0) runs two phases of the same length. In
each, web pings db without pause through its guest agent, Domain-0's
toolstack reads xenstore in a loop, and the hypervisor's resident memory is
sampled. In the first phase nothing else happens (the baseline); in the
second, a domain "mallory" runs every flood the security review found at
once, from a process of its own that holds only mallory's credentials:

* reservation: DecreaseReservation of 8,000 gfns (the last one not its
  own) against a full grant table;
* copy: GrantTable.Copy with 500,000 ops;
* watches: 128 watch streams with 4 KiB tokens that never read, while
  mallory writes under 3 KiB paths of its own;
* doorbell: SEND datagrams of 512 of its own ports, as fast as it can;
* messages: 60 MiB requests, with its credentials and without any;
* calls: 5,000 calls in flight at once;
* devices: vifs the toolstack attaches to mallory get a frontend `state`
  of bytes that are not UTF-8 (and garbage ring refs), and are detached
  again, without force.

It prints, per phase: pings sent and answered with the RTT p50 and p99,
Domain-0's xenstore calls and how many failed, the hypervisor's peak RSS,
and what each flood got. It exits 1 when a ping went unanswered or a
Domain-0 call failed in either phase, or a vif could not be detached. The
figures go into SECURITY.md.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from xenlab import argtypes, eventloop
from xenlab.agent_client import agent_for
from xenlab import testing_floods
from xenlab.client import HypervisorClient
from xenlab.lab.runner import Lab, LabError
from xenlab.lab.spec import parse_lab
from xenlab.osutil import on_stop_signal
from xenlab.proto import agent_pb2, common_pb2, domains_pb2, xenstore_pb2
from xenlab.rpc import CHANNEL_OPTIONS, credentials_metadata

log = logging.getLogger(__name__)

LAB = """
[lab]
name = "hostile"

[mqtt]
broker = "none"

[[domain]]
name = "web"
memory = 32
vif = ["mac=00:16:3e:00:00:01,ip=10.0.0.1/24"]

[[domain]]
name = "db"
memory = 32
vif = ["mac=00:16:3e:00:00:02,ip=10.0.0.2/24"]
"""
VICTIM_DST = "10.0.0.2"
PING_INTERVAL = 0.02          # seconds between the victims' pings
PING_CHUNK = 50               # pings per agent call
DOM0_READ_INTERVAL = 0.01
RSS_INTERVAL = 0.1
MALLORY_MB = 32
FLOODS = ("reservation", "copy", "watches", "doorbell", "messages", "calls", "devices")


# -- what a phase measures ------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    rtts: list[float] = field(default_factory=list)
    sent: int = 0
    answered: int = 0
    ping_errors: list[str] = field(default_factory=list)
    dom0_calls: int = 0
    dom0_failures: collections.Counter = field(default_factory=collections.Counter)
    dom0_latency: list[float] = field(default_factory=list)
    peak_rss_kib: int = 0
    detach_failures: list[str] = field(default_factory=list)
    floods: dict = field(default_factory=dict)

    def rtt(self, q: float) -> float:
        if not self.rtts:
            return float("nan")
        ordered = sorted(self.rtts)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def ok(self) -> bool:
        return (self.sent == self.answered and not self.ping_errors and not self.dom0_failures
                and not self.detach_failures)

    def summary(self) -> dict:
        return {"phase": self.name, "pings_sent": self.sent, "pings_answered": self.answered,
                "rtt_p50_ms": round(self.rtt(0.50), 3), "rtt_p99_ms": round(self.rtt(0.99), 3),
                "dom0_xenstore_calls": self.dom0_calls,
                "dom0_xenstore_failures": dict(self.dom0_failures),
                "dom0_xenstore_p99_ms": round(
                    statistics.quantiles(self.dom0_latency, n=100)[98] * 1000, 3)
                if len(self.dom0_latency) >= 2 else None,
                "hypervisor_peak_rss_mib": round(self.peak_rss_kib / 1024, 1),
                "detach_failures": self.detach_failures, "floods": self.floods}


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def ping_victims(lab: Lab, phase: Phase, stop: asyncio.Event) -> None:
    async with await agent_for(lab.hv, lab.domids["web"]) as web:
        while not stop.is_set():
            try:
                reply = await web.Ping(agent_pb2.PingRequest(
                    dst=VICTIM_DST, count=PING_CHUNK, interval=PING_INTERVAL, timeout=2.0))
            except grpc.aio.AioRpcError as err:
                phase.ping_errors.append(f"{err.code().name}: {err.details()}")
                continue
            phase.sent += reply.transmitted
            phase.answered += reply.received
            phase.rtts.extend(reply.rtt)


async def dom0_reads(lab: Lab, phase: Phase, stop: asyncio.Event) -> None:
    request = xenstore_pb2.PathRequest(path="/local/domain/0/name")
    while not stop.is_set():
        started = time.monotonic()
        try:
            await lab.hv.xenstore.Read(request, timeout=10)
        except grpc.aio.AioRpcError as err:
            phase.dom0_failures[err.code().name] += 1
        else:
            phase.dom0_latency.append(time.monotonic() - started)
        phase.dom0_calls += 1
        await asyncio.sleep(DOM0_READ_INTERVAL)


async def sample_rss(pid: int, phase: Phase, stop: asyncio.Event) -> None:
    while not stop.is_set():
        phase.peak_rss_kib = max(phase.peak_rss_kib, rss_kib(pid))
        await asyncio.sleep(RSS_INTERVAL)


async def churn_vifs(lab: Lab, domid: int, phase: Phase, stop: asyncio.Event) -> None:
    """The toolstack's side of the devices flood: attach a vif to mallory,
    give the flooder a moment to write garbage into its frontend, detach it
    without force (netback must let go of a device whatever its task saw)."""
    ref = common_pb2.DomainRef(domid=domid)
    while not stop.is_set():
        try:
            vif = await lab.hv.domains.NetworkAttach(domains_pb2.NetworkAttachRequest(
                domain=ref, vif=domains_pb2.VifSpec()))
            await asyncio.sleep(1.0)
            await lab.hv.domains.NetworkDetach(domains_pb2.NetworkDetachRequest(
                domain=ref, device=str(vif.devid), timeout=10))
        except grpc.aio.AioRpcError as err:
            phase.detach_failures.append(f"{err.code().name}: {err.details()}")
            await asyncio.sleep(1.0)


async def run_phase(lab: Lab, phase: Phase, seconds: float, hv_pid: int,
                    extra=()) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(ping_victims(lab, phase, stop)),
             asyncio.create_task(dom0_reads(lab, phase, stop)),
             asyncio.create_task(sample_rss(hv_pid, phase, stop))]
    tasks += [asyncio.create_task(make(stop)) for make in extra]
    try:
        await asyncio.sleep(seconds)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- mallory's floods (run in a process of its own) -------------------------------------------
class Flooder:
    """Every flood, as one domain with only its own credentials: the floods
    of xenlab.testing_floods, each repeated until the stop, and the
    devices flood, which needs the toolstack's side (churn_vifs)."""

    def __init__(self, address: str, doorbell: str, domid: int, secret: str):
        self.address = address
        self.doorbell_path = doorbell
        self.domid = domid
        self.secret = secret
        self.home = f"/local/domain/{domid}"
        self.stats: dict[str, collections.Counter] = {}
        self.ports: list[int] | None = None
        # Clear while the devices flood has garbage to write: the calls
        # flood starts no burst then (mallory's floods share her budget of
        # calls in flight, and a burst takes all of it).
        self.devices_turn_over = asyncio.Event()
        self.devices_turn_over.set()

    def _jobs(self, hv: HypervisorClient, stop: asyncio.Event) -> dict:
        signed = credentials_metadata(self.domid, self.secret)
        return {
            "reservation": lambda: testing_floods.decrease_reservation_flood(hv, stop=stop, fill=False),
            "copy": lambda: testing_floods.grant_copy_flood(hv, stop=stop),
            "watches": lambda: self._until(stop, lambda: testing_floods.watch_event_flood(
                self.address, self.domid, self.secret, writes=500, stop=stop)),
            "doorbell": lambda: testing_floods.doorbell_storm(hv, self.secret, self.doorbell_path,
                                                       stop=stop, bound=self.ports),
            "messages": lambda: self._both(
                testing_floods.oversized_message_flood(self.address, calls=8, stop=stop),
                testing_floods.oversized_message_flood(self.address, calls=8, credentials=signed,
                                                stop=stop)),
            "calls": lambda: self.calls(stop),
            "devices": lambda: self.devices(hv, stop),
        }

    @staticmethod
    async def _until(stop: asyncio.Event, flood) -> collections.Counter:
        out: collections.Counter = collections.Counter()
        while not stop.is_set():
            out.update(await flood())
        return out

    @staticmethod
    async def _both(*floods) -> collections.Counter:
        out: collections.Counter = collections.Counter()
        for counts in await asyncio.gather(*floods):
            out.update(counts)
        return out

    async def calls(self, stop: asyncio.Event) -> collections.Counter:
        """5000 calls at once, again and again, on a connection of their
        own (their streams go unread and fill the connection's flow-control
        window, which would stall mallory's other floods' calls on a shared
        one). The streams of a burst that the hypervisor admits take her
        whole budget of calls in flight: each is held a second at most (an
        upcall may never come); between bursts it rests a fifth of a second,
        and waits while the devices flood has writes to make."""
        options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        out: collections.Counter = collections.Counter()
        async with HypervisorClient.connect(self.address, self.domid, self.secret,
                                            options=options) as hv:
            while not stop.is_set():
                out.update(await testing_floods.concurrent_call_flood(hv, hold=1.0))
                await asyncio.sleep(0.2)
                await _until_set(self.devices_turn_over, stop)
        return out

    async def devices(self, hv: HypervisorClient, stop: asyncio.Event) -> collections.Counter:
        """Whatever vif the toolstack gives us: garbage in its frontend
        (netback must fail that one device, and let it go when detached)."""
        base = f"{self.home}/device/vif"
        out: collections.Counter = collections.Counter()
        seen: set[str] = set()
        while not stop.is_set():
            try:
                listing = await self._taken(stop, lambda: hv.xenstore.Directory(
                    xenstore_pb2.PathRequest(path=base)))
            except grpc.aio.AioRpcError:
                listing = None                  # no vif yet: no directory
            names = set(listing.names) if listing is not None else set()
            writes = [(f"{base}/{devid}/{key}", value) for devid in names - seen
                      for key, value in (("tx-ring-ref", b"\xff\xfe"), ("rx-ring-ref", "²".encode()),
                                         ("event-channel", b"-1"), ("state", b"\xff\xfe\xfd"))]

            if writes:
                self.devices_turn_over.clear()

            async def write(path: str, value: bytes) -> str:
                try:
                    written = await self._taken(stop, lambda: hv.xenstore.Write(
                        xenstore_pb2.WriteRequest(path=path, value=value)))
                    return "OK" if written is not None else "stopped before written"
                except grpc.aio.AioRpcError as err:
                    return err.code().name
            try:
                out.update(await asyncio.gather(*(write(path, value) for path, value in writes)))
            finally:
                self.devices_turn_over.set()
            seen = names
            await asyncio.sleep(0.05)
        return out

    @staticmethod
    async def _taken(stop: asyncio.Event, call):
        """``call()`` until the hypervisor takes it: mallory's other floods
        keep her calls at their limit (RESOURCE_EXHAUSTED), the calls flood
        rests between its bursts. None if the stop comes first; other
        errors are raised."""
        while not stop.is_set():
            try:
                return await call()
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
            await asyncio.sleep(0.01)
        return None

    async def setup(self, hv: HypervisorClient, floods) -> None:
        """What floods need before they start, done while mallory is the
        only caller it has: ports to storm with, a full grant table (what
        made every gfn of a DecreaseReservation cost a table scan)."""
        if "doorbell" in floods:
            self.ports = await testing_floods.bind_ipis(hv, 600)
        if "reservation" in floods:
            await testing_floods.fill_grant_table(hv)

    async def run(self, floods=FLOODS, grace: float = 30.0, ready=lambda: None) -> None:
        stop = asyncio.Event()
        on_stop_signal(stop.set)
        async with HypervisorClient.connect(self.address, self.domid, self.secret) as hv:
            await self.setup(hv, floods)
            ready()
            jobs = self._jobs(hv, stop)
            tasks = {name: asyncio.create_task(jobs[name](), name=name) for name in floods}
            await stop.wait()
            # Each flood ends its round and says what it got; one that does
            # not within the grace is cancelled and reported so.
            await asyncio.wait(tasks.values(), timeout=grace)
            for name, task in tasks.items():
                if not task.done():
                    task.cancel()
                    self.stats[name] = collections.Counter({"still running at the stop": 1})
                elif task.exception() is not None:
                    err = task.exception()
                    self.stats[name] = collections.Counter({f"{type(err).__name__}: {err}"[:120]: 1})
                else:
                    self.stats[name] = task.result()


async def _until_set(event: asyncio.Event, stop: asyncio.Event) -> None:
    """Wait for ``event``, or the stop."""
    if event.is_set():
        return
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def flood_main() -> int:
    """The flooder process: credentials on standard input; "ready" on
    standard output once set up, and its counts when SIGTERM ends it."""
    creds = json.loads(sys.stdin.readline())
    flooder = Flooder(creds["address"], creds["doorbell"], creds["domid"], creds["secret"])
    asyncio.run(flooder.run(creds.get("floods") or FLOODS, ready=lambda: print("ready", flush=True)))
    print(json.dumps({k: dict(v) for k, v in flooder.stats.items()}), flush=True)
    return 0


# -- the command ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=argtypes.seconds(0, above=True), default=20.0,
                        help="length of each phase, baseline and flood (default 20)")
    parser.add_argument("--floods", default=",".join(FLOODS),
                        help=f"which floods mallory runs (default all: {','.join(FLOODS)})")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    parser.add_argument("--log-level", default="WARNING",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log level of the lab's services (their logs go to the rundir)")
    parser.add_argument("--flooder", action="store_true", help=argparse.SUPPRESS)


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def _start_flooder(lab: Lab, domid: int, secret: str, floods) -> asyncio.subprocess.Process:
    with open(lab.run.logs / "flooder.log", "ab") as errors:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "xenlab.cli.main", "hostile-soak", "--flooder",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=errors,
            start_new_session=True)
    creds = {"address": lab.run.read_address(), "doorbell": str(lab.run.doorbell),
             "domid": domid, "secret": secret, "floods": list(floods)}
    proc.stdin.write(json.dumps(creds).encode() + b"\n")
    await proc.stdin.drain()
    proc.stdin.close()
    return proc


async def _soak(args, rundir: Path) -> int:
    floods = [f.strip() for f in args.floods.split(",") if f.strip()]
    unknown = set(floods) - set(FLOODS)
    if unknown:
        print(f"xenlab hostile-soak: unknown flood(s) {', '.join(sorted(unknown))}: "
              f"choose from {', '.join(FLOODS)}", file=sys.stderr)
        return 2
    lab = Lab(parse_lab(LAB, "<hostile lab>"), rundir, log_level=args.log_level, progress=_progress)
    await lab.up()
    try:
        hv_pid = lab.service("hypervisor").proc.pid
        _progress(f"baseline: web pings db for {args.seconds:g}s, Domain-0 reads xenstore")
        baseline = Phase("baseline")
        await run_phase(lab, baseline, args.seconds, hv_pid)
        reply = await lab.hv.domains.Create(domains_pb2.CreateDomainRequest(
            spec=domains_pb2.DomainSpec(name="mallory", memory_mb=MALLORY_MB, launcher="none")))
        mallory = reply.info.domid
        _progress(f"flood: mallory (d{mallory}) runs {', '.join(floods)} for {args.seconds:g}s")
        flooder = await _start_flooder(lab, mallory, reply.secret, floods)
        if (await eventloop.wait_for(flooder.stdout.readline(), 120)).strip() != b"ready":
            raise LabError("the flooder did not get ready:\n"
                           + (lab.run.logs / "flooder.log").read_text()[-3000:])
        flood = Phase("flood")
        extra = [lambda stop: churn_vifs(lab, mallory, flood, stop)] if "devices" in floods else []
        try:
            await run_phase(lab, flood, args.seconds, hv_pid, extra)
        finally:
            if flooder.returncode is None:
                flooder.terminate()
            out, _ = await eventloop.wait_for(flooder.communicate(), 60)
        if flooder.returncode != 0:
            raise LabError(f"the flooder exited with {flooder.returncode}:\n"
                           + (lab.run.logs / "flooder.log").read_text()[-3000:])
        try:
            flood.floods = json.loads(out.decode() or "{}")
        except ValueError:
            flood.floods = {"unreadable": out.decode(errors="replace")[-500:]}
        await lab.hv.domains.Destroy(common_pb2.DomainRef(domid=mallory))
    finally:
        await lab.down()
    report = [baseline.summary(), flood.summary()]
    print(format_report(baseline, flood))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if baseline.ok and flood.ok else 1


def format_report(baseline: Phase, flood: Phase) -> str:
    rows = [("", "baseline", "flood"),
            ("pings answered", f"{baseline.answered}/{baseline.sent}", f"{flood.answered}/{flood.sent}"),
            ("RTT p50 (ms)", f"{baseline.rtt(0.5):.3f}", f"{flood.rtt(0.5):.3f}"),
            ("RTT p99 (ms)", f"{baseline.rtt(0.99):.3f}", f"{flood.rtt(0.99):.3f}"),
            ("Domain-0 xenstore calls failed", f"{sum(baseline.dom0_failures.values())}/{baseline.dom0_calls}",
             f"{sum(flood.dom0_failures.values())}/{flood.dom0_calls}"),
            ("hypervisor peak RSS (MiB)", f"{baseline.peak_rss_kib / 1024:.1f}",
             f"{flood.peak_rss_kib / 1024:.1f}"),
            ("vif detaches failed", "-", str(len(flood.detach_failures)))]
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b:>12}  {c:>12}" for a, b, c in rows]
    for name, counts in sorted(flood.floods.items()):
        lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for problem in baseline.ping_errors + flood.ping_errors + flood.detach_failures:
        lines.append(f"  ! {problem}")
    return "\n".join(lines)


def run(args) -> int:
    if args.flooder:
        return flood_main()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rundir = Path(tempfile.mkdtemp(prefix="xenlab-hostile-"))
    try:
        return asyncio.run(_soak(args, rundir))
    except LabError as err:
        print(f"xenlab hostile-soak: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xenlab hostile-soak", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
