"""vCPUs that really schedule, in a running lab: a local domain's vCPUs are
threads of its process, `xl vcpu-pin` sets their affinity, `xl
sched-credit` writes its cgroup, cpupools pin their domains, and the xl
commands around them (uptime, domid, domname, rename, dmesg, top) answer
from the lab. No timing assertion: the cap's effect is a benchmark
(python -m xenlab.bench.sched, BENCHMARKS.md)."""
from __future__ import annotations

import asyncio
import logging
import os

import pytest

from xenlab.bench.sched import booted
from xenlab.cli import main as cli_main, xl
from xenlab.launchers import tasks
from xenlab.launchers.cgroup import CpuCgroups
from xenlab.proto import agent_pb2, common_pb2
from xenlab.agent_client import agent_for
from xenlab.testing.eventually import eventually
from xenlab.testing.lab import in_process_lab

pytestmark = pytest.mark.integration

NEEDS_CGROUP = CpuCgroups.detect(f"probe-{os.getpid()}")
NEEDS_CGROUP.close()


async def xl_run(lab, capsys, *argv) -> str:
    capsys.readouterr()
    args = cli_main.build_parser().parse_args(["xl", *argv])
    assert await args.xl_handler(args, xl.Toolstack(rundir=lab.rundir)) == 0
    return capsys.readouterr().out


async def xl_main(lab, capsys, *argv) -> tuple[int, str]:
    """The whole command, as a user runs it (its own event loop, in a thread)."""
    capsys.readouterr()
    status = await asyncio.to_thread(cli_main.main, ["xl", *argv],
                                     {"XENLAB_RUNDIR": str(lab.rundir)})
    return status, capsys.readouterr().err


@pytest.fixture
async def lab():
    # The ring holds what the hypervisor logs at its level (as Xen's conring
    # holds what passes loglvl): INFO here.
    logger = logging.getLogger("xenlab")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with in_process_lab(launcher="local", log_level="WARNING") as lab:
            yield lab
    finally:
        logger.setLevel(level)


async def busy_domain(lab, name="busy", vcpus=2, maxvcpus=3):
    domid, _ = await lab.create_domain(name, launcher="local", vcpus=vcpus, maxvcpus=maxvcpus)
    await booted(lab.dom0, domid)
    pid = lab.hv.process(domid).pid
    await eventually(lambda: len(tasks.vcpu_tasks(pid)[0]) == maxvcpus, "the vCPU threads")
    return domid, pid


def vcpu_rows(text: str, name: str) -> dict[int, list[str]]:
    return {int(line.split()[2]): line.split() for line in text.splitlines()[1:]
            if line.split()[0] == name}


async def test_vcpus_are_threads_and_vcpu_pin_sets_their_affinity(lab, capsys):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("pinning needs two CPUs")
    domid, pid = await busy_domain(lab)
    threads, others = tasks.vcpu_tasks(pid)
    assert threads[0].tid == pid and threads[1].name == "vcpu1" and threads[2].name == "vcpu2"
    rows = vcpu_rows(await xl_run(lab, capsys, "vcpu-list", "busy"), "busy")
    assert sorted(rows) == [0, 1, 2]
    assert rows[2][3:5] == ["-", "--p"]           # vcpus=2 of maxvcpus=3: vCPU 2 is offline
    assert rows[1][4] in ("-b-", "r--") and rows[1][-3:] == ["all", "/", "all"]

    cpu = max(os.sched_getaffinity(0))
    await xl_run(lab, capsys, "vcpu-pin", "busy", "1", str(cpu))
    assert os.sched_getaffinity(threads[1].tid) == {cpu}
    assert os.sched_getaffinity(threads[0].tid) == os.sched_getaffinity(0)   # only vCPU 1
    assert vcpu_rows(await xl_run(lab, capsys, "vcpu-list", "busy"), "busy")[1][-3] == str(cpu)

    await xl_run(lab, capsys, "vcpu-pin", "busy", "all", f"all,^{cpu}")
    rest = set(os.sched_getaffinity(0)) - {cpu}
    for task in tasks.vcpu_tasks(pid)[0].values():
        assert os.sched_getaffinity(task.tid) == rest
    for task in tasks.vcpu_tasks(pid)[1]:
        assert os.sched_getaffinity(task.tid) == rest        # the helpers follow the vCPUs


