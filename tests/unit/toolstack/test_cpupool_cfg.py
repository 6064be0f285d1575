"""xlcpupool.cfg: name, sched and cpus, from a file and the command line."""
from __future__ import annotations

import pytest

from xenlab.toolstack.cpupool_cfg import CpupoolConfig, parse_cpupool_config
from xenlab.xen.errors import ConfigError


def test_a_file_and_overrides():
    cfg = parse_cpupool_config('name = "p1"\nsched = "credit"\ncpus = ["1", "3-4"]\n',
                               ['sched="credit2"'])
    assert cfg == CpupoolConfig("p1", "credit2", "1,3-4")
    assert parse_cpupool_config("", ['name="p"', "cpus=2"]) == CpupoolConfig("p", "", "2")


@pytest.mark.parametrize("items, says", [
    (['cpus="1"'], "needs a name"),
    (['name="p"', 'nodes="0"'], "nodes= is not supported"),
    (['name="p"', 'color="red"'], "unknown cpupool key 'color'"),
    (['name=["a"]'], "single value"),
    (['name="p"', 'cpus=[["1"]]'], "not lists"),
])
def test_bad_configs_are_refused(items, says):
    with pytest.raises(ConfigError) as err:
        parse_cpupool_config("", items)
    assert err.value.message.startswith(says) or says in err.value.message
    assert not err.value.message.endswith(": 22")       # the message, not an errno as a line
