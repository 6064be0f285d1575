"""Issue 15's target in a lab of processes: in steady traffic between two
domUs the hypervisor handles no message. Each domain is its own process
(the local launcher); their interdomain channels notify each other through
the objects the hypervisor handed them, and ``xl info`` shows what the
hypervisor handled."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

# netback maps a transmit buffer page the first time a frame goes through it
# (persistent grants), through the hypervisor: once per page, not per frame.
FIRST_USE = ("GrantTable/MapBatch", "doorbell/COPY")
NOTIFICATIONS = ("doorbell/SEND", "EventChannel/Send")


def xenlab(lab, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "xenlab.cli.main", *args, "--rundir", str(lab.rundir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def hypervisor_ops(lab) -> dict[str, int]:
    lines = {line[:23].rstrip(): line[25:] for line in xenlab(lab, "xl", "info").splitlines()}
    by_op = lines["hypervisor_ops_by_op"].split()
    return {op: int(n) for op, n in (item.rsplit("=", 1) for item in by_op)}


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {op: after[op] - before.get(op, 0) for op in after if after[op] != before.get(op, 0)}


def moved_by_ping(lab, count: int) -> dict[str, int]:
    """What the hypervisor handled while ``xenlab ping`` ran ``count`` pings
    (its own lookups of the domains included)."""
    before = hypervisor_ops(lab)
    out = xenlab(lab, "ping", "web", "db", "-c", str(count), "-i", "0.01")
    assert f"{count} received" in out
    return {op: n for op, n in moved(before, hypervisor_ops(lab)).items() if op not in FIRST_USE}


async def test_pings_between_domus_cost_the_hypervisor_no_message(demo_lab):
    xenlab(demo_lab, "ping", "web", "db", "-c", "20", "-i", "0.01")     # ARP resolved, rings warm
    few, many = moved_by_ping(demo_lab, 5), moved_by_ping(demo_lab, 60)
    # the command's lookups cost the same whatever the count; the pings, nothing
    assert many == few, (few, many)
    assert not [op for op in many if op in NOTIFICATIONS]


def moved_by_blast(lab, count: int) -> tuple[dict[str, int], int]:
    """What the hypervisor handled while ``xenlab inject`` sent ``count``
    1500-byte frames from web to db's MAC, back to back (its own lookups of
    the domain included), and how many frames web's netfront took (a full
    ring drops the rest, and the command says so)."""
    before = hypervisor_ops(lab)
    out = xenlab(lab, "inject", "web:eth0", "--count", str(count), "--size", "1500",
                 "--dst", "00:16:3e:00:00:02")
    accepted = re.search(rf"^{count} frames: (\d+) accepted", out, re.MULTILINE)
    assert accepted, out
    return moved(before, hypervisor_ops(lab)), int(accepted.group(1))


async def test_blasts_between_domus_cost_the_hypervisor_no_message(demo_lab):
    """A burst that reaches a ring depth not reached before makes netback map
    those buffer pages (MapBatch, copies through the hypervisor meanwhile,
    and a page-table update when Domain-0's grant-mapping area grows): first
    use, once. Once the path is warm, a burst of 3,000 frames costs the
    hypervisor exactly what one of 10 does: the command's own lookups."""
    moved_by_blast(demo_lab, 600)
    few, _ = moved_by_blast(demo_lab, 10)
    few = {op: n for op, n in few.items() if op not in (*FIRST_USE, "Memory/MmuUpdate")}
    bursts = []
    for _ in range(5):
        many, carried = moved_by_blast(demo_lab, 3000)
        bursts.append(many)
        if many == few:
            break
    assert many == few, f"no burst of 3,000 frames in {len(bursts)} cost only the lookups {few}: {bursts}"
    assert carried >= 1000                # a burst, whatever a busy host's full ring dropped
    assert not [op for burst in bursts for op in burst if op in NOTIFICATIONS]


def moved_while_idle(lab, seconds: float) -> dict[str, int]:
    """What the hypervisor handled between two ``xl info`` calls made
    ``seconds`` apart (the second call's own lookups included)."""
    before = hypervisor_ops(lab)
    time.sleep(seconds)
    return moved(before, hypervisor_ops(lab))


async def test_an_idle_lab_costs_the_hypervisor_no_message(demo_lab):
    """The guests' kernels are tickless: nothing re-arms a timer once a
    second (it did: one SetTimer per domain per second). Three seconds of
    an idle lab move the hypervisor's counts exactly as much as no time at
    all (what ``xl info`` itself asks)."""
    xenlab(demo_lab, "ping", "web", "db", "-c", "2", "-i", "0.01")     # booted and warm
    assert moved_while_idle(demo_lab, 3.0) == moved_while_idle(demo_lab, 0.0)
