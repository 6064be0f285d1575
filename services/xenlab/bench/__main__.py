"""`xenlab bench` / `python -m xenlab.bench`: throughput, latency and scale of
a local lab, side by side with the Linux kernel bridge, in one run.

Sections (``--only``, in this order):
  throughput  frames/s domU -> domU at each size, with every frame accounted
              for (xenlab.bench.throughput), and the same through two network
              namespaces on a Linux bridge (xenlab.bench.kernel)
  latency     ping RTT domU <-> domU, p50/p90/p99, and the kernel's
  scale       N domUs to all vifs Connected, RSS and PSS per domain process,
              the idle lab's CPU, a ping mesh sample at each N
              (xenlab.bench.scale)
  fdb         bridge forwarding cost against FDB size (xenlab.bench.fdb)
  cores       each data-path core's cost per frame, warm, in this process:
              netfront, netback, the veth framing, the bridge
              (xenlab.bench.cores)
  calls       Python calls per ping by process, counted by cProfile in a lab
              of its own: the figure that does not move with the host's
              speed (xenlab.bench.calls)
  netem       how accurately netem (`xenlab tc`) delays, drops and paces
              frames, against a baseline of the same run (xenlab.bench.netem)
  paging      the same guest paging workloads in the three paging modes
              (direct, shadow, hap): hypercalls, VM exits, page-table updates,
              TLB misses and their walks' references, the hypervisor's
              bookkeeping pages, time per operation (xenlab.bench.paging)
  migrate     live migration between the two hosts of a pool, idle and under
              a UDP stream, against stop-and-copy in the same run: downtime,
              rounds, pages per round (xenlab.bench.migrate; needs root)

It prints progress on standard error, the table on standard output, and
writes every figure as JSON (``--json``, after each section, so a long run
that is stopped keeps what it measured).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from xenlab import argtypes
from xenlab.bench import migrate as migrate_bench
from xenlab.bench import netem as netem_bench
from xenlab.bench import paging as paging_bench
from xenlab.osutil import Interrupted, cancelled_by_stop_signal
from xenlab.domain.netstack import PING_MAX_COUNT, PING_MIN_INTERVAL
from xenlab.domain.paging_workloads import MAX_PAGES
from xenlab.domain.traffic import MAX_BATCH, MIN_SIZE
from xenlab.xen.abi import ETH_DATA_LEN, ETH_HLEN
from xenlab.bench import report
from xenlab.bench.kernel import BaselineError, KernelBridge
from xenlab.bench.labs import lab_spec, running_lab
from xenlab.bench.throughput import DomainPair, run_latency, run_throughput, warm_up
from xenlab.bench.profile import Profiler, find_py_spy
from xenlab.bench.scale import FULL_MESH_UP_TO, MESH_PER_SOURCE, MESH_SETTLE, boot
from xenlab.hypervisor.page_sharing import MODES as PAGE_SHARING_MODES
from xenlab.bench.fdb import fdb_scaling, profile_forwarding
from xenlab.bench.cores import core_costs
from xenlab.bench.calls import calls_per_ping

SECTIONS = ("throughput", "latency", "scale", "fdb", "cores", "calls", "netem", "paging", "migrate")
FULL = {"count": 50_000, "pings": 2000, "interval": 0.01, "scale": "8,32,64",
        "fdb_frames": 200_000, "fdb_repeats": 5, "cores_frames": 200_000, "calls_pings": 1000, "paging_pages": paging_bench.DEFAULT_PAGES,
        "paging_remap": paging_bench.DEFAULT_REMAP, "idle": 30.0,
        "migrations": migrate_bench.MIGRATIONS}
QUICK = {"count": 2000, "pings": 200, "interval": 0.005, "scale": "4",
         "fdb_frames": 20_000, "fdb_repeats": 3, "cores_frames": 20_000, "calls_pings": 100, "paging_pages": 64, "paging_remap": 16,
         "idle": 2.0, "migrations": 2}
LOADED = 0.5            # a 1-minute load average over this at the start is worth a warning


@dataclass(frozen=True)
class Plan:
    sections: tuple[str, ...]
    quick: bool
    count: int
    sizes: tuple[int, ...]
    pings: int
    interval: float
    scale: tuple[int, ...]
    mesh: bool
    idle: float
    mesh_per_source: int | None
    fdb_sizes: tuple[int, ...]
    fdb_frames: int
    fdb_repeats: int
    paging_pages: int
    paging_remap: int
    paging_domains: bool
    migrations: int
    udp_rate: float
    kernel: bool
    batch: int
    json: Path
    profile: Path | None
    py_spy: str | None
    log_level: str
    keep_logs: Path | None
    page_sharing: str = "auto"
    cores_frames: int = FULL["cores_frames"]
    calls_pings: int = FULL["calls_pings"]


# What the path can carry: the agent's Blast frame (header and a sequence
# number) up to a 1500-byte MTU's frame, which is also the kernel
# baseline's veth MTU.
SIZE_MIN = MIN_SIZE
SIZE_MAX = ETH_HLEN + ETH_DATA_LEN


def _sizes(text: str) -> tuple[int, ...]:
    sizes = _ints(text)
    bad = [n for n in sizes if not SIZE_MIN <= n <= SIZE_MAX]
    if bad:
        raise argparse.ArgumentTypeError(
            f"frame size(s) {', '.join(map(str, bad))} out of range {SIZE_MIN}..{SIZE_MAX} "
            f"(an Ethernet header and a sequence number, up to a 1500-byte MTU)")
    return sizes


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers separated by commas") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive numbers")
    return values


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or '(none)'}: "
                                         f"choose from {', '.join(SECTIONS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"small counts, for a smoke test ({QUICK['count']} frames per size, "
                             f"{QUICK['pings']} pings, scale {QUICK['scale']})")
    parser.add_argument("--only", type=_sections, default=SECTIONS, metavar="LIST",
                        help=f"sections to run, comma-separated: {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), metavar="FILE",
                        help="where to write the figures (default: bench-results.json)")
    parser.add_argument("--count", type=argtypes.whole(1), help=f"frames per size (default {FULL['count']:,})")
    parser.add_argument("--sizes", type=_sizes, default=(64, 512, 1500),
                        help=f"frame sizes in bytes, without FCS, {SIZE_MIN}..{SIZE_MAX} "
                             f"(default 64,512,1500)")
    parser.add_argument("--batch", type=argtypes.whole(1, MAX_BATCH), default=64,
                        help=f"frames per transmit in the sender, 1..{MAX_BATCH} (default 64)")
    parser.add_argument("--pings", type=argtypes.whole(1, PING_MAX_COUNT), help=f"pings for the RTT (default {FULL['pings']})")
    parser.add_argument("--interval", type=argtypes.seconds(PING_MIN_INTERVAL, 60.0), help=f"seconds between pings (default {FULL['interval']})")
    parser.add_argument("--scale", type=_ints, help=f"numbers of domUs to boot (default {FULL['scale']})")
    parser.add_argument("--no-mesh", action="store_true", help="skip the ping mesh sample at each N")
    parser.add_argument("--page-sharing", choices=PAGE_SHARING_MODES, default=None,
                        help="scale: the hypervisor's --page-sharing (default on as root: ksmd "
                             "started and the memory measured again once it has merged; auto "
                             "otherwise)")
    parser.add_argument("--mesh-per-source", type=argtypes.whole(0, 4096), default=None,
                        metavar="K", help=f"destinations each domU pings in the mesh, 0 for every other "
                                          f"domU (default: every other up to {FULL_MESH_UP_TO} domUs, "
                                          f"{MESH_PER_SOURCE} above)")
    parser.add_argument("--idle", type=argtypes.seconds(0.0, 3600.0), metavar="SECONDS",
                        help=f"seconds over which the idle lab's CPU is measured at each N, 0 to skip "
                             f"(default {FULL['idle']:g}; {QUICK['idle']:g} with --quick)")
    parser.add_argument("--fdb-sizes", type=_ints, default=(10, 10_000, 100_000),
                        help="FDB sizes for the forwarding cost (default 10,10000,100000)")
    parser.add_argument("--paging-pages", type=argtypes.whole(1, MAX_PAGES),
                        help=f"pages each paging workload maps (default {FULL['paging_pages']})")
    parser.add_argument("--paging-remap", type=argtypes.whole(0, MAX_PAGES),
                        help=f"pages the remap workload moves, at most --paging-pages "
                             f"(default {FULL['paging_remap']})")
    parser.add_argument("--paging-in-process", action="store_true",
                        help="paging: only the in-process run (no lab of three domains)")
    parser.add_argument("--migrations", type=argtypes.whole(1, 1000), metavar="N",
                        help=f"migrate: migrations in each series (default {FULL['migrations']}; "
                             f"{QUICK['migrations']} with --quick)")
    parser.add_argument("--udp-rate", type=argtypes.bitrate, default=migrate_bench.UDP_RATE,
                        metavar="RATE",
                        help=f"migrate: the UDP stream toward the migrating domU, in bits/s as "
                             f"iperf's -b (10M, 500k; default {migrate_bench.UDP_RATE / 1e6:g}M)")
    parser.add_argument("--no-kernel", action="store_true", help="skip the Linux kernel baseline")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also run one 64-byte blast under py-spy and summarise where each "
                             "process spends its time (raw samples are left in DIR)")
    parser.add_argument("--py-spy", metavar="PATH", help="the py-spy binary (default: on PATH)")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="the lab services' log level (default WARNING: logging costs time)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the labs' logs here")


def make_plan(args) -> Plan:
    base = QUICK if args.quick else FULL
    scale = args.scale or _ints(base["scale"])
    paging_pages = args.paging_pages or base["paging_pages"]
    paging_remap = args.paging_remap if args.paging_remap is not None else min(base["paging_remap"], paging_pages)
    if paging_remap > paging_pages:
        raise SystemExit(f"xenlab bench: --paging-remap {paging_remap} is more than the "
                         f"{paging_pages} pages mapped (--paging-pages)")
    return Plan(sections=tuple(s for s in SECTIONS if s in args.only), quick=args.quick,
                count=args.count or base["count"], sizes=args.sizes, pings=args.pings or base["pings"],
                interval=args.interval or base["interval"], scale=scale, mesh=not args.no_mesh,
                idle=base["idle"] if args.idle is None else args.idle,
                mesh_per_source=args.mesh_per_source,
                fdb_sizes=args.fdb_sizes, fdb_frames=base["fdb_frames"], fdb_repeats=base["fdb_repeats"],
                paging_pages=paging_pages, paging_remap=paging_remap,
                paging_domains=not args.paging_in_process,
                migrations=args.migrations or base["migrations"], udp_rate=args.udp_rate,
                kernel=not args.no_kernel, batch=args.batch, json=args.json, profile=args.profile,
                py_spy=args.py_spy, log_level=args.log_level, keep_logs=args.keep_logs,
                page_sharing=args.page_sharing or ("on" if os.geteuid() == 0 else "auto"),
                cores_frames=base["cores_frames"], calls_pings=args.pings or base["calls_pings"])


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.results: dict = {"command": report.command_line(), "machine": report.machine(),
                              "quick": plan.quick, "plan": _jsonable(asdict(plan)),
                              "started": time.time()}

    def save(self) -> None:
        self.results["targets"] = report.targets(self.results)
        self.plan.json.parent.mkdir(parents=True, exist_ok=True)
        self.plan.json.write_text(json.dumps(self.results, indent=2, default=str) + "\n")

    async def run(self) -> dict:
        plan = self.plan
        load = self.results["machine"]["loadavg_at_start"][0]
        if load > LOADED:
            progress(f"warning: the load average is {load:.1f}: other work on this machine skews the figures")
        if "throughput" in plan.sections or "latency" in plan.sections:
            await self.kernel_baseline()
            self.save()
            await self.xenlab_paths()
            self.ratios()
            self.save()
        if "scale" in plan.sections:
            await self.scale()
            self.save()
        if "fdb" in plan.sections:
            self.fdb()
        if "cores" in plan.sections:
            self.cores()
        if "calls" in plan.sections:
            await self.calls()
            self.save()
        if "netem" in plan.sections:
            self.results["netem"] = await netem_bench.run(progress, plan.log_level)
            self.save()
        if "paging" in plan.sections:
            await self.paging()
            self.save()
        if "migrate" in plan.sections:
            try:
                self.results["migrate"] = await migrate_bench.run(progress, plan.migrations,
                                                                  plan.udp_rate, plan.log_level)
            except Exception as err:     # a pool that does not come up ends the section, with why
                self.results["migrate"] = {"error": f"{type(err).__name__}: {err}"}
                progress(f"migrate stopped: {self.results['migrate']['error']}")
            self.save()
        self.results["finished"] = time.time()
        self.results["machine"]["loadavg_at_end"] = list(os.getloadavg())
        self.save()
        return self.results

    # -- the kernel baseline ---------------------------------------------------------------
    async def kernel_baseline(self) -> None:
        plan = self.plan
        reason = "skipped with --no-kernel" if not plan.kernel else KernelBridge.unavailable()
        tp = self.results.setdefault("throughput", {"count": plan.count}) if "throughput" in plan.sections else None
        lat = self.results.setdefault("latency", {}) if "latency" in plan.sections else None
        if reason:
            progress(f"kernel baseline skipped: {reason}")
            for section in (tp, lat):
                if section is not None:
                    section["kernel_skipped"] = reason
            return
        try:
            with KernelBridge() as kb:
                if tp is not None:
                    tp["kernel"] = []
                    for size in plan.sizes:
                        progress(f"kernel: {plan.count:,} frames of {size} bytes, namespace A -> bridge -> B")
                        r = await kb.throughput(size, plan.count)
                        tp["kernel"].append(r)
                        progress(f"  {r['fps']:,.0f} fps, {r['mbps']:,.1f} Mbit/s, {r['dropped']} dropped, "
                                 f"{r['unaccounted']} unaccounted")
                if lat is not None:
                    progress(f"kernel: {plan.pings} pings, {plan.interval * 1000:g} ms apart")
                    lat["kernel"] = await kb.latency(plan.pings, plan.interval)
                    progress(f"  p50 {lat['kernel']['p50_ms']:.3f} ms")
        except BaselineError as err:
            progress(f"kernel baseline failed: {err}")
            for section in (tp, lat):
                if section is not None:
                    section["kernel_error"] = str(err)

    # -- xenlab: two domUs ------------------------------------------------------------------
    async def xenlab_paths(self) -> None:
        plan = self.plan
        progress("xenlab: starting a lab of two domUs (d01 -> d02)")
        async with running_lab(lab_spec(2), log_level=plan.log_level, keep=plan.keep_logs) as lab:
            pair = await DomainPair.open(lab, "d01", "d02")
            try:
                await warm_up(pair, 2)
                if "throughput" in plan.sections:
                    tp = self.results.setdefault("throughput", {"count": plan.count})
                    tp["xenlab"] = []
                    for size in plan.sizes:
                        progress(f"xenlab: {plan.count:,} frames of {size} bytes, d01 -> d02")
                        r = await run_throughput(pair, 2, size, plan.count, batch=plan.batch)
                        tp["xenlab"].append(r)
                        progress(f"  {r['fps']:,.0f} fps, {r['mbps']:,.1f} Mbit/s, {r['dropped']} dropped, "
                                 f"{r['unaccounted']} unaccounted; CPU % {r['cpu_percent']}")
                        self.save()
                if "latency" in plan.sections:
                    progress(f"xenlab: {plan.pings} pings d01 -> d02, {plan.interval * 1000:g} ms apart")
                    lat = self.results.setdefault("latency", {})
                    lat["xenlab"] = await run_latency(pair, 2, plan.pings, plan.interval)
                    progress(f"  p50 {lat['xenlab']['p50_ms']:.3f} ms")
                if plan.profile is not None and "throughput" in plan.sections:
                    await self.profile(pair)
            finally:
                await pair.close()

    async def profile(self, pair) -> None:
        plan = self.plan
        py_spy = find_py_spy(plan.py_spy)
        if py_spy is None:
            progress("profile skipped: py-spy not found (pip install py-spy, or --py-spy PATH)")
            self.results["profile"] = {"skipped": "py-spy not found"}
            return
        profiler = Profiler(py_spy, plan.profile)
        progress(f"profile: {plan.count:,} frames of 64 bytes under py-spy ({profiler.rate} Hz)")
        run = await run_throughput(pair, 2, 64, plan.count, batch=plan.batch, profiler=profiler)
        self.results["profile"] = {"fps_under_profiler": run["fps"], "cpu_percent": run["cpu_percent"],
                                   "raw": str(plan.profile), "processes": profiler.summaries()}

    def ratios(self) -> None:
        tp = self.results.get("throughput")
        if tp and tp.get("kernel") and tp.get("xenlab"):
            kernel = {r["size"]: r["fps"] for r in tp["kernel"]}
            tp["ratio"] = {str(r["size"]): (r["fps"] / kernel[r["size"]] if kernel.get(r["size"]) else None)
                           for r in tp["xenlab"]}
        lat = self.results.get("latency")
        if lat and lat.get("kernel") and lat.get("xenlab") and lat["kernel"].get("p50_ms"):
            lat["ratio_p50"] = lat["xenlab"]["p50_ms"] / lat["kernel"]["p50_ms"]

    # -- scale and FDB ------------------------------------------------------------------------------
    async def scale(self) -> None:
        plan = self.plan
        section = self.results.setdefault("scale", {"boot": []})
        largest = max(plan.scale)
        for n in sorted(plan.scale):
            progress(f"scale: booting {n} domUs")
            try:
                run = await boot(n, timeout=max(120.0, 5.0 * n), progress=progress,
                                 mesh=plan.mesh, log_level=plan.log_level, keep=plan.keep_logs,
                                 idle=plan.idle, mesh_per_source=plan.mesh_per_source,
                                 mesh_settle=0.0 if plan.quick else MESH_SETTLE,
                                 page_sharing=plan.page_sharing, remerge=not plan.quick)
            except Exception as err:        # a lab that does not come up ends the section, with why
                section["error"] = f"N={n}: {type(err).__name__}: {err}"
                progress(f"scale stopped: {section['error']}")
                return
            section["boot"].append(run)
            if n == largest and run.get("mesh") is not None:
                section["mesh"] = run["mesh"]
            self.save()

    async def paging(self) -> None:
        plan = self.plan
        progress(f"paging: {plan.paging_pages} pages, {plan.paging_remap} remapped, in each mode "
                 f"(in-process)")
        runs = paging_bench.run_in_process(plan.paging_pages, plan.paging_remap)
        section = self.results["paging"] = {
            "in_process": paging_bench.figures(runs, plan.paging_pages, plan.paging_remap)}
        self.save()
        if not plan.paging_domains:
            return
        progress("paging: the same in three domains, one per mode (pv; hvm hap=0; hvm hap=1)")
        try:
            runs = await paging_bench.run_in_domains(plan.paging_pages, plan.paging_remap,
                                                     log_level=plan.log_level, keep=plan.keep_logs)
        except Exception as err:      # a lab that does not come up ends the section, with why
            section["domains_error"] = f"{type(err).__name__}: {err}"
            progress(f"paging in domains stopped: {section['domains_error']}")
            return
        section["domains"] = paging_bench.figures(runs, plan.paging_pages, plan.paging_remap)

    def cores(self) -> None:
        plan = self.plan
        progress(f"cores: {plan.cores_frames:,} frames of 64 bytes through each data-path core, in this process")
        self.results["cores"] = core_costs(plan.cores_frames, repeats=plan.fdb_repeats)
        self.save()

    async def calls(self) -> None:
        plan = self.plan
        try:
            self.results["calls"] = await calls_per_ping(plan.calls_pings, plan.interval,
                                                         plan.log_level, plan.keep_logs, progress)
        except Exception as err:     # a lab that does not come up (or a CallCountError) ends the section
            self.results["calls"] = {"error": f"{type(err).__name__}: {err}"}
            progress(f"calls stopped: {self.results['calls']['error']}")

    def fdb(self) -> None:
        plan = self.plan
        progress(f"fdb: forwarding cost with {', '.join(f'{n:,}' for n in plan.fdb_sizes)} entries")
        self.results["fdb"] = fdb_scaling(plan.fdb_sizes, plan.fdb_frames, plan.fdb_repeats)
        if plan.profile is not None:
            self.results["fdb"]["profile"] = profile_forwarding(max(plan.fdb_sizes))


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


async def _main(plan: Plan) -> dict:
    bench = Bench(plan)
    try:
        # Cancelled, so that the labs are taken down and the namespaces deleted.
        return await cancelled_by_stop_signal(bench.run())
    except BaseException as err:
        bench.results["error"] = f"{type(err).__name__}: {err}"
        bench.save()
        raise


def run(args) -> int:
    plan = make_plan(args)
    try:
        results = asyncio.run(_main(plan))
    except Interrupted as stop:
        print(f"xenlab bench: stopped; what was measured is in {plan.json}", file=sys.stderr)
        return stop.exit_status
    print(report.table(results))
    if "netem" in results:
        print("\n" + netem_bench.table(results["netem"]))
    if "paging" in results:
        print("\n" + paging_bench.tables(results["paging"]))
    if "migrate" in results:
        print("\n" + migrate_bench.table(results["migrate"]))
    print(f"\nfigures: {plan.json}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xenlab.bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
