"""The toolstack's side of xl.cfg's type=, hap= and shadow_memory=: a
DomainSpec from any client gets libxl's defaults filled in, and the same
refusals as the xl.cfg parser gives."""
from __future__ import annotations

import errno

import pytest

from xenlab.client import to_domain_spec
from xenlab.proto import domains_pb2
from xenlab.toolstack.toolstack import resolve_paging
from xenlab.toolstack.xlcfg import parse_xl_config
from xenlab.xen.errors import DomainError
from xenlab.xen.paging import PagingMode


def spec(**fields) -> domains_pb2.DomainSpec:
    return domains_pb2.DomainSpec(name="x", **fields)


def test_an_empty_type_is_pv_on_direct_paging_and_the_spec_says_so():
    s = spec()
    assert resolve_paging(s, 128, 1) == (PagingMode.DIRECT, 0)
    assert s.type == "pv" and not s.HasField("hap") and not s.HasField("shadow_memory_mb")


@pytest.mark.parametrize("fields, mode, pool_mb", [
    (dict(type="hvm"), PagingMode.HAP, 2),
    (dict(type="pvh", hap=False), PagingMode.SHADOW, 2),
    (dict(type="pvh", hap=True, shadow_memory_mb=32), PagingMode.HAP, 32),
])
def test_libxls_defaults_are_filled_in_as_xl_list_l_shows_them(fields, mode, pool_mb):
    s = spec(**fields)
    assert resolve_paging(s, 128, 1) == (mode, pool_mb)
    assert s.hap is (mode is PagingMode.HAP) and s.shadow_memory_mb == pool_mb
    # A restart from the stored spec gets the very same.
    assert resolve_paging(s, 128, 1) == (mode, pool_mb)


def test_a_pv_specs_hap_0_and_shadow_memory_are_dropped():
    s = spec(type="pv", hap=False, shadow_memory_mb=8)
    assert resolve_paging(s, 128, 1) == (PagingMode.DIRECT, 0)
    assert not s.HasField("hap") and not s.HasField("shadow_memory_mb")


@pytest.mark.parametrize("fields, words", [
    (dict(type="pv", hap=True), "hap = 1 with type = 'pv'"),
    (dict(hap=True), "hap = 1 with type = 'pv'"),
    (dict(type="hvm", shadow_memory_mb=0), "needs at least 1 MiB"),
    (dict(type="kvm"), "type = 'kvm': expected one of pv, pvh, hvm"),
])
def test_a_spec_xl_would_refuse_is_refused_with_einval(fields, words):
    with pytest.raises(DomainError) as err:
        resolve_paging(spec(**fields), 128, 1)
    assert err.value.errno == errno.EINVAL and words in err.value.message


def test_an_xl_cfg_reaches_the_spec_with_its_paging_keys():
    cfg = parse_xl_config("name='x'\ntype='pvh'\nhap=0\nshadow_memory=3\n", "t.cfg")
    s = to_domain_spec(cfg)
    assert (s.type, s.hap, s.shadow_memory_mb) == ("pvh", False, 3)
    unset = to_domain_spec(parse_xl_config("name='x'\ntype='hvm'\n", "t.cfg"))
    assert not unset.HasField("hap") and not unset.HasField("shadow_memory_mb")
