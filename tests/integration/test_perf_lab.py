"""`xenlab perf`: a UDP test between two domains, as iperf -u, run as a
user runs it, across README's routed lab (through the router domain)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import grpc
import pytest

from xenlab.net.perf import Pacer
from xenlab.proto import agent_pb2
from test_routed_lab import LAB

pytestmark = pytest.mark.integration


def xenlab(lab, *argv):
    env = {**os.environ, "XENLAB_RUNDIR": str(lab.rundir)}
    return subprocess.run([sys.executable, "-m", "xenlab.cli.main", *argv], env=env,
                          capture_output=True, text=True, timeout=120)


async def test_perf_across_the_router_accounts_for_every_datagram(lab_factory):
    lab = await lab_factory(LAB)
    run = await asyncio.to_thread(xenlab, lab, "perf", "web", "db", "-b", "2M", "-t", "2",
                                  "-i", "0.5", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert (result["dst"], result["port"], result["length"]) == ("10.0.2.2", 5001, 1470)
    sent, got = result["total"]["sent"], result["total"]["received"]
    offered = sent["datagrams"]           # at most 340 in 2 s; fewer if the sender fell behind
    assert 0 < offered <= Pacer(2e6, 1470, 2.0, 0.0).count and sent["errors"] == 0
    assert sent["bytes"] == offered * 1470
    # What did not arrive is lost: the books balance, with the end of test's count.
    assert got["datagrams"] > 0
    assert got["datagrams"] - got["duplicates"] + got["lost"] == offered
    assert got["jitter_ms"] >= 0
    assert len(result["sent"]) == 4                         # 0.5 s intervals over 2 s
    assert sum(r["datagrams"] for r in result["sent"]) == offered
    assert sum(r["datagrams"] for r in result["received"]) == got["datagrams"]


async def test_perf_table_and_its_errors(lab_factory):
    lab = await lab_factory(LAB)
    run = await asyncio.to_thread(xenlab, lab, "perf", "web", "db", "-t", "1")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == ("web -> db (10.0.2.2) UDP port 5001: 1470-byte datagrams at 1.00 Mbits/sec "
                        "for 1 s")
    assert lines[1].split() == ["Interval", "Offered", "Achieved", "Lost/Total", "Jitter"]
    assert lines[-1].endswith("  total") and "Mbits/sec" in lines[-1]

    for argv, says in [
        (["perf", "web", "nosuch"], "xenlab perf: 'nosuch' is neither an IPv4 address nor a "
                                    "domain of the lab (xenlab xl list shows them)"),
        (["perf", "web", "10.0.2.2"], "xenlab perf: the receiver is a domain, not an address"),
    ]:
        run = await asyncio.to_thread(xenlab, lab, *argv)
        assert run.returncode == 2 and run.stderr.startswith(says), (argv, run.stderr)
    for argv, says in [(["perf", "web", "db", "-b", "0"], "a rate is above 0"),
                       (["perf", "web", "db", "-b", "fast"], "is not a rate in bits per second"),
                       (["perf", "web", "db", "-l", "4"], "-l/--length: 4 is out of range")]:
        run = await asyncio.to_thread(xenlab, lab, *argv)
        assert run.returncode == 2 and says in run.stderr, (argv, run.stderr)


async def test_a_second_receiver_on_the_same_port_is_refused(lab_factory):
    lab = await lab_factory(LAB)
    db = await lab.agent("db")
    first = db.PerfServe(agent_pb2.PerfServeRequest(port=5002, timeout=30))
    assert (await first.read()).ready
    second = db.PerfServe(agent_pb2.PerfServeRequest(port=5002, timeout=30))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await second.read()
    assert "already receiving a perf test" in err.value.details()
    first.cancel()
    web = await lab.agent("web")
    nowhere = web.PerfSend(agent_pb2.PerfSendRequest(dst="10.9.9.9", duration=1))
    # web's gateway takes it; the router has no route: every datagram is sent, none arrives.
    reports = [r async for r in nowhere]
    assert reports[-1].total and reports[-1].datagrams > 0
    await web.close()
    await db.close()