async def test_vcpu_set_brings_a_thread_online_and_spin_keeps_it_busy(lab, capsys):
    domid, pid = await busy_domain(lab)
    await xl_run(lab, capsys, "vcpu-set", "busy", "3")
    async with await agent_for(lab.dom0, domid) as agent:
        async def spin_vcpu2():
            reply = await agent.Spin(agent_pb2.SpinRequest(vcpus=[2], seconds=5))
            return list(reply.vcpus)
        assert await eventually(spin_vcpu2, "vCPU 2 taking work once online") == [2]
        tid = tasks.vcpu_tasks(pid)[0][2].tid
        await eventually(lambda: tasks.vcpu_tasks(pid)[0][2].state == "R", "vCPU 2 running")
        rows = vcpu_rows(await xl_run(lab, capsys, "vcpu-list", "busy"), "busy")
        assert rows[2][4] == "r--" and rows[2][0] == "busy"
        await xl_run(lab, capsys, "vcpu-set", "busy", "2")
        await eventually(lambda: tasks.vcpu_tasks(pid)[0][2].state != "R", "vCPU 2 parked offline")
        assert tasks.vcpu_tasks(pid)[0][2].tid == tid
        reply = await agent.Spin(agent_pb2.SpinRequest(vcpus=[2], seconds=5))
        assert list(reply.vcpus) == []            # an offline vCPU takes no work


@pytest.mark.skipif(not NEEDS_CGROUP.available, reason=f"no CPU cgroup: {NEEDS_CGROUP.reason}")
async def test_sched_credit_writes_the_domains_cgroup_and_destroy_removes_it(lab, capsys):
    domid, pid = await busy_domain(lab)
    groups = lab.hv.launcher.cgroups
    group = groups.base / f"d{domid}"
    assert str(pid) in (group / "cgroup.procs").read_text().split()
    out = await xl_run(lab, capsys, "sched-credit")
    assert "Cpupool Pool-0: tslice=30ms ratelimit=1000us migration-delay=0us" in out
    assert [line.split()[1:] for line in out.splitlines() if line.startswith("busy ")] == \
        [[str(domid), "256", "0"]]

    await xl_run(lab, capsys, "sched-credit", "-d", "busy", "-w", "512", "-c", "25")
    if groups.version == 1:
        assert (group / "cpu.shares").read_text().strip() == "2048"
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "25000"
        assert (group / "cpu.cfs_period_us").read_text().strip() == "100000"
    else:
        assert (group / "cpu.weight").read_text().strip() == "200"
        assert (group / "cpu.max").read_text().strip() == "25000 100000"
    out = await xl_run(lab, capsys, "sched-credit", "-d", "busy")
    assert out.splitlines()[1].split() == ["busy", str(domid), "512", "25"]
    await xl_run(lab, capsys, "sched-credit", "-d", "busy", "-c", "0")
    if groups.version == 1:
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "-1"
        assert (group / "cpu.shares").read_text().strip() == "2048"    # the weight stays

    status, err = await xl_main(lab, capsys, "sched-credit", "-d", "busy", "-c", "301")
    assert status == 1 and "cap 301" in err and len(err.splitlines()) == 1

    await lab.dom0.domains.Destroy(common_pb2.DomainRef(domid=domid))
    await eventually(lambda: not group.exists(), "the domain's cgroup gone")


