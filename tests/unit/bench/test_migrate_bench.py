"""The migrate section's figures from its runs: the nearest-rank p50 and
p99, the rounds, the median pages of each round, and the table."""
from __future__ import annotations

from xenlab.bench import migrate


def runs(downtimes_ms, rounds, vifs_ms=None):
    vifs_ms = vifs_ms or [d + 100 for d in downtimes_ms]
    return [{"downtime_s": d / 1e3, "vifs_s": (v / 1e3 if v is not None else None),
             "round_pages": r, "pages": sum(r), "bytes": 0}
            for d, r, v in zip(downtimes_ms, rounds, vifs_ms)]


def test_a_series_is_summarised_by_nearest_rank_and_per_round_medians():
    series = runs([150, 140, 160, 500], [[8192, 257, 12], [8192, 257, 3], [8192, 300], [8192, 257, 40]])
    s = migrate.summary(series)
    assert s["migrations"] == 4
    assert s["downtime_s"]["p50"] == 0.150 and s["downtime_s"]["p99"] == 0.500
    assert (s["downtime_s"]["min"], s["downtime_s"]["max"]) == (0.140, 0.500)
    assert s["rounds"] == {"min": 2, "max": 3, "median": 3}
    # round 3 exists in three runs only: its median is of those
    assert s["pages_per_round_median"] == [8192, 257, 12]
    assert s["vifs_missed"] == 0


def test_vifs_that_never_connected_are_counted_not_averaged():
    s = migrate.summary(runs([150, 160], [[10], [10]], vifs_ms=[250, None]))
    assert s["vifs_missed"] == 1 and s["vifs_s"]["p50"] == s["vifs_s"]["max"] == 0.250


def test_the_table_has_a_row_per_series_and_says_when_skipped():
    result = {"memory_mb": 32, "udp_rate": 8e6, "migrations": 2, "series": {
        "idle, live": migrate.summary(runs([150, 170], [[8192, 257, 9], [8192, 257, 4]])),
        "idle, stop-and-copy": migrate.summary(runs([900, 950], [[8192], [8192]]))}}
    text = migrate.table(result)
    lines = text.splitlines()
    assert "32 MiB domU" in lines[0] and "8 Mbit/s" in lines[0]
    assert lines[2].startswith("idle, live") and "150 ms" in lines[2] and "8192, 257, 6.5" in lines[2]
    assert lines[3].startswith("idle, stop-and-copy") and "900-950" in lines[3]
    assert migrate.table({"skipped": "a pool needs root"}) == \
        "Live migration: skipped (a pool needs root)"


def test_a_pool_that_did_not_come_up_is_a_line_in_the_table():
    assert migrate.table({"error": "LabError: 10.231.0.254 is taken on this machine"}) == \
        "Live migration: stopped (LabError: 10.231.0.254 is taken on this machine)"
