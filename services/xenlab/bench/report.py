"""What the bench prints and writes: the machine, the table, the targets."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from xenlab.bench.stats import cpu_sum


# (key, what, target, how it compares): the open issues' targets (the data
# plane off the hypervisor's path; hundreds of domains on one host)
TARGETS = (
    ("throughput_64_ratio", "64-byte throughput, xenlab/kernel", 0.5, ">="),
    ("throughput_1500_ratio", "1500-byte throughput, xenlab/kernel", 0.35, ">="),
    ("rtt_p50_ms", "RTT p50 domU<->domU (ms)", 1.0, "<="),
    ("rtt_p99_ms", "RTT p99 domU<->domU (ms)", 3.0, "<="),
    ("mesh_64_p50_ms", "mesh of 64, every pair, first ping p50 (ms)", 10.0, "<="),
    ("boot_64_seconds", "64 domUs to all vifs Connected (s)", 5.0, "<"),
    ("boot_256_seconds", "256 domUs to all vifs Connected (s)", 30.0, "<"),
    ("pss_domu_mib", "PSS per domU, MiB (once ksmd merged)", 8.0, "<="),
    ("idle_256_percent", "idle lab of 256 domUs + ksmd, % of 1 CPU", 5.0, "<"),
    ("mesh_256_ratio", "mesh of 256, warm p50 / 2-domain p50", 2.0, "<="),
    ("fdb_100k_ratio", "forwarding cost, 100k/10 FDB entries", 1.2, "<="),
)


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "cpu_model": _cpu_model(), "memory_gib": round(_mem_total_kib() / (1 << 20), 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": list(os.getloadavg())}
    info.update(_git())
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_total_kib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _git() -> dict:
    root = Path(__file__).resolve().parents[3]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if rev.returncode != 0:
        return {}
    return {"git": rev.stdout.strip(), "git_modified_files": len(dirty.stdout.splitlines())}


def command_line() -> str:
    return " ".join(["python -m xenlab.bench", *sys.argv[1:]])


# -- targets ---------------------------------------------------------------------------------
def figures(results: dict) -> dict[str, float | None]:
    """The figures the targets are about, None where not measured."""
    out: dict[str, float | None] = {k: None for k, *_ in TARGETS}
    tp = results.get("throughput") or {}
    out["throughput_64_ratio"] = (tp.get("ratio") or {}).get("64")
    out["throughput_1500_ratio"] = (tp.get("ratio") or {}).get("1500")
    lat = (results.get("latency") or {}).get("xenlab") or {}
    out["rtt_p50_ms"] = lat.get("p50_ms")
    out["rtt_p99_ms"] = lat.get("p99_ms")
    scale = results.get("scale") or {}
    for run in scale.get("boot", []):
        if run["n"] in (64, 256):
            out[f"boot_{run['n']}_seconds"] = run["seconds"]
        if run["n"] == 256 and run.get("idle"):
            out["idle_256_percent"] = run["idle"]["total_percent"] + run["idle"].get("ksmd_percent", 0.0)
        mesh = run.get("mesh") or {}
        # Issue 15's mesh: every domU pings every other (not a sample), and
        # each pair's first ping counts, ARP included, as it was first measured.
        if run["n"] == 64 and mesh.get("p50_ms") and mesh.get("sampled") is False:
            out["mesh_64_p50_ms"] = mesh["p50_ms"]
        warm = mesh.get("warm") or {}
        if run["n"] == 256 and warm.get("p50_ms") and lat.get("p50_ms"):
            out["mesh_256_ratio"] = warm["p50_ms"] / lat["p50_ms"]
    pss = [_merged(run).get("pss_mib_mean") for run in scale.get("boot", [])]
    pss = [p for p in pss if p is not None]
    out["pss_domu_mib"] = max(pss) if pss else None
    out["fdb_100k_ratio"] = (results.get("fdb") or {}).get("ratio_largest_to_smallest")
    return out


def _merged(run: dict) -> dict:
    """A scale run's domU memory once ksmd had merged it, else at Connected."""
    return ((run.get("shared") or {}).get("memory") or run["memory"])["domu"]