async def test_cpupools_pin_their_domains(lab, capsys):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("a second pool needs two CPUs")
    domid, pid = await busy_domain(lab)
    last = cpus[-1]
    await xl_run(lab, capsys, "cpupool-cpu-remove", "Pool-0", str(last))
    assert "free_cpus              : 1" in await xl_run(lab, capsys, "info")
    await xl_run(lab, capsys, "cpupool-create", 'name="solo"', f'cpus="{last}"')
    out = await xl_run(lab, capsys, "cpupool-list")
    assert out.splitlines()[2].split() == ["solo", "1", "credit", "y", "0"]
    await xl_run(lab, capsys, "cpupool-migrate", "busy", "solo")
    for task in tasks.read_tasks(pid):
        assert os.sched_getaffinity(task.tid) == {last}
    assert "Cpupool solo:" in await xl_run(lab, capsys, "sched-credit")

    status, err = await xl_main(lab, capsys, "cpupool-destroy", "solo")
    assert status == 1 and "has domains" in err
    status, err = await xl_main(lab, capsys, "vcpu-pin", "busy", "0", str(cpus[0]))
    assert status == 1 and "cpupool solo" in err

    await xl_run(lab, capsys, "cpupool-migrate", "busy", "Pool-0")
    for task in tasks.read_tasks(pid):
        assert last not in os.sched_getaffinity(task.tid)
    await xl_run(lab, capsys, "cpupool-cpu-remove", "solo", str(last))
    await xl_run(lab, capsys, "cpupool-cpu-add", "Pool-0", str(last))
    for task in tasks.read_tasks(pid):
        assert os.sched_getaffinity(task.tid) == set(cpus)     # Pool-0's CPUs again
    await xl_run(lab, capsys, "cpupool-destroy", "solo")
    assert "solo" not in await xl_run(lab, capsys, "cpupool-list")


async def test_names_times_and_the_log_ring(lab, capsys):
    domid, _ = await lab.create_domain("web", launcher="none")
    assert (await xl_run(lab, capsys, "domid", "web")).strip() == str(domid)
    assert (await xl_run(lab, capsys, "domname", str(domid))).strip() == "web"
    await xl_run(lab, capsys, "rename", "web", "www")
    assert (await xl_run(lab, capsys, "domname", str(domid))).strip() == "www"
    xs = lab.hv.xenstore
    uuid = lab.hv.domains.get(domid).uuid
    assert xs.nodes()[f"/local/domain/{domid}/name"].value == b"www"
    assert xs.nodes()[f"/vm/{uuid}/name"].value == b"www"
    status, err = await xl_main(lab, capsys, "rename", "www", "bad name")
    assert status == 1 and "has characters" in err

    out = await xl_run(lab, capsys, "uptime")
    lines = out.splitlines()
    assert lines[0] == "Name                                ID Uptime"
    assert [line.split()[:2] for line in lines[1:]] == [["Domain-0", "0"], ["www", str(domid)]]
    assert " up " in await xl_run(lab, capsys, "uptime", "-s", "www")

    await lab.dom0.domains.Destroy(common_pb2.DomainRef(domid=domid))
    dmesg = await xl_run(lab, capsys, "dmesg", "-c")
    assert f"created d{domid} (web)" in dmesg and f"destroyed d{domid} (www)" in dmesg
    assert f"d{domid} renamed from web to www" in dmesg
    assert all(line.startswith("(XEN) [") for line in dmesg.splitlines())
    status, _ = await xl_main(lab, capsys, "pause", "www")          # refused: it is gone
    assert status == 1
    dmesg = await xl_run(lab, capsys, "dmesg")
    assert "created" not in dmesg and "Pause refused" in dmesg      # -c cleared the rest


