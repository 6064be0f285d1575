"""xl's CPU lists and the credit scheduler's weight and cap as CFS values."""
from __future__ import annotations

import errno

import pytest

from xenlab.xen.errors import XenError
from xenlab.xen.sched import (CFS_PERIOD_US, DEFAULT_WEIGHT, cfs_values, check_cap, check_weight,
                              format_cpulist, parse_cpulist)


@pytest.mark.parametrize("text, cpus", [
    ("0-3,^2", {0, 1, 3}),
    ("all", set(range(8))),
    ("all,^0-1", set(range(2, 8))),
    ("5", {5}),
    ("1,3-4", {1, 3, 4}),
    ("0-7,^0-7", set()),
    (" 2 , 6 ", {2, 6}),
    ("^1,1", {1}),           # removing what is not there yet does nothing; order matters
])
def test_cpu_lists_parse_as_xl_parses_them(text, cpus):
    assert parse_cpulist(text, 8) == cpus


@pytest.mark.parametrize("text, says", [
    ("", "empty"),
    ("8", "CPU 8 does not exist"),
    ("3-1", "backwards"),
    ("^all", "can't combine"),
    ("a", "invalid pcpu range"),
    ("1-", "invalid pcpu range"),
    ("node:0", "NUMA"),
    ("²", "invalid pcpu range"),
    ("1-999999", "invalid pcpu range"),
])
def test_bad_cpu_lists_are_refused_with_einval(text, says):
    with pytest.raises(XenError) as err:
        parse_cpulist(text, 8)
    assert err.value.errno == errno.EINVAL and says in err.value.message


@pytest.mark.parametrize("cpus, shown", [
    (range(4), "all"), ((), "none"), ({0, 1, 3}, "0-1,3"), ({2}, "2"), ({0, 2}, "0,2"),
    ({1, 2, 3}, "1-3"), ({0, 1, 2, 3, 9}, "all"),   # a CPU past the map is not printed
])
def test_cpu_maps_print_as_print_bitmap(cpus, shown):
    assert format_cpulist(cpus, 4) == shown


def test_cpu_lists_round_trip():
    for text in ("0-1,3", "2", "0,2-3"):
        assert format_cpulist(parse_cpulist(text, 4), 4) == text


def test_default_weight_and_no_cap_are_the_cgroup_defaults():
    cfs = cfs_values(DEFAULT_WEIGHT, 0)
    assert (cfs.v1_shares, cfs.v1_quota_us, cfs.v1_period_us) == (1024, -1, CFS_PERIOD_US)
    assert (cfs.v2_weight, cfs.v2_max) == (100, "max 100000")


@pytest.mark.parametrize("weight, shares, v2", [
    (512, 2048, 200), (128, 512, 50), (1, 4, 1), (65535, 262140, 10000), (2, 8, 1), (3, 12, 1),
    (25600, 102400, 10000), (384, 1536, 150),
])
def test_weights_map_by_ratio_and_clamp_to_the_kernels_range(weight, shares, v2):
    cfs = cfs_values(weight, 0)
    assert (cfs.v1_shares, cfs.v2_weight) == (shares, v2)


@pytest.mark.parametrize("cap, quota", [(25, 25000), (100, 100000), (250, 250000), (1, 1000)])
def test_a_cap_is_that_percent_of_a_100ms_period(cap, quota):
    cfs = cfs_values(DEFAULT_WEIGHT, cap)
    assert (cfs.v1_quota_us, cfs.v1_period_us) == (quota, 100000)
    assert cfs.v2_max == f"{quota} 100000"


@pytest.mark.parametrize("weight", [0, 65536, -1])
def test_weights_outside_xens_range_are_refused(weight):
    with pytest.raises(XenError) as err:
        check_weight(weight)
    assert err.value.errno == errno.EINVAL


def test_a_cap_is_at_most_100_per_vcpu_when_the_vcpus_are_known():
    assert check_cap(200, vcpus=2) == 200
    with pytest.raises(XenError) as err:
        check_cap(201, vcpus=2)
    assert "100 per vCPU" in err.value.message
    assert check_cap(65535) == 65535
    with pytest.raises(XenError):
        check_cap(65536)