def targets(results: dict) -> list[dict]:
    values = figures(results)
    rows = []
    for key, what, target, op in TARGETS:
        value = values[key]
        met = None
        if value is not None:
            met = {">=": value >= target, "<=": value <= target, "<": value < target}[op]
        rows.append({"key": key, "what": what, "target": f"{op} {target:.3g}", "value": value, "met": met,
                     "factor": (value / target if op == ">=" else target / value) if value else None})
    return rows


# -- the table ---------------------------------------------------------------------------------
def _n(value, fmt: str = ",.0f") -> str:
    if value is None:
        return "-"
    return format(value, fmt)


def _costs(per_unit: dict, fmt: str) -> str:
    """'dom0 7.5 (1.6)  d01 2.8 (2.9) ...', dearest first, without the
    processes that did (next to) nothing."""
    rows = sorted(per_unit.items(), key=lambda kv: -kv[1]["cpu_us"])
    return "  ".join(f"{name} {format(c['cpu_us'], fmt)} ({format(c['wait_us'], fmt)})"
                     for name, c in rows if c["cpu_us"] >= 0.05)


def table(results: dict) -> str:
    lines = []
    m = results.get("machine", {})
    lines.append(f"xenlab bench: {m.get('cpus_usable')} CPUs ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, "
                 f"Linux {m.get('kernel')}, Python {m.get('python')}, git {m.get('git', '?')}"
                 f"{' (+' + str(m['git_modified_files']) + ' modified files)' if m.get('git_modified_files') else ''}"
                 f", load {'/'.join(f'{x:.1f}' for x in m.get('loadavg_at_start', []))}")
    lines.append(f"command: {results.get('command')}")
    tp = results.get("throughput")
    if tp:
        kernel = {str(r["size"]): r for r in tp.get("kernel") or []}
        lines += ["", f"Throughput domU -> domU, {_n(tp.get('count'))} frames per size (fps = delivered/s; "
                      "Mbit/s of frame bytes)",
                  f"{'size':>6} {'xenlab fps':>11} {'Mbit/s':>8} {'drops':>7} {'unacc.':>6} | "
                  f"{'kernel fps':>11} {'Mbit/s':>8} {'drops':>7} {'unacc.':>6} | {'ratio':>6}"]
        for r in tp.get("xenlab") or []:
            k = kernel.get(str(r["size"]), {})
            ratio = (tp.get("ratio") or {}).get(str(r["size"]))
            lines.append(f"{r['size']:>6} {_n(r['fps']):>11} {_n(r['mbps'], ',.1f'):>8} {r['dropped']:>7} "
                         f"{r['unaccounted']:>6} | {_n(k.get('fps')):>11} {_n(k.get('mbps'), ',.1f'):>8} "
                         f"{_n(k.get('dropped'), 'd'):>7} {_n(k.get('unaccounted'), 'd'):>6} | "
                         f"{_n(ratio, '.3f'):>6}")
        if tp.get("kernel_skipped"):
            lines.append(f"kernel baseline skipped: {tp['kernel_skipped']}")
        costs = [r for r in tp.get("xenlab") or [] if r.get("per_frame_us")]
        if costs:
            lines.append(f"Where the time goes: CPU us per delivered frame by process (waiting for a CPU); "
                         f"the sum bounds fps on {m.get('cpus_usable', '?')} CPUs")
            for r in costs:
                bound = r.get("cpu_bound_fps")
                lines.append(f"{r['size']:>6} {_costs(r['per_frame_us'], '.1f')} | sum "
                             f"{_n(cpu_sum(r['per_frame_us']), '.1f')}: at most {_n(bound)} fps")
    lat = results.get("latency")
    if lat:
        x, k = lat.get("xenlab") or {}, lat.get("kernel") or {}
        lines += ["", f"Latency domU <-> domU, {x.get('count', k.get('count'))} pings of 98-byte frames, "
                      f"{(x.get('interval') or k.get('interval') or 0) * 1000:g} ms apart (ms)",
                  f"{'':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'min':>8} {'max':>8} {'lost':>5}"]
        for name, r in (("xenlab", x), ("kernel", k)):
            if r:
                lines.append(f"{name:>8} {_n(r.get('p50_ms'), '.3f'):>8} {_n(r.get('p90_ms'), '.3f'):>8} "
                             f"{_n(r.get('p99_ms'), '.3f'):>8} {_n(r.get('min_ms'), '.3f'):>8} "
                             f"{_n(r.get('max_ms'), '.3f'):>8} {r.get('transmitted', 0) - r.get('received', 0):>5}")
        if x.get("per_ping_us"):
            lines.append(f"CPU us per ping by process (waiting for a CPU): {_costs(x['per_ping_us'], '.0f')} | "
                         f"sum {_n(cpu_sum(x['per_ping_us']), ',.0f')}")
        if lat.get("ratio_p50") is not None:
            lines.append(f"{'ratio':>8} {lat['ratio_p50']:>8.1f}  (xenlab p50 / kernel p50)")
        if lat.get("kernel_skipped"):
            lines.append(f"kernel baseline skipped: {lat['kernel_skipped']}")
    scale = results.get("scale")
    if scale:
        lines += ["", "Scale: domUs booted to all vifs Connected; memory per domU process (MiB)",
                  f"{'N':>4} {'boot s':>7} {'half s':>7} {'RSS mean':>9} {'RSS max':>8} {'PSS mean':>9} "
                  f"{'anon mean':>10} {'CPU s/domU':>11} {'PSS merged':>11} {'after s':>8}"]
        for r in scale.get("boot", []):
            d = r["memory"]["domu"]
            shared = r.get("shared") or {}
            merged = (shared.get("memory") or {}).get("domu") or {}
            lines.append(f"{r['n']:>4} {r['seconds']:>7.1f} {_n(r.get('half_connected_seconds'), '.1f'):>7} "
                         f"{_n(d.get('rss_mib_mean'), '.1f'):>9} {_n(d.get('rss_mib_max'), '.1f'):>8} "
                         f"{_n(d.get('pss_mib_mean'), '.1f'):>9} {_n(d.get('anon_mib_mean'), '.1f'):>10} "
                         f"{_n(d.get('cpu_seconds_mean'), '.2f'):>11} {_n(merged.get('pss_mib_mean'), '.1f'):>11} "
                         f"{_n(shared.get('seconds'), '.0f'):>8}")
        for r in scale.get("boot", []):
            after = ((r.get("shared") or {}).get("after_mesh") or {}).get("domu") or {}
            remerged = (r.get("shared") or {}).get("remerged") or {}
            again = ((remerged.get("memory") or {}).get("domu") or {}).get("pss_mib_mean")
            if after.get("pss_mib_mean") is not None:
                lines.append(f"{r['n']:>4}: PSS per domU after the ping mesh sample "
                             f"{after['pss_mib_mean']:.1f} MiB mean (merged pages its traffic wrote are copies again)"
                             + (f"; merged again {again:.1f} after {remerged['seconds']:.0f}s" if again is not None else ""))
        skipped = {(r.get("shared") or {}).get("skipped") for r in scale.get("boot", [])} - {None}
        lines.append("PSS merged: once ksmd had merged the domUs' pages (--page-sharing; "
                     "`after s`: seconds after Connected)"
                     + (f"; not measured: {', '.join(sorted(skipped))}" if skipped else ""))
        idle = [r for r in scale.get("boot", []) if r.get("idle")]
        if idle:
            lines += ["Idle: CPU of the whole lab (every process) with no traffic, % of one core",
                      f"{'N':>4} {'seconds':>8} {'total %':>8} {'domUs %':>8} {'per domU %':>11} {'load 1m':>8} "
                      f"{'ksmd %':>7}"]
            for r in idle:
                i = r["idle"]
                lines.append(f"{r['n']:>4} {i['seconds']:>8g} {i['total_percent']:>8.2f} "
                             f"{i['domus_percent']:>8.2f} {_n(i.get('per_domu_percent_mean'), '.3f'):>11} "
                             f"{i['loadavg_1m'][0]:>8.2f} {_n(i.get('ksmd_percent'), '.2f'):>7}")
        meshes = [r["mesh"] for r in scale.get("boot", []) if r.get("mesh")] \
            or ([scale["mesh"]] if scale.get("mesh") else [])
        for mesh in meshes:
            lines.append(f"ping mesh {'sample ' if mesh.get('sampled') else ''}of {mesh['n']}: "
                         f"{mesh['replied']}/{mesh['pairs']} replied in "
                         f"{mesh['seconds']:.1f}s, RTT p50 {_n(mesh.get('p50_ms'), '.2f')} ms, "
                         f"p99 {_n(mesh.get('p99_ms'), '.2f')} ms (first ping of each pair: ARP included)")
            for key, how in (("warm", "one ping at a time"), ("warm_concurrent", "{} sources at a time")):
                warm = mesh.get(key)
                if warm:
                    lines.append(f"  again, ARP resolved, {how.format(warm.get('concurrency'))}: "
                                 f"{warm['replied']}/{mesh['pairs']} replied, RTT p50 "
                                 f"{_n(warm.get('p50_ms'), '.2f')} ms, p99 {_n(warm.get('p99_ms'), '.2f')} ms")
        if scale.get("error"):
            lines.append(f"scale stopped: {scale['error']}")
    cores = results.get("cores")
    if cores:
        lines += ["", f"Data-path cores, warm, in this process: ns per {cores['size']}-byte frame in batches of "
                      f"{cores['batch']} (median of {cores['repeats']} runs, min-max)"]
        for name, c in cores["cores"].items():
            lines.append(f"  {name:<12} {c['ns_per_frame']:>7,.0f}  ({c['min']:,.0f}-{c['max']:,.0f})")
        lines.append(f"  {'sum':<12} {cores['sum_ns_per_frame']:>7,.0f}")
    calls = results.get("calls")
    if calls:
        lines += ["", "Calls per ping by process: of Python functions (of all functions, C's "
                      "included); cProfile in each, a lab of its own: counts, not times"]
        if calls.get("error"):
            lines.append(f"  calls stopped: {calls['error']}")
        else:
            lines.append("  " + "  ".join(f"{name} {p['python_calls_per_ping']:,.0f} "
                                          f"({p['calls_per_ping']:,.0f})"
                                          for name, p in calls["processes"].items())
                         + f" | sum {calls['python_sum_per_ping']:,.0f} ({calls['sum_per_ping']:,.0f})"
                           f"  [{calls['pings']:,} pings, {calls['received']:,} answered]")
            for name, p in calls["processes"].items():
                top = ", ".join(f"{t['function']} {t['per_ping']:.0f}" for t in p["top"][:4])
                if top:
                    lines.append(f"  {name:<10} {top}")
    fdb = results.get("fdb")
    if fdb:
        lines += ["", "Bridge forwarding cost (core, per frame) against FDB size"]
        for label, runs, ratio in (("same 5 destinations", fdb["runs"], fdb["ratio_largest_to_smallest"]),
                                   ("destinations all over", fdb.get("spread_runs"), fdb.get("spread_ratio"))):
            if runs:
                lines.append(f"  {label:<22}" + "   ".join(
                    f"{r['entries']:>7,}: {r['ns_per_frame'] / 1000:.2f} us" for r in runs)
                    + f"   ratio {ratio:.2f}")
    prof = results.get("profile") or {}
    if prof.get("processes"):
        lines += ["", f"Profile of a 64-byte blast (py-spy; {_n(prof.get('fps_under_profiler'))} fps under it): "
                      "CPU % of one core, then the top Python functions by own time"]
        cpu = prof.get("cpu_percent") or {}
        for name, summary in prof["processes"].items():
            if not summary.get("work_samples"):
                continue
            top = ", ".join(f"{r['name']} {r['percent']:.0f}%" for r in summary["top_self"][:3])
            lines.append(f"  {name:>10} {cpu.get(name, 0):>5.0f}%  {top}")
    elif prof.get("skipped"):
        lines += ["", f"profile skipped: {prof['skipped']}"]
    rows = results.get("targets") or []
    measured = [t for t in rows if t["met"] is not None]
    if measured:
        lines += ["", "Targets", f"  {'':<42} {'target':>9} {'value':>9}"]
        for t in measured:
            lines.append(f"  {t['what']:<42} {t['target']:>9} {t['value']:>9.3g}  "
                         f"{'met' if t['met'] else 'MISSED'}")
    if len(measured) < len(rows):
        lines += ["", f"{len(rows) - len(measured)} of the {len(rows)} targets not measured in this run: "
                      + ", ".join(t["what"] for t in rows if t["met"] is None)]
    return "\n".join(lines)
