"""The scheduler's glue on a fake domain process: which threads get which
CPUs, what a cpupool change re-pins, what credit writes, and what is refused."""
from __future__ import annotations

import errno

import pytest

from xenlab.hypervisor.domains import Domain
from xenlab.hypervisor.scheduler import Scheduler
from xenlab.launchers.tasks import Task
from xenlab.xen.errors import XenError


class FakeProcess:
    def __init__(self, vcpus: int = 2, helpers: int = 1, visible: bool = True):
        self.threads = {n: Task(100 + n, "python" if n == 0 else f"vcpu{n}", "S", 0, 1.5,
                                frozenset(range(4))) for n in range(vcpus)}
        self.helpers = [Task(200 + n, "grpc", "S", 0, 0.0, frozenset(range(4))) for n in range(helpers)]
        self.visible = visible
        self.affinity: dict[int, frozenset] = {}
        self.credit = None
        self.fail = False

    def vcpu_tasks(self):
        if not self.visible:
            raise XenError(errno.EOPNOTSUPP, "not visible")
        return self.threads, self.helpers

    def set_affinity(self, tids, cpus):
        if self.fail:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        for tid in tids:
            self.affinity[tid] = frozenset(cpus)

    def set_credit(self, cfs):
        self.credit = cfs
        return {"cpu.shares": str(cfs.v1_shares)}


@pytest.fixture
def world():
    procs = {1: FakeProcess()}
    sched = Scheduler(procs.get, host_cpus=range(4))
    dom = Domain(1, "web", "u", 4096, vcpus=2, online_vcpus=2)
    sched.started(dom)
    return sched, dom, procs[1]


def test_pinning_one_vcpu_moves_its_thread_and_the_helpers_follow_the_union(world):
    sched, dom, proc = world
    sched.pin(dom, 1, "2-3,^3")
    assert proc.affinity[101] == {2} and proc.affinity[100] == {0, 1, 2, 3}
    assert proc.affinity[200] == {0, 1, 2, 3}
    sched.pin(dom, -1, "1")
    assert proc.affinity[100] == proc.affinity[101] == proc.affinity[200] == {1}


def test_soft_affinity_and_vcpus_out_of_range_are_refused(world):
    sched, dom, _ = world
    for args, code in (((0, "all", "1"), errno.EOPNOTSUPP), ((2, "all"), errno.EINVAL),
                       ((-2, "all"), errno.EINVAL), ((0, "7"), errno.EINVAL)):
        with pytest.raises(XenError) as err:
            sched.pin(dom, *args)
        assert err.value.errno == code, args
    sched.pin(dom, 0, "-")          # '-' leaves it
    sched.pin(dom, 0, "1", "all")   # soft 'all' is what it is anyway


def test_a_failed_pin_keeps_the_affinity_it_had(world):
    sched, dom, proc = world
    sched.pin(dom, 0, "1")
    proc.fail = True
    with pytest.raises(XenError) as err:
        sched.pin(dom, 0, "2")
    assert err.value.errno == errno.EPERM
    proc.fail = False
    sched.pin(dom, 1, "3")          # re-applies vCPU 0's as it was
    assert proc.affinity[100] == {1}


def test_a_pool_pins_its_domains_and_breaks_affinity_it_cannot_meet(world):
    sched, dom, proc = world
    sched.pin(dom, 1, "0")
    sched.cpu_remove("Pool-0", "2-3", [dom])
    assert proc.affinity[100] == {0, 1} and proc.affinity[101] == {0}
    sched.pools.create("p", "", {2, 3})
    sched.migrate(dom, "p")
    # vCPU 1 wanted CPU 0, which pool p does not have: it runs on the pool's CPUs.
    assert proc.affinity[100] == proc.affinity[101] == {2, 3}
    with pytest.raises(XenError) as err:
        sched.pin(dom, 0, "0")
    assert err.value.errno == errno.EINVAL and "cpupool p" in err.value.message
    sched.cpu_remove("p", "3", [dom])
    assert proc.affinity[100] == {2}


def test_credit_keeps_what_is_not_given_and_checks_the_cap_per_vcpu(world):
    sched, dom, proc = world
    assert sched.get(dom) == dict(domid=1, name="web", weight=256, cap=0, poolid=0)
    assert sched.set(dom, 512, None) == {"cpu.shares": "2048"}
    sched.set(dom, None, 30)
    assert sched.get(dom)["weight"] == 512 and sched.get(dom)["cap"] == 30
    assert proc.credit.v1_quota_us == 30000
    with pytest.raises(XenError):
        sched.set(dom, None, 201)    # two vCPUs: 200 at most
    assert sched.get(dom)["cap"] == 30


def test_a_domain_without_a_process_is_listed_but_not_scheduled():
    sched = Scheduler({}.get, host_cpus=range(2))
    dom = Domain(3, "none", "u", 4096, vcpus=2, online_vcpus=1)
    sched.started(dom)
    rows = sched.vcpus(dom)
    assert [(r["vcpu"], r["online"], r["cpu"], r["tid"]) for r in rows] == [(0, True, -1, 0), (1, False, -1, 0)]
    assert rows[0]["hard"] == [0, 1]
    for call in (lambda: sched.set(dom, 512, None), lambda: sched.pin(dom, 0, "1"),
                 lambda: sched.migrate(dom, "Pool-0")):
        with pytest.raises(XenError) as err:
            call()
        assert err.value.errno == errno.EOPNOTSUPP and "no process" in err.value.message


def test_threads_out_of_sight_are_listed_without_them():
    procs = {1: FakeProcess(visible=False)}
    sched = Scheduler(procs.get, host_cpus=range(2))
    dom = Domain(1, "c", "u", 4096, vcpus=1, online_vcpus=1)
    sched.started(dom)
    assert [r["tid"] for r in sched.vcpus(dom)] == [0]


def test_rows_come_from_the_threads(world):
    sched, dom, proc = world
    proc.threads[1] = Task(101, "vcpu1", "R", 3, 7.25, frozenset({3}))
    rows = sched.vcpus(dom)
    assert (rows[1]["cpu"], rows[1]["running"], rows[1]["time"], rows[1]["hard"]) == (3, True, 7.25, [3])
    assert rows[0]["blocked"] and not rows[0]["running"]
    dom.online_vcpus = 1
    assert sched.vcpus(dom)[1]["cpu"] == -1 and not sched.vcpus(dom)[1]["online"]


def test_a_forgotten_domain_leaves_its_pool_and_parameters(world):
    sched, dom, _ = world
    sched.set(dom, 300, 0)
    sched.forget(dom.domid)
    assert dom.domid not in sched.pools.lookup("Pool-0").domains
    assert sched.get(dom)["weight"] == 256
