"""The domain table: id allocation, names, xl's state column, on_* policy."""
import errno

import pytest

from xenlab.hypervisor.domains import DomainTable, RunState
from xenlab.xen import abi
from xenlab.xen.errors import DomainError


def test_dom0_exists_and_ids_start_at_one():
    table = DomainTable()
    dom0 = table.add_dom0(1024, 2)
    assert (dom0.domid, dom0.name, dom0.privileged) == (0, "Domain-0", True)
    assert table.allocate("a", 256, 1).domid == 1
    assert table.allocate("b", 256, 1).domid == 2


def test_ids_are_not_reused_while_a_domain_is_dying_or_soon_after():
    table = DomainTable()
    a = table.allocate("a", 256, 1)
    a.state = RunState.DYING
    b = table.allocate("b", 256, 1)
    assert b.domid != a.domid
    table.remove(a.domid)
    # Round-robin, as xl: the freed id is not handed out next.
    assert table.allocate("c", 256, 1).domid == b.domid + 1


def test_ids_wrap_below_the_reserved_range():
    table = DomainTable()
    table._next = abi.DOMID_FIRST_RESERVED - 1
    assert table.allocate("last", 1, 1).domid == abi.DOMID_FIRST_RESERVED - 1
    assert table.allocate("wrapped", 1, 1).domid == 1


def test_duplicate_names_are_refused_but_a_dying_domain_frees_its_name():
    table = DomainTable()
    a = table.allocate("web", 256, 1)
    with pytest.raises(DomainError) as exc:
        table.allocate("web", 256, 1)
    assert exc.value.errno == errno.EEXIST
    a.state = RunState.DYING
    assert table.allocate("web", 256, 1).domid != a.domid


@pytest.mark.parametrize("name", ["", "123", "bad name", "x" * 65, "semi;colon"])
def test_bad_names_are_refused(name):
    with pytest.raises(DomainError) as exc:
        DomainTable().allocate(name, 1, 1)
    assert exc.value.errno == errno.EINVAL


def test_bad_vcpus_are_refused():
    table = DomainTable()
    with pytest.raises(DomainError, match="vcpus"):
        table.allocate("a", 1, 0)
    with pytest.raises(DomainError, match="vcpus"):
        table.allocate("a", 1, 33)


def test_table_limit():
    table = DomainTable(max_domains=2)
    table.allocate("a", 1, 1)
    table.allocate("b", 1, 1)
    with pytest.raises(DomainError) as exc:
        table.allocate("c", 1, 1)
    assert exc.value.errno == errno.ENOSPC


def test_lookup_by_name_or_id():
    table = DomainTable()
    a = table.allocate("alpha", 1, 1)
    assert table.lookup(name="alpha") is a
    assert table.lookup(name=str(a.domid)) is a
    assert table.lookup(domid=a.domid) is a
    with pytest.raises(DomainError) as exc:
        table.lookup(name="nope")
    assert exc.value.errno == errno.ESRCH


def test_state_letters_match_xl_columns():
    dom = DomainTable().allocate("a", 1, 1)
    assert dom.state_letters("R") == "r-----"
    assert dom.state_letters("S") == "-b----"
    dom.state = RunState.PAUSED
    assert dom.state_letters("T") == "--p---"
    dom.state = RunState.SHUTDOWN
    assert dom.state_letters() == "---s--"
    dom.state = RunState.CRASHED
    assert dom.state_letters() == "---sc-"
    dom.state = RunState.DYING
    assert dom.state_letters() == "-----d"


def test_uuid_is_validated_and_generated():
    table = DomainTable()
    assert len(table.allocate("a", 1, 1).uuid) == 36
    given = table.allocate("b", 1, 1, uuid="12345678-1234-5678-1234-567812345678")
    assert given.uuid == "12345678-1234-5678-1234-567812345678"
    with pytest.raises(DomainError, match="uuid"):
        table.allocate("c", 1, 1, uuid="nope")
