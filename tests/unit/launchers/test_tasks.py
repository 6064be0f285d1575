"""A process's threads from /proc: which are vCPUs, their time, CPU and affinity."""
from __future__ import annotations

import os
import threading

from xenlab.domain.vcpus import _set_thread_name
from xenlab.launchers import tasks

STAT = ("4242 ({name}) {state} 1 4242 4242 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 "
        "3 0 12345 1000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 {cpu} 0 0 0 0 0")


def test_a_stat_line_gives_name_state_cpu_and_seconds():
    ticks = os.sysconf("SC_CLK_TCK")
    text = STAT.format(name="vcpu1", state="R", utime=3 * ticks, stime=ticks, cpu=1)
    assert tasks.parse_stat(text) == ("vcpu1", "R", 1, 4.0)


def test_a_name_with_spaces_and_parentheses_does_not_shift_the_fields():
    text = STAT.format(name="a) (b c) S 9", state="S", utime=0, stime=0, cpu=3)
    assert tasks.parse_stat(text) == ("a) (b c) S 9", "S", 3, 0.0)


def test_the_main_thread_is_vcpu0_and_named_threads_the_others():
    main = tasks.Task(100, "python", "S", 0, 0.0, frozenset({0}))
    assert tasks.vcpu_of(main, 100) == 0
    assert tasks.vcpu_of(tasks.Task(101, "vcpu3", "S", 0, 0.0, frozenset()), 100) == 3
    for name in ("vcpu0", "grpc_global_tim", "vcpu", "vcpu123", "xvcpu1"):
        assert tasks.vcpu_of(tasks.Task(102, name, "S", 0, 0.0, frozenset()), 100) is None


def test_this_process_threads_are_read_and_pinned():
    ready, done = threading.Event(), threading.Event()
    tid = []

    def body():
        _set_thread_name("vcpu1")
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    t = threading.Thread(target=body)
    t.start()
    try:
        ready.wait(10)
        vcpus, others = tasks.vcpu_tasks(os.getpid())
        assert vcpus[0].tid == os.getpid() and vcpus[1].tid == tid[0]
        assert vcpus[1].name == "vcpu1" and vcpus[1].state in ("S", "R")
        assert vcpus[1].affinity == frozenset(os.sched_getaffinity(tid[0]))
        cpu = min(os.sched_getaffinity(0))
        tasks.set_affinity(tid[0], {cpu})
        assert os.sched_getaffinity(tid[0]) == {cpu}
        assert os.sched_getaffinity(0) != {cpu} or os.cpu_count() == 1   # only that thread moved
    finally:
        done.set()
        t.join()


def test_a_process_that_is_gone_has_no_threads(tmp_path):
    assert tasks.read_tasks(999999999) == []


def test_pinning_a_thread_that_has_exited_is_no_error():
    t = threading.Thread(target=lambda: tid.append(threading.get_native_id()))
    tid: list[int] = []
    t.start()
    t.join()
    tasks.set_affinity(tid[0], os.sched_getaffinity(0))     # ESRCH: gone, nothing to pin
