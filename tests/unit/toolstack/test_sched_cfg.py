"""xl.cfg's cpus=, cpu_weight=, cap= and pool=: kept for the toolstack, checked at create."""
from __future__ import annotations

import pytest

from xenlab.toolstack.sched_cfg import SchedConfig, sched_config
from xenlab.toolstack.xlcfg import parse_xl_config
from xenlab.xen.errors import ConfigError


def test_the_keys_are_kept_without_a_warning_and_read():
    cfg = parse_xl_config('name = "a"\ncpus = ["1", "0-1"]\ncpu_weight = 512\ncap = 20\n'
                          'pool = "fast"\n', strict=True)
    assert cfg.warnings == ()
    assert sched_config(cfg.extra) == SchedConfig(("1", "0-1"), 512, 20, "fast")


def test_one_cpu_list_is_for_every_vcpu():
    assert sched_config({"cpus": "0-3,^2"}).hard == ("0-3,^2",)
    assert sched_config({}).empty and not sched_config({"cap": "0"}).empty


def test_soft_affinity_is_still_warned_about():
    cfg = parse_xl_config('name = "a"\ncpus_soft = "1"\n')
    assert any("cpus_soft= is not emulated" in w for w in cfg.warnings)


@pytest.mark.parametrize("extra, says", [
    ({"cap": "x"}, "cap=x: expected a number"),
    ({"cpu_weight": "0"}, "weight 0"),
    ({"cpu_weight": "70000"}, "weight 70000"),
    ({"cpus": "[]"}, "names no CPU"),
    ({"cpus": "[['1']]"}, "not lists of lists"),
])
def test_bad_values_refuse_the_create(extra, says):
    with pytest.raises(ConfigError) as err:
        sched_config(extra)
    assert says in err.value.message
