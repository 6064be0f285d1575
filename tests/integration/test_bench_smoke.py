"""`python -m xenlab.bench --quick`: it runs end to end, writes its figures,
and every frame it sent is accounted for. No timing is asserted: the bench
prints timings, tests only check that they were measured."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from xenlab.lab.pool import Pool

pytestmark = pytest.mark.integration

SIZES = (64, 1500)
COUNT = 500


def check_books(run: dict, size: int) -> None:
    assert run["size"] == size and run["count"] == COUNT
    assert run["sent"] == COUNT
    # Zero unaccounted loss: delivered + counted drops = sent.
    assert run["delivered"] + run["dropped"] == run["sent"]
    assert run["unaccounted"] == 0
    assert sum(n for reasons in run["drops"].values() for n in reasons.values()) == run["dropped"]
    assert run["delivered"] > 0 and run["fps"] > 0 and run["mbps"] > 0


def test_quick_bench_writes_figures_and_accounts_for_every_frame(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "xenlab.bench", "--quick", "--only", "throughput,latency,scale",
         "--count", str(COUNT), "--sizes", ",".join(map(str, SIZES)), "--pings", "20",
         "--scale", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Throughput domU -> domU" in proc.stdout and "Targets" in proc.stdout
    results = json.loads(out.read_text())

    assert results["machine"]["cpus"] >= 1 and results["command"].startswith("python -m xenlab.bench")
    tp = results["throughput"]
    assert [r["size"] for r in tp["xenlab"]] == list(SIZES)
    for run, size in zip(tp["xenlab"], SIZES):
        check_books(run, size)
        points = [hop["point"] for hop in run["path"]]
        assert len(points) == 8 and "netfront tx" in points[0] and "netfront rx" in points[-1]
        # The first point saw every frame the generator handed over, less its drops.
        first = run["path"][0]
        assert first["passed"] + sum(first["drops"].values()) == run["sent"]
    if "kernel_skipped" in tp:
        assert tp["kernel_skipped"]              # a reason, printed
    else:
        for run, size in zip(tp["kernel"], SIZES):
            check_books(run, size)
        assert set(tp["ratio"]) == {str(s) for s in SIZES}

    lat = results["latency"]["xenlab"]
    assert lat["transmitted"] == 20 and lat["received"] > 0
    assert lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]

    boot = results["scale"]["boot"][0]
    assert boot["n"] == 2 and boot["seconds"] > 0
    assert boot["memory"]["domu"]["count"] == 2 and boot["memory"]["domu"]["rss_mib_max"] > 0
    shared = boot["shared"]
    if "skipped" in shared:
        assert shared["skipped"]                # a reason: no KSM, or ksmd not running (not root)
    else:
        # Page sharing on (root): once ksmd has merged, the domUs' PSS is down.
        assert shared["memory"]["domu"]["pss_mib_mean"] < boot["memory"]["domu"]["pss_mib_mean"]
        assert shared["pages_sharing"] > 0 and "after_mesh" in shared and "remerged" not in shared
    mesh = results["scale"]["mesh"]
    assert mesh["pairs"] == 2 and mesh["replied"] == 2
    assert mesh["warm"]["replied"] == mesh["warm_concurrent"]["replied"] == 2

    assert {t["key"] for t in results["targets"]} >= {"throughput_64_ratio", "rtt_p50_ms", "pss_domu_mib"}


def test_the_migrate_section_moves_a_domu_between_two_hosts_in_each_series(tmp_path):
    """`--only migrate`: a pool of two hosts, one migration per series. Its
    figures are measured, not judged: every series moved the domU, the live
    ones in pre-copy rounds and the stop-and-copy ones in one."""
    reason = Pool.unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "xenlab.bench", "--only", "migrate", "--migrations", "1",
         "--udp-rate", "2M", "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Live migration between two hosts of a pool" in proc.stdout
    series = json.loads(out.read_text())["migrate"]["series"]
    assert list(series) == ["idle, live", "idle, stop-and-copy", "udp, live", "udp, stop-and-copy"]
    for name, s in series.items():
        (run,) = s["runs"]
        assert run["downtime_s"] > 0 and run["vifs_s"] is not None, (name, run)
        assert sum(run["round_pages"]) >= run["pages"] > 0, (name, run)
        if name.endswith("stop-and-copy"):
            assert len(run["round_pages"]) == 1, (name, run)
        else:
            assert len(run["round_pages"]) >= 2, (name, run)
    # back and forth: a -> b, b -> a, a -> b, b -> a
    assert [s["runs"][0]["from"] for s in series.values()] == ["a", "b", "a", "b"]


async def test_the_calls_section_counts_each_process_of_the_ping_path():
    """`--only calls`: every service and domain of the lab writes its
    counts on the signal, and the difference is each one's calls per ping."""
    from xenlab.bench.calls import calls_per_ping
    from xenlab.eventloop import CALL_STATS_ENV
    import os
    out = await calls_per_ping(20, 0.01)
    assert CALL_STATS_ENV not in os.environ                  # put back as it was
    assert out["pings"] == 20 and out["received"] == 20
    procs = out["processes"]
    assert set(procs) == {"hypervisor", "bridge", "dom0", "d01", "d02"}
    # Each process on the ping's path made calls for it; the domains run
    # netfront, Domain-0 netback, and the bridge forwards.
    for name in ("bridge", "dom0", "d01", "d02"):
        assert procs[name]["calls_per_ping"] > 10, (name, procs[name])
    # The hypervisor is off the per-frame path (direct doorbells, grant
    # frames): it makes fewer calls a ping than the process that is on it.
    assert procs["hypervisor"]["calls_per_ping"] < procs["dom0"]["calls_per_ping"] / 4
    assert out["sum_per_ping"] == sum(p["calls_per_ping"] for p in procs.values())
