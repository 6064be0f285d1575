"""The lab's processes run as SCHED_BATCH (xenlab.osutil.batch_scheduling),
threads they start after it included; XENLAB_SCHED=normal leaves the policy
alone. Checked in child processes, as the services are."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import os, threading
from xenlab import eventloop

async def main():
    policies = [os.sched_getscheduler(0)]
    t = threading.Thread(target=lambda: policies.append(os.sched_getscheduler(0)))
    t.start(); t.join()
    return policies

print(*eventloop.run(main()))
"""


def run_child(**env) -> list[int]:
    out = subprocess.run([sys.executable, "-c", CHILD], env={**os.environ, **env}, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [int(x) for x in out.split()]


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH on this platform")
def test_a_service_loop_and_its_threads_run_as_sched_batch():
    assert run_child() == [os.SCHED_BATCH, os.SCHED_BATCH]


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH on this platform")
def test_xenlab_sched_normal_leaves_the_policy_alone():
    inherited = os.sched_getscheduler(0)
    assert run_child(XENLAB_SCHED="normal") == [inherited, inherited]
