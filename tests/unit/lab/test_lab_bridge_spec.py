"""The [[bridge]] table of a lab file: FDB settings reach the bridge service."""
import pytest

from xenlab.lab.spec import parse_lab
from xenlab.xen.errors import ConfigError


def test_fdb_policy_defaults_to_linux_and_takes_ovs():
    assert parse_lab('[[bridge]]\nname = "xenbr0"\n').bridges[0].fdb_policy == "linux"
    spec = parse_lab('[[bridge]]\nname = "xenbr0"\nfdb_policy = "ovs"\nfdb_max = 64\n')
    assert (spec.bridges[0].fdb_policy, spec.bridges[0].fdb_max) == ("ovs", 64)


def test_an_unknown_fdb_policy_is_refused_by_name():
    with pytest.raises(ConfigError, match="fdb_policy"):
        parse_lab('[[bridge]]\nname = "xenbr0"\nfdb_policy = "lru"\n')
