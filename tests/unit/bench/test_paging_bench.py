"""`xenlab bench --only paging`: it runs, prints one row per mode under the
columns the comparison needs, writes the figures, and the counters differ by
mode as the modes' designs say. No timing is asserted."""
from __future__ import annotations

import json

import pytest

from xenlab.bench import __main__ as bench_main
from xenlab.xen.paging import WALK_REFS_1D

COLUMNS = ["mode", "hypercalls", "traps", "PT updates", "TLB misses", "walk refs", "refs/miss",
           "bookkeeping pages", "build us/op", "fork us/op", "remap us/op", "teardown us/op"]


def test_bench_paging_prints_the_table_and_counters_differ_by_mode(tmp_path, capsys):
    out = tmp_path / "paging.json"
    assert bench_main.main(["--only", "paging", "--paging-in-process", "--paging-pages", "16",
                            "--paging-remap", "4",
                            "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("Paging, in-process"))
    header, *rows = lines[title + 1:title + 5]
    assert _columns(header) == COLUMNS
    assert [row.split()[0] for row in rows] == ["direct", "shadow", "hap"]
    assert all(len(row.split()) == len(COLUMNS) for row in rows)

    summary = json.loads(out.read_text())["paging"]["in_process"]["summary"]
    direct, shadow, hap = summary["direct"], summary["shadow"], summary["hap"]
    assert direct["hypercalls"] > 0 and direct["traps"] == 0
    assert shadow["traps"] > 0 and shadow["hypercalls"] == 0
    assert hap["hypercalls"] == 0 and hap["refs_per_miss"] > WALK_REFS_1D
    assert direct["refs_per_miss"] == WALK_REFS_1D >= shadow["refs_per_miss"]


def _columns(header: str) -> list[str]:
    return [c.strip() for c in header.split("  ") if c.strip()]


@pytest.mark.parametrize("argv", [["--paging-pages", "0"], ["--paging-remap", "-1"],
                                  ["--paging-pages", "4", "--paging-remap", "5"]])
def test_bench_paging_refuses_impossible_sizes_before_running(argv, tmp_path):
    with pytest.raises(SystemExit):
        bench_main.main(["--only", "paging", "--json", str(tmp_path / "x.json"), *argv])
    assert not (tmp_path / "x.json").exists()
