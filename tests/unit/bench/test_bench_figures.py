"""The bench's arguments, its arithmetic, its profile summary, its report and the FDB cost run."""
from __future__ import annotations

import argparse
import math

import pytest

from xenlab.bench import __main__ as bench_main
from xenlab.bench import report
from xenlab.bench.fdb import filled_bridge, forwarding_cost, frames_for
from xenlab.bench.profile import area, summarise
from xenlab.bench.scale import mesh_pairs, mesh_per_source_for
from xenlab.bench.stats import (conservation, cpu_bound, cpu_percent, delta, percentile, percentiles,
                                per_unit, rate_fields, time_used)


def test_percentiles_are_nearest_rank():
    values = sorted(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    p = percentiles([0.003, 0.001, 0.002])
    assert p["p50_ms"] == pytest.approx(2.0) and p["max_ms"] == pytest.approx(3.0)
    assert percentiles([])["p50_ms"] is None


def test_conservation_balances_sent_against_delivered_and_named_drops():
    books = conservation(100, 90, {"vif2.0": {"rx_ring_full": 7}, "eth0": {"tx_ring_full": 3}})
    assert books["dropped"] == 10 and books["unaccounted"] == 0
    assert conservation(100, 90, {"vif2.0": {"rx_ring_full": 7}})["unaccounted"] == 3
    assert conservation(100, 101, {})["unaccounted"] == -1
    assert delta({"a": 5, "b": 2, "c": 1}, {"a": 5, "b": 1}) == {"b": 1, "c": 1}
    assert rate_fields(1000, 64, 0.5) == {"fps": 2000.0, "mbps": 2000 * 64 * 8 / 1e6}
    assert rate_fields(10, 64, 0.0)["fps"] == 0.0


def test_time_used_diffs_each_thread_and_per_unit_bounds_the_rate_on_the_cpus():
    before = {"dom0": {10: (1_000_000, 500_000), 11: (2_000_000, 0), 12: (9_000_000, 9_000_000)},
              "d01": {20: (0, 0)}}
    # dom0's thread 12 ended (left out, never negative); thread 13 started (from zero).
    after = {"dom0": {10: (5_000_000, 1_500_000), 11: (2_000_000, 0), 13: (2_000_000, 1_000_000)},
             "d01": {20: (4_000_000, 3_000_000)}, "bridge": {30: (1_000_000, 0)}}
    per = per_unit(time_used(before, after), 1000)
    assert per["dom0"] == {"cpu_us": 6.0, "wait_us": 2.0}
    assert per["d01"] == {"cpu_us": 4.0, "wait_us": 3.0}
    assert per["bridge"] == {"cpu_us": 1.0, "wait_us": 0.0}
    # 11 us of CPU a frame in all: two CPUs can do at most 2e6 / 11 frames a second.
    assert cpu_bound(per, 2) == pytest.approx(2e6 / 11)
    assert cpu_bound({"dom0": {"cpu_us": 0.0, "wait_us": 0.0}}, 2) is None
    assert per_unit(time_used(before, after), 0)["dom0"] == {"cpu_us": 0.0, "wait_us": 0.0}
    # The same time as a share of one core: dom0's 6 ms of CPU over 20 ms is 30 %.
    assert cpu_percent(time_used(before, after), 0.02) == {"dom0": 30.0, "d01": 20.0, "bridge": 5.0}
    assert cpu_percent(time_used(before, after), 0.0) == {"dom0": 0.0, "d01": 0.0, "bridge": 0.0}


def test_the_table_says_where_each_frame_and_pings_time_goes():
    per_frame = {"dom0": {"cpu_us": 7.5, "wait_us": 1.3}, "d01": {"cpu_us": 2.8, "wait_us": 3.5},
                 "mqtt": {"cpu_us": 0.01, "wait_us": 0.0}}
    results = {"machine": {"cpus_usable": 2},
               "throughput": {"count": 1000, "xenlab": [
                   {"size": 64, "fps": 90000.0, "mbps": 46.0, "dropped": 0, "unaccounted": 0,
                    "per_frame_us": per_frame, "cpu_bound_fps": cpu_bound(per_frame, 2)}]},
               "latency": {"xenlab": {"count": 10, "interval": 0.01, "p50_ms": 1.3, "transmitted": 10,
                                      "received": 10,
                                      "per_ping_us": {"dom0": {"cpu_us": 540.0, "wait_us": 130.0},
                                                      "bridge": {"cpu_us": 180.0, "wait_us": 45.0}}}}}
    text = report.table(results)
    row = next(line for line in text.splitlines() if line.strip().startswith("64 dom0"))
    # Dearest first, the idle broker left out, the sum and the bound it sets on 2 CPUs.
    assert row.index("dom0 7.5 (1.3)") < row.index("d01 2.8 (3.5)") and "mqtt" not in row
    assert "sum 10.3: at most 193,986 fps" in row     # 2e6 / 10.31: the broker counts in the sum
    assert "bounds fps on 2 CPUs" in text
    assert "CPU us per ping by process (waiting for a CPU): dom0 540 (130)  bridge 180 (45) | sum 720" in text


def test_the_cores_section_times_every_core_on_frames_that_arrive_whole():
    from xenlab.bench.cores import CORES, CoreError, _Path, _frames, core_costs
    costs = core_costs(frames=640, repeats=2)
    assert list(costs["cores"]) == list(CORES) and costs["frames"] == 640
    for c in costs["cores"].values():
        assert 0 < c["min"] <= c["ns_per_frame"] <= c["max"]
    assert costs["sum_ns_per_frame"] == pytest.approx(sum(c["ns_per_frame"] for c in costs["cores"].values()))
    text = report.table({"cores": costs})
    assert "Data-path cores, warm, in this process: ns per 64-byte frame in batches of 64" in text
    assert all(f"  {name:<12}" in text for name in CORES)
    with pytest.raises(ValueError, match="15..4096"):
        core_costs(frames=64, size=14)
    # A round checks what came out: a frame lost on the way is an error, not a figure.
    path = _Path()
    path.bridge.set_port_flags("vif2.0", state="disabled")
    with pytest.raises(CoreError, match="64 frames in, 64 sent, 0 out"):
        path.round(_frames(64, 64), [0.0] * len(CORES))


def test_profile_summary_by_self_area_and_inclusive_xenlab_function():
    folded = "\n".join([
        "run (asyncio/runners.py:118);Netback._tx_action (xenlab/drivers/netback.py:348);"
        "NetbackTx.build (xenlab/drivers/netback_core.py:500) 6",
        "run (asyncio/runners.py:118);Netback._tx_action (xenlab/drivers/netback.py:348);"
        "_call (grpc/aio/_call.py:300) 3",
        "select (selectors.py:468) 1",
        "garbage line",
    ])
    s = summarise(folded)
    # The event loop waiting (select) is counted apart; percentages are of the work.
    assert (s["samples"], s["loop_samples"], s["work_samples"]) == (10, 1, 9)
    assert s["top_self"][0] == {"name": "NetbackTx.build (xenlab.drivers.netback_core)", "samples": 6,
                                "percent": 66.7}
    assert {r["name"]: r["samples"] for r in s["by_area"]} == {"xenlab.drivers.netback_core": 6, "grpc": 3}
    assert s["top_inclusive_xenlab"] == [{"name": "Netback._tx_action (xenlab.drivers.netback)",
                                          "samples": 9, "percent": 100.0},
                                         {"name": "NetbackTx.build (xenlab.drivers.netback_core)",
                                          "samples": 6, "percent": 66.7}]
    assert area("/usr/lib/python3.11/site-packages/xenlab/net/veth.py") == "xenlab.net.veth"
    assert summarise("")["top_self"] == []


def test_fdb_cost_run_forwards_known_unicast_to_stations_all_over_the_table():
    bridge = filled_bridge(1000)
    assert len(bridge.fdb) == 1000
    frames = frames_for(1000)
    assert len({f[:6] for f in frames}) == 500              # every station behind p2
    assert all(bridge.fdb.get(f[:6]).port == "p2" for f in frames)
    assert len({f[:6] for f in frames_for(1000, spread=False)}) == 5
    for spread in (True, False):
        run = forwarding_cost(1000, frames=2000, repeats=2, spread=spread)
        assert run["flooded"] == 0 and run["unicast"] == 2 * run["frames_per_run"]
        assert run["fdb_entries"] == 1000 and run["ns_per_frame"] > 0
    assert forwarding_cost(10, frames=640, repeats=1, spread=False)["flooded"] == 0


def test_targets_say_met_missed_or_not_measured():
    results = {"throughput": {"ratio": {"64": 0.6, "1500": 0.2}},
               "latency": {"xenlab": {"p50_ms": 2.5, "p99_ms": 2.9}},
               "scale": {"boot": [{"n": 64, "seconds": 4.0,
                                   "memory": {"domu": {"pss_mib_mean": 14.5}},
                                   "mesh": {"n": 64, "pairs": 4032, "sampled": False, "replied": 4032,
                                            "seconds": 9.0, "p50_ms": 12.5, "p99_ms": 50.0,
                                            "warm": {"replied": 4032, "p50_ms": 0.8, "p99_ms": 1.2}}},
                                  {"n": 256, "seconds": 31.0,
                                   "idle": {"seconds": 30, "total_percent": 4.2, "domus_percent": 4.0,
                                            "per_domu_percent_mean": 0.016, "loadavg_1m": [1.0, 1.0]},
                                   "memory": {"domu": {"pss_mib_mean": 7.5}},
                                   "mesh": {"n": 256, "pairs": 1024, "sampled": True, "replied": 1024,
                                            "seconds": 20.0, "p50_ms": 60.0, "p99_ms": 300.0,
                                            "warm": {"replied": 1024, "p50_ms": 4.5, "p99_ms": 30.0}}}]}}
    rows = {t["key"]: t for t in report.targets(results)}
    assert rows["throughput_64_ratio"]["met"] is True
    assert rows["throughput_1500_ratio"]["met"] is False
    assert rows["rtt_p50_ms"]["met"] is False
    assert rows["rtt_p99_ms"]["met"] is True
    assert rows["boot_64_seconds"]["met"] is True
    assert rows["boot_256_seconds"]["met"] is False
    assert rows["pss_domu_mib"]["value"] == 14.5 and rows["pss_domu_mib"]["met"] is False
    assert rows["idle_256_percent"]["met"] is True
    assert rows["mesh_256_ratio"]["value"] == 1.8 and rows["mesh_256_ratio"]["met"] is True
    assert rows["mesh_64_p50_ms"]["value"] == 12.5 and rows["mesh_64_p50_ms"]["met"] is False
    assert rows["fdb_100k_ratio"]["met"] is None
    sampled = {**results["scale"]["boot"][0], "mesh": {**results["scale"]["boot"][0]["mesh"], "sampled": True}}
    assert report.figures({"scale": {"boot": [sampled]}})["mesh_64_p50_ms"] is None
    results["targets"] = list(rows.values())
    text = report.table(results)
    assert "MISSED" in text
    # The unmeasured ones are named once, not listed as rows with no value.
    table = text[text.index("Targets"):]
    assert rows["fdb_100k_ratio"]["what"] not in table.split("targets not measured")[0]
    assert f"1 of the {len(rows)} targets not measured in this run: {rows['fdb_100k_ratio']['what']}" in text
    only_migrate = report.table({"targets": [dict(t, met=None, value=None) for t in rows.values()]})
    assert "Targets" not in only_migrate and f"{len(rows)} of the {len(rows)} targets not measured" in only_migrate


def test_bench_arguments_in_range_make_the_plan():
    parser = argparse.ArgumentParser()
    bench_main.add_arguments(parser)
    plan = bench_main.make_plan(parser.parse_args(
        ["--count", "7", "--sizes", "18,1514", "--pings", "3", "--interval", "0.5", "--batch", "1024"]))
    assert (plan.count, plan.sizes, plan.pings, plan.interval, plan.batch) == (7, (18, 1514), 3, 0.5, 1024)


@pytest.mark.parametrize("n,k", [(2, 4), (5, 4), (16, 4), (64, 4), (256, 4), (7, 0), (9, 3)])
def test_the_mesh_sample_crosses_the_lab_and_pings_each_domu_as_often_as_it_pings(n, k):
    pairs = mesh_pairs(n, k)
    expected = n - 1 if k == 0 or k >= n - 1 else k
    assert all(len(set(dsts)) == len(dsts) == expected for dsts in pairs)
    assert all(i not in dsts for i, dsts in enumerate(pairs))
    pinged = [0] * n
    for dsts in pairs:
        for j in dsts:
            pinged[j] += 1
    assert pinged == [expected] * n
    if 0 < k < n - 1:       # a sample reaches across the lab, not only to neighbours
        assert max(min((j - i) % n, (i - j) % n) for i, dsts in enumerate(pairs) for j in dsts) >= n // 4


def test_scale_idle_and_mesh_options_reach_the_plan_and_the_table():
    parser = argparse.ArgumentParser()
    bench_main.add_arguments(parser)
    plan = bench_main.make_plan(parser.parse_args(["--idle", "3", "--mesh-per-source", "0"]))
    assert (plan.idle, plan.mesh_per_source) == (3.0, 0)
    # By default the mesh is full up to 64 domUs (issue 15's mesh of 64), a sample of 4 a domU above.
    default = bench_main.make_plan(parser.parse_args([])).mesh_per_source
    assert [len(mesh_pairs(n, mesh_per_source_for(n, default))[0]) for n in (4, 64, 65, 256)] == [3, 63, 4, 4]
    assert mesh_per_source_for(64, 4) == 4 and mesh_per_source_for(256, 0) == 0
    assert bench_main.make_plan(parser.parse_args([])).idle == 30.0
    assert bench_main.make_plan(parser.parse_args(["--quick"])).idle == 2.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--idle", "-1"])
    idle = {"seconds": 30.0, "total_percent": 0.9, "domus_percent": 0.6, "per_domu_percent_mean": 0.04,
            "services_percent": {}, "loadavg_1m": [3.0, 2.0]}
    mesh = {"n": 16, "pairs": 64, "sampled": True, "replied": 64, "seconds": 1.0, "p50_ms": 2.0, "p99_ms": 9.0,
            "warm": {"replied": 63, "concurrency": 1, "p50_ms": 1.25, "p99_ms": 3.5},
            "warm_concurrent": {"replied": 64, "concurrency": 8, "p50_ms": 2.5, "p99_ms": 7.0}}
    text = report.table({"scale": {"boot": [{"n": 16, "seconds": 12.0, "memory": {"domu": {}},
                                             "idle": idle, "mesh": mesh}]}, "targets": []})
    assert "0.90" in text and "ping mesh sample of 16: 64/64" in text
    assert "again, ARP resolved, one ping at a time: 63/64 replied, RTT p50 1.25 ms" in text
    assert "again, ARP resolved, 8 sources at a time: 64/64 replied, RTT p50 2.50 ms" in text


def test_page_sharing_figures_reach_the_targets_and_the_table():
    """PSS is judged once ksmd has merged (where it ran), and the idle lab's
    figure includes ksmd's CPU: it works for the lab."""
    idle = {"seconds": 30.0, "total_percent": 0.4, "domus_percent": 0.2, "per_domu_percent_mean": 0.001,
            "services_percent": {}, "loadavg_1m": [1.0, 1.0], "ksmd_percent": 4.75}
    merged = {"seconds": 95.0, "full_scans": 3, "pages_sharing": 1000, "pages_shared": 10,
              "memory": {"domu": {"pss_mib_mean": 4.9}}, "after_mesh": {"domu": {"pss_mib_mean": 5.6}},
              "remerged": {"seconds": 150.2, "memory": {"domu": {"pss_mib_mean": 4.4}}}}
    results = {"scale": {"boot": [
        {"n": 64, "seconds": 3.5, "memory": {"domu": {"pss_mib_mean": 14.0}},
         "shared": {"skipped": "ksmd is not running"}},
        {"n": 256, "seconds": 21.0, "memory": {"domu": {"pss_mib_mean": 13.9}}, "shared": merged,
         "idle": idle}]}}
    rows = {t["key"]: t for t in report.targets(results)}
    assert rows["pss_domu_mib"]["value"] == 14.0        # the 64 were not merged: the worst counts
    assert rows["idle_256_percent"]["value"] == 5.15 and rows["idle_256_percent"]["met"] is False
    results["scale"]["boot"][0]["shared"] = dict(merged, memory={"domu": {"pss_mib_mean": 5.5}})
    rows = {t["key"]: t for t in report.targets(results)}
    assert rows["pss_domu_mib"]["value"] == 5.5 and rows["pss_domu_mib"]["met"] is True
    text = report.table(dict(results, targets=list(rows.values())))
    line = next(x for x in text.splitlines() if x.startswith(" 256 ") and "13.9" in x)
    assert line.split()[-2:] == ["4.9", "95"]
    assert " 256: PSS per domU after the ping mesh sample 5.6 MiB mean" in text
    assert "; merged again 4.4 after 150s" in text
    assert next(x for x in text.splitlines() if x.startswith(" 256 ") and "30 " in x).split()[-1] == "4.75"
    plan = bench_main.make_plan(_parser().parse_args(["--page-sharing", "off"]))
    assert plan.page_sharing == "off"


def _parser():
    parser = argparse.ArgumentParser()
    bench_main.add_arguments(parser)
    return parser


def test_calls_per_ping_is_the_difference_of_two_snapshots_by_process():
    from xenlab.bench.calls import per_ping
    before = {"dom0": {"kick (datapath.py:264)": 10, "<built-in method builtins.len>": 100},
              "d01": {"send (netfront_core.py:96)": 5}}
    after = {"dom0": {"kick (datapath.py:264)": 30, "<built-in method builtins.len>": 160,
                      "build (tx.py:144)": 4},
             "d01": {"send (netfront_core.py:96)": 25, "idle (x.py:1)": 0}}
    out = per_ping(before, after, pings=20, top=2)
    assert list(out["processes"]) == ["dom0", "d01"]       # the most Python calls first
    dom0 = out["processes"]["dom0"]
    assert dom0["calls_per_ping"] == pytest.approx((20 + 60 + 4) / 20)
    assert dom0["python_calls_per_ping"] == pytest.approx((20 + 4) / 20)
    # The commonest Python functions; C functions (len) are counted, not listed.
    assert dom0["top"] == [{"function": "kick (datapath.py:264)", "per_ping": 1.0},
                           {"function": "build (tx.py:144)", "per_ping": 0.2}]
    assert out["processes"]["d01"]["calls_per_ping"] == 1.0
    assert out["sum_per_ping"] == pytest.approx(4.2 + 1.0)
    assert out["python_sum_per_ping"] == pytest.approx(1.2 + 1.0)
    out["received"] = 20
    text = report.table({"calls": out})
    assert "Calls per ping by process" in text and "dom0 1 (4)  d01 1 (1) | sum 2 (5)" in text
    assert "kick (datapath.py:264) 1, build (tx.py:144) 0" in text
    assert "calls stopped: RuntimeError: boom" in report.table({"calls": {"error": "RuntimeError: boom"}})


def test_the_calls_section_is_planned_with_its_own_ping_count():
    parser = argparse.ArgumentParser()
    bench_main.add_arguments(parser)
    plan = bench_main.make_plan(parser.parse_args(["--only", "calls"]))
    assert plan.sections == ("calls",) and plan.calls_pings == 1000
    assert bench_main.make_plan(parser.parse_args(["--only", "calls", "--quick"])).calls_pings == 100
    assert bench_main.make_plan(parser.parse_args(["--only", "calls", "--pings", "50"])).calls_pings == 50
