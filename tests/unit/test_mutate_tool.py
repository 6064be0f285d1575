"""tools/mutate.py's own logic, without running mutmut: which mutants a
per-function core selects, and the names it passes mutmut."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mutate_tool", ROOT / "tools" / "mutate.py")
mutate = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mutate          # its dataclasses look their module up
spec.loader.exec_module(mutate)


def test_mutmut_names_functions_and_methods_as_it_mangles_them():
    assert mutate.mangled("parse_vlan") == "x_parse_vlan"
    assert mutate.mangled("Fdb.learn") == "xǁFdbǁlearn"


def test_a_module_limited_to_some_functions_selects_only_their_mutants():
    only = {"xenlab.xen.netconf": ["parse_vlan"]}
    assert mutate.patterns(["xenlab.xen.netconf", "xenlab.bridge.fdb"], only) == [
        "xenlab.xen.netconf.x_parse_vlan*", "xenlab.bridge.fdb.*"]
    assert mutate.in_scope("xenlab.xen.netconf.x_parse_vlan__mutmut_3", "xenlab.xen.netconf", only)
    assert not mutate.in_scope("xenlab.xen.netconf.x_parse_rate__mutmut_3", "xenlab.xen.netconf", only)
    assert not mutate.in_scope("xenlab.xen.netconf.x_parse_vlan_extra__mutmut_1", "xenlab.xen.netconf", only)
    assert mutate.in_scope("xenlab.bridge.fdb.xǁFdbǁlearn__mutmut_1", "xenlab.bridge.fdb", only)


def test_every_core_and_equivalent_in_pyproject_names_a_real_file():
    cores = mutate.cores()
    assert "xenlab.xen.netconf" in cores and "xenlab.bridge.stp" in cores
    for module, path in cores.items():
        assert (ROOT / "services" / Path(*path.parts[1:])).is_file(), module
    for e in mutate.equivalents():
        assert (ROOT / "services" / "xenlab" / e.file).is_file(), e
        lines = {line.strip() for line in (ROOT / "services" / "xenlab" / e.file).read_text().splitlines()}
        assert e.before in lines, e          # a stale entry: its line changed
        assert e.why
    for module, functions in mutate.functions().items():
        assert module in cores
        source = (ROOT / "services" / Path(*cores[module].parts[1:])).read_text()
        assert all(f"def {f.rpartition('.')[2]}(" in source for f in functions)