async def test_xenlab_spin_keeps_a_vcpu_busy(lab, capsys):
    domid, pid = await busy_domain(lab)
    capsys.readouterr()
    status = await asyncio.to_thread(cli_main.main, ["spin", "busy", "-v", "1", "-t", "5", "--rundir",
                                                     str(lab.rundir)], {})
    assert status == 0 and capsys.readouterr().out == "busy: vCPUs busy for 5 s: 1\n"
    await eventually(lambda: tasks.vcpu_tasks(pid)[0][1].state == "R", "vCPU 1 running")
    status = await asyncio.to_thread(cli_main.main, ["spin", "busy", "-v", "2", "--rundir",
                                                     str(lab.rundir)], {})
    assert status == 1 and "none (every vCPU asked is offline)" in capsys.readouterr().out
    status = await asyncio.to_thread(cli_main.main, ["spin", "busy", "-v", "7", "--rundir",
                                                     str(lab.rundir)], {})
    assert status == 1 and "vCPU 7 does not exist" in capsys.readouterr().err


async def test_top_batch_shows_every_domain(lab, capsys):
    domid, _ = await busy_domain(lab)
    out = await xl_run(lab, capsys, "top", "-b", "-i", "2", "-d", "0.5")
    lines = out.splitlines()
    assert len(lines) == 6 and lines[0] == lines[3] and lines[0].split()[:4] == \
        ["NAME", "STATE", "CPU(sec)", "CPU(%)"]
    busy = [line.split() for line in lines if line.split()[0] == "busy"]
    assert len(busy) == 2 and busy[0][8] == "2"             # two vCPUs online
    capsys.readouterr()
    status = await asyncio.to_thread(cli_main.main, ["xentop", "-b", "-i", "1"],
                                     {"XENLAB_RUNDIR": str(lab.rundir)})
    out = capsys.readouterr().out
    assert status == 0 and out.splitlines()[0] == lines[0] and "busy" in out


@pytest.mark.parametrize("argv", [
    ["vcpu-list", "nosuch"], ["vcpu-pin", "nosuch", "0", "all"], ["sched-credit", "-d", "nosuch"],
    ["sched-credit2", "-d", "nosuch"], ["cpupool-migrate", "nosuch", "Pool-0"],
    ["uptime", "nosuch"], ["domid", "nosuch"], ["domname", "4242"], ["rename", "nosuch", "x"],
])
async def test_an_unknown_domain_is_one_line(lab, capsys, argv):
    status, err = await xl_main(lab, capsys, *argv)
    assert status == 1 and len(err.splitlines()) == 1 and "(NOT_FOUND)" in err, err


@pytest.mark.skipif(not NEEDS_CGROUP.available, reason=f"no CPU cgroup: {NEEDS_CGROUP.reason}")
async def test_xl_cfg_scheduling_keys_apply_at_create(lab, capsys, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("per-vCPU affinity needs two CPUs")
    first, last = cpus[0], cpus[-1]
    cfg = tmp_path / "pinned.cfg"
    cfg.write_text(f'name = "pinned"\nmemory = 16\nvcpus = 2\nlauncher = "local"\n'
                   f'cpus = ["{last}", "{first}"]\ncpu_weight = 128\ncap = 50\n')
    await xl_run(lab, capsys, "create", "-q", str(cfg))
    domid = lab.hv.domains.lookup(name="pinned").domid
    pid = lab.hv.process(domid).pid
    threads, _ = tasks.vcpu_tasks(pid)
    assert os.sched_getaffinity(threads[0].tid) == {last}
    assert os.sched_getaffinity(threads[1].tid) == {first}
    out = await xl_run(lab, capsys, "sched-credit", "-d", "pinned")
    assert out.splitlines()[1].split()[2:] == ["128", "50"]
    group = lab.hv.launcher.cgroups.base / f"d{domid}"
    if lab.hv.launcher.cgroups.version == 1:
        assert (group / "cpu.shares").read_text().strip() == "512"
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "50000"


async def test_an_unknown_pool_in_the_config_refuses_the_create(lab, capsys, tmp_path):
    cfg = tmp_path / "lost.cfg"
    cfg.write_text('name = "lost"\nmemory = 16\nlauncher = "local"\npool = "nowhere"\n')
    status, err = await xl_main(lab, capsys, "create", "-q", str(cfg))
    assert status == 1 and "cpupool 'nowhere' does not exist" in err
    assert "lost" not in [d.name for d in lab.hv.domains]
