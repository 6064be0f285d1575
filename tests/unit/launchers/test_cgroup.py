"""The host's CPU cgroups, on a directory tree that stands in for /sys/fs/cgroup."""
from __future__ import annotations

import errno
import os

import pytest

from xenlab.launchers.cgroup import CgroupUnavailable, CpuCgroups
from xenlab.xen.sched import cfs_values


def v1_tree(tmp_path):
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    return cpu, f"cgroup {cpu} cgroup rw,relatime,cpu 0 0\ncgroup {tmp_path}/mem cgroup rw,memory 0 0\n"


def v2_tree(tmp_path, controllers="cpuset cpu io memory pids"):
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("\n")
    return root, f"cgroup2 {root} cgroup2 rw,nosuid 0 0\n"


def test_v1_weight_and_cap_go_to_shares_and_cfs_quota(tmp_path):
    cpu, mounts = v1_tree(tmp_path)
    groups = CpuCgroups.detect("lab", mounts)
    assert groups.version == 1 and groups.base == cpu / "xenlab-lab"
    group = groups.create(3)
    written = group.apply(cfs_values(512, 25))
    assert written == {str(cpu / "xenlab-lab/d3/cpu.shares"): "2048",
                       str(cpu / "xenlab-lab/d3/cpu.cfs_period_us"): "100000",
                       str(cpu / "xenlab-lab/d3/cpu.cfs_quota_us"): "25000"}
    assert group.read("cpu.cfs_quota_us") == "25000"
    group.apply(cfs_values(256, 0))
    assert group.read("cpu.cfs_quota_us") == "-1" and group.read("cpu.shares") == "1024"


def test_v2_is_preferred_when_it_has_the_cpu_controller(tmp_path):
    _, v1_mounts = v1_tree(tmp_path)
    root, mounts = v2_tree(tmp_path)
    # What the kernel makes in every new group.
    (root / "xenlab-lab").mkdir()
    (root / "xenlab-lab/cgroup.subtree_control").write_text("\n")
    groups = CpuCgroups.detect("lab", v1_mounts + mounts)
    assert groups.version == 2
    # The cpu controller is delegated down to the domains' groups.
    assert (root / "cgroup.subtree_control").read_text() == "+cpu\n"
    assert (root / "xenlab-lab/cgroup.subtree_control").read_text() == "+cpu\n"
    group = groups.create(4)
    group.apply(cfs_values(512, 50))
    assert group.read("cpu.weight") == "200" and group.read("cpu.max") == "50000 100000"
    group.apply(cfs_values(256, 0))
    assert group.read("cpu.max") == "max 100000"


def test_v2_without_the_cpu_controller_falls_back_to_v1(tmp_path):
    cpu, v1 = v1_tree(tmp_path)
    _, v2 = v2_tree(tmp_path, "hugetlb")
    groups = CpuCgroups.detect("lab", v2 + v1)
    assert groups.version == 1 and groups.base == cpu / "xenlab-lab"


def test_no_cpu_hierarchy_says_why_and_create_refuses(tmp_path):
    _, v2 = v2_tree(tmp_path, "memory pids")
    groups = CpuCgroups.detect("lab", v2)
    assert not groups.available and "no cpu controller" in groups.reason
    with pytest.raises(CgroupUnavailable) as err:
        groups.create(1)
    assert err.value.errno == errno.EOPNOTSUPP and "no cpu controller" in err.value.message
    assert "no cgroup hierarchy" in CpuCgroups.detect("lab", "").reason


def test_an_unwritable_hierarchy_is_reported(tmp_path):
    cpu, mounts = v1_tree(tmp_path)
    (cpu / "xenlab-lab").write_text("a file where the group would go")
    groups = CpuCgroups.detect("lab", mounts)
    assert not groups.available and "cgroup v1 cpu at" in groups.reason


def test_remove_takes_the_group_away_and_tolerates_it_gone(tmp_path):
    _, mounts = v1_tree(tmp_path)
    groups = CpuCgroups.detect("lab", mounts)
    group = groups.create(2)
    group.remove()
    assert not group.path.exists()
    group.remove()
    groups.close()
    assert not groups.base.exists()


def test_groups_of_a_dead_hypervisor_are_reaped_and_a_live_ones_kept(tmp_path):
    cpu, mounts = v1_tree(tmp_path)
    dead = cpu / "xenlab-999999999-0abc"
    (dead / "d1").mkdir(parents=True)
    alive = cpu / f"xenlab-{os.getpid()}-0def"
    (alive / "d2").mkdir(parents=True)
    CpuCgroups.detect("lab", mounts)
    assert not dead.exists() and (alive / "d2").exists()
