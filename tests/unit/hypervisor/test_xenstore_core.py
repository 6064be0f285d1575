"""The pure XenStore core: tree, permissions, quotas, transactions, watches."""
from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings, strategies as st

from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.xenstore import XenStore, XenStoreQuotas
from xenlab.xen.errors import XenStoreError

DOM0 = Caller(0, privileged=True)
D1 = Caller(1)
D2 = Caller(2)


class Events:
    """A fire() that records (conn, path, token)."""

    def __init__(self) -> None:
        self.log: list[tuple[object, str, str]] = []

    def __call__(self, conn, path, token) -> None:
        self.log.append((conn, path, token))

    def take(self, conn=None) -> list[tuple[str, str]]:
        got = [(p, t) for c, p, t in self.log if conn is None or c == conn]
        self.log = [e for e in self.log if conn is not None and e[0] != conn]
        return got


@pytest.fixture
def events() -> Events:
    return Events()


def make_store(events, **quotas) -> XenStore:
    xs = XenStore(fire=events, quotas=XenStoreQuotas(**quotas))
    for d in (1, 2):
        # libxl's layout: /local/domain/D owned by dom0, readable by D;
        # D's writable subtrees owned by D.
        xs.write(DOM0, f"/local/domain/{d}", b"")
        xs.set_perms(DOM0, f"/local/domain/{d}", [(0, "n"), (d, "r")])
        xs.write(DOM0, f"/local/domain/{d}/data", b"")
        xs.set_perms(DOM0, f"/local/domain/{d}/data", [(d, "n")])
    return xs


@pytest.fixture
def xs(events) -> XenStore:
    return make_store(events)


def errno_of(fn, *args, **kwargs) -> int:
    with pytest.raises(XenStoreError) as info:
        fn(*args, **kwargs)
    assert info.value.message
    return info.value.errno


# -- tree -----------------------------------------------------------------

def test_initial_tree_is_owned_by_dom0_and_closed(events):
    xs = XenStore(fire=events)
    for path in ("/", "/local", "/local/domain", "/vm", "/tool"):
        assert xs.exists(path)
        assert xs.get_perms(DOM0, path) == [(0, "n")]
    assert xs.directory(DOM0, "/") == ["local", "tool", "vm"]
    assert errno_of(xs.read, D1, "/local") == errno.EACCES


def test_write_read_and_parents_created(xs):
    xs.write(DOM0, "/a/b/c", b"\x00value\xff")
    assert xs.read(DOM0, "/a/b/c") == b"\x00value\xff"
    assert xs.read(DOM0, "/a/b") == b""
    assert xs.directory(DOM0, "/a") == ["b"]


def test_directory_is_sorted(xs):
    for name in ("zeta", "alpha", "mid"):
        xs.write(DOM0, f"/tool/{name}", b"")
    assert xs.directory(DOM0, "/tool") == ["alpha", "mid", "xenstored", "zeta"]


def test_mkdir_creates_empty_and_is_idempotent(xs):
    xs.mkdir(DOM0, "/tool/x/y")
    xs.write(DOM0, "/tool/x/y", b"keep")
    xs.mkdir(DOM0, "/tool/x/y")
    assert xs.read(DOM0, "/tool/x/y") == b"keep"


def test_xenstored_has_its_own_node_from_the_start(xs):
    """/tool/xenstored was missing; C xenstored makes it at start (manual_node)."""
    assert xs.exists("/tool/xenstored") and xs.read(DOM0, "/tool/xenstored") == b""
    assert errno_of(xs.read, D1, "/tool/xenstored") == errno.EACCES


def test_rm_is_recursive(xs):
    xs.write(DOM0, "/tool/a/b/c", b"1")
    xs.write(DOM0, "/tool/a/d", b"2")
    xs.rm(DOM0, "/tool/a")
    for path in ("/tool/a", "/tool/a/b", "/tool/a/b/c", "/tool/a/d"):
        assert not xs.exists(path)
    assert xs.directory(DOM0, "/tool") == ["xenstored"]
    assert errno_of(xs.read, DOM0, "/tool/a") == errno.ENOENT
    assert errno_of(xs.rm, DOM0, "/") == errno.EINVAL


def test_rm_of_a_missing_node_whose_parent_exists_is_acknowledged(xs, events):
    """It was ENOENT; C xenstored's do_rm: "Didn't exist already? Fine, if
    parent exists." Nothing changes and no watch fires."""
    xs.write(DOM0, "/tool/a", b"1")
    xs.watch(DOM0, "c", "/tool", "t")
    events.take()
    before = dict(xs.nodes())
    xs.rm(DOM0, "/tool/a/gone")
    assert dict(xs.nodes()) == before and events.take() == []
    assert errno_of(xs.rm, DOM0, "/tool/nope/gone") == errno.ENOENT      # no parent
    # A domain that may not read the parent learns nothing: EACCES, as before.
    assert errno_of(xs.rm, D2, "/local/domain/1/data/gone") == errno.EACCES


@pytest.mark.parametrize("path", ["", "/a//b", "/a/", "/a b", "/a/ü", "rel//x", "/a/b\n"])
def test_invalid_paths_are_einval(xs, path):
    assert errno_of(xs.write, DOM0, path, b"") == errno.EINVAL


def test_path_length_limits(events):
    xs = XenStore(fire=events, quotas=XenStoreQuotas(path_max=64))
    xs.write(DOM0, "/" + "a" * 63, b"")
    assert errno_of(xs.write, DOM0, "/" + "a" * 64, b"") == errno.EINVAL
    assert errno_of(xs.read, D1, "x" * 2049) == errno.EINVAL


def test_relative_paths_are_under_the_callers_home(xs):
    xs.write(D1, "data/key", b"v")
    assert xs.read(DOM0, "/local/domain/1/data/key") == b"v"
    assert xs.read(D1, "data/key") == b"v"
    assert xs.directory(D1, "data") == ["key"]
    assert errno_of(xs.read, D2, "data/key") == errno.ENOENT


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=40))
@settings(max_examples=200)
def test_any_path_is_accepted_or_einval(path):
    xs = XenStore(fire=lambda *a: None)
    try:
        xs.write(DOM0, "/tool/" + path, b"x")
    except XenStoreError as err:
        assert err.errno == errno.EINVAL
    else:
        assert xs.read(DOM0, "/tool/" + path) == b"x"


# -- permissions ---------------------------------------------------------------

def test_owner_has_full_access_and_others_get_the_default(xs):
    xs.write(DOM0, "/tool/n", b"v")
    xs.set_perms(DOM0, "/tool/n", [(1, "n")])
    assert xs.read(D1, "/tool/n") == b"v"
    xs.write(D1, "/tool/n", b"w")
    assert errno_of(xs.read, D2, "/tool/n") == errno.EACCES
    xs.set_perms(DOM0, "/tool/n", [(1, "r")])
    assert xs.read(D2, "/tool/n") == b"w"
    assert errno_of(xs.write, D2, "/tool/n", b"x") == errno.EACCES


def test_listed_domains_get_their_own_entry(xs):
    xs.write(DOM0, "/tool/n", b"v")
    xs.set_perms(DOM0, "/tool/n", [(0, "r"), (1, "n"), (2, "w")])
    assert errno_of(xs.read, D1, "/tool/n") == errno.EACCES
    xs.write(D2, "/tool/n", b"from d2")
    assert errno_of(xs.read, D2, "/tool/n") == errno.EACCES
    assert xs.read(Caller(3), "/tool/n") == b"from d2"
    xs.set_perms(DOM0, "/tool/n", [(0, "n"), (1, "b")])
    xs.write(D1, "/tool/n", b"both")
    assert xs.read(D1, "/tool/n") == b"both"


def test_privileged_caller_bypasses_permissions(xs):
    xs.write(D1, "data/secret", b"s")
    xs.set_perms(D1, "data/secret", [(1, "n")])
    assert xs.read(DOM0, "/local/domain/1/data/secret") == b"s"
    xs.write(DOM0, "/local/domain/1/data/secret", b"t")


def test_new_node_inherits_parent_perms_when_privileged_creates(xs):
    xs.write(DOM0, "/local/domain/1/data/made-by-dom0/x", b"")
    assert xs.get_perms(DOM0, "/local/domain/1/data/made-by-dom0/x") == [(1, "n")]
    xs.write(DOM0, "/tool/shared", b"")
    xs.set_perms(DOM0, "/tool/shared", [(0, "w"), (2, "r")])
    xs.write(DOM0, "/tool/shared/child", b"")
    assert xs.get_perms(DOM0, "/tool/shared/child") == [(0, "w"), (2, "r")]


def test_unprivileged_creator_becomes_owner(xs):
    xs.write(DOM0, "/tool/shared", b"")
    xs.set_perms(DOM0, "/tool/shared", [(0, "w"), (2, "r")])
    xs.write(D1, "/tool/shared/a/b", b"mine")
    for path in ("/tool/shared/a", "/tool/shared/a/b"):
        assert xs.get_perms(DOM0, path) == [(1, "w"), (2, "r")]
    xs.set_perms(D1, "/tool/shared/a/b", [(1, "n")])
    assert errno_of(xs.read, D2, "/tool/shared/a/b") == errno.EACCES


def test_write_needs_write_on_nearest_existing_ancestor(xs):
    assert errno_of(xs.write, D1, "/local/domain/1/newdir/x", b"") == errno.EACCES
    assert errno_of(xs.mkdir, D1, "/local/domain/1/newdir") == errno.EACCES
    assert not xs.exists("/local/domain/1/newdir")
    assert errno_of(xs.write, D1, "/local/domain/2/data/x", b"") == errno.EACCES


def test_rm_needs_write_on_the_node(xs):
    xs.write(DOM0, "/local/domain/1/name", b"d1")
    assert errno_of(xs.rm, D1, "/local/domain/1/name") == errno.EACCES
    xs.write(D1, "data/tmp/a", b"")
    xs.rm(D1, "data/tmp")
    assert not xs.exists("/local/domain/1/data/tmp")


def test_mkdir_on_existing_node_needs_write(xs):
    xs.write(DOM0, "/local/domain/1/name", b"d1")
    assert errno_of(xs.mkdir, D1, "/local/domain/1/name") == errno.EACCES


def test_missing_node_under_unreadable_parent_is_eacces(xs):
    # xenstored's errno_from_parents: existence must not leak.
    assert errno_of(xs.read, D2, "/local/domain/1/data/nothing") == errno.EACCES
    assert errno_of(xs.read, D1, "/local/domain/1/data/nothing") == errno.ENOENT


def test_get_perms_needs_read(xs):
    assert errno_of(xs.get_perms, D2, "/local/domain/1/data") == errno.EACCES
    assert xs.get_perms(D1, "/local/domain/1") == [(0, "n"), (1, "r")]


def test_set_perms_only_by_owner_or_privileged(xs):
    xs.write(DOM0, "/tool/n", b"")
    xs.set_perms(DOM0, "/tool/n", [(0, "b")])
    assert errno_of(xs.set_perms, D1, "/tool/n", [(0, "n")]) == errno.EACCES
    xs.write(D1, "data/mine", b"")
    xs.set_perms(D1, "data/mine", [(1, "r"), (2, "b")])
    assert xs.get_perms(DOM0, "/local/domain/1/data/mine") == [(1, "r"), (2, "b")]
    # a listed writer is not the owner
    assert errno_of(xs.set_perms, D2, "/local/domain/1/data/mine", [(1, "b")]) == errno.EACCES


def test_unprivileged_owner_may_not_give_a_node_away(xs):
    xs.write(D1, "data/mine", b"")
    assert errno_of(xs.set_perms, D1, "data/mine", [(2, "n")]) == errno.EPERM
    xs.set_perms(DOM0, "/local/domain/1/data/mine", [(2, "n")])
    assert xs.get_perms(DOM0, "/local/domain/1/data/mine") == [(2, "n")]


@pytest.mark.parametrize("perms", [[], [(0, "x")], [(0, "rw")], [(0x7FF0, "r")], [(-1, "r")]])
def test_bad_permission_lists_are_einval(xs, perms):
    xs.write(DOM0, "/tool/n", b"")
    assert errno_of(xs.set_perms, DOM0, "/tool/n", perms) == errno.EINVAL


# -- quotas ---------------------------------------------------------------------

def test_node_quota_counts_owned_nodes(events):
    xs = make_store(events, nodes=5)
    assert xs.node_count(1) == 1            # data/
    xs.write(D1, "data/a/b", b"")           # two more
    xs.write(D1, "data/c", b"")
    xs.write(D1, "data/d", b"")
    assert xs.node_count(1) == 5
    assert errno_of(xs.write, D1, "data/e", b"") == errno.EDQUOT
    assert errno_of(xs.mkdir, D1, "data/e") == errno.EDQUOT
    assert not xs.exists("/local/domain/1/data/e")
    xs.write(D1, "data/c", b"rewrite is fine")
    xs.rm(D1, "data/a")
    assert xs.node_count(1) == 3
    xs.write(D1, "data/e", b"")


def test_node_quota_refuses_a_deep_write_that_would_cross_it(events):
    xs = make_store(events, nodes=3)
    assert errno_of(xs.write, D1, "data/a/b/c", b"") == errno.EDQUOT
    assert not xs.exists("/local/domain/1/data/a")


def test_privileged_domains_are_exempt_from_quotas(events):
    xs = make_store(events, nodes=2, entry_size=4, watches=1, transactions=1)
    for i in range(5):
        xs.write(DOM0, f"/tool/{i}", b"0123456789")
        xs.watch(DOM0, "c", f"/tool/{i}", "t")
        xs.transaction_start(DOM0)


def test_nodes_dom0_creates_for_a_domain_count_against_it(xs):
    before = xs.node_count(1)
    xs.write(DOM0, "/local/domain/1/data/x", b"")
    assert xs.node_count(1) == before + 1
    xs.set_perms(DOM0, "/local/domain/1/data/x", [(0, "n")])
    assert xs.node_count(1) == before


def test_entry_size_quota(events):
    xs = make_store(events, entry_size=8)
    xs.write(D1, "data/v", b"12345678")
    assert errno_of(xs.write, D1, "data/v", b"123456789") == errno.EDQUOT
    assert xs.read(D1, "data/v") == b"12345678"


def test_no_value_is_longer_than_a_xenstore_payload(events):
    xs = make_store(events)
    xs.write(DOM0, "/tool/v", b"x" * 4096)
    assert errno_of(xs.write, DOM0, "/tool/v", b"x" * 4097) == errno.E2BIG
    assert len(xs.read(DOM0, "/tool/v")) == 4096


def test_watch_quota_is_per_domain(events):
    xs = make_store(events, watches=2)
    xs.watch(D1, "c1", "data/a", "t")
    xs.watch(D1, "c2", "data/b", "t")
    assert errno_of(xs.watch, D1, "c3", "data/c", "t") == errno.EDQUOT
    xs.watch(D2, "c4", "data/c", "t")
    xs.unwatch(D1, "c1", "data/a", "t")
    xs.watch(D1, "c3", "data/c", "t")


def test_transaction_quota(events):
    xs = make_store(events, transactions=2)
    t1 = xs.transaction_start(D1)
    xs.transaction_start(D1)
    assert errno_of(xs.transaction_start, D1) == errno.EDQUOT
    xs.transaction_start(D2)
    xs.transaction_end(D1, t1, commit=False)
    xs.transaction_start(D1)


def test_perm_list_length_quota(events):
    xs = make_store(events, perms=2)
    xs.write(D1, "data/n", b"")
    xs.set_perms(D1, "data/n", [(1, "n"), (2, "r")])
    assert errno_of(xs.set_perms, D1, "data/n", [(1, "n"), (2, "r"), (3, "r")]) == errno.EDQUOT


def test_node_quota_is_checked_again_at_commit(events):
    xs = make_store(events, nodes=3)
    xs.write(DOM0, "/tool/open", b"")
    xs.set_perms(DOM0, "/tool/open", [(0, "w")])
    tx = xs.transaction_start(D1)
    xs.write(D1, "data/a", b"", tx)
    xs.write(D1, "data/b", b"", tx)
    xs.write(D1, "/tool/open/c", b"")    # outside, no conflict: d1 now owns 2 of 3
    assert errno_of(xs.transaction_end, D1, tx, True) == errno.EDQUOT
    assert not xs.exists("/local/domain/1/data/a")
    assert xs.node_count(1) == 2


# -- transactions -------------------------------------------------------------

def test_transaction_sees_its_own_writes_and_others_do_not(xs):
    tx = xs.transaction_start(D1)
    xs.write(D1, "data/a", b"1", tx)
    assert xs.read(D1, "data/a", tx) == b"1"
    assert xs.directory(D1, "data", tx) == ["a"]
    assert errno_of(xs.read, D1, "data/a") == errno.ENOENT
    xs.transaction_end(D1, tx, commit=True)
    assert xs.read(D1, "data/a") == b"1"


def test_transaction_reads_a_node_as_it_first_saw_it(xs):
    # as C xenstored: a node is read when the transaction first touches it
    # (its generation recorded), not copied when the transaction starts
    xs.write(D1, "data/a", b"old")
    xs.write(D1, "data/b", b"old")
    tx = xs.transaction_start(D1)
    assert xs.read(D1, "data/a", tx) == b"old"
    xs.write(DOM0, "/local/domain/1/data/a", b"new")
    xs.write(DOM0, "/local/domain/1/data/b", b"new")
    assert xs.read(D1, "data/a", tx) == b"old"
    assert xs.read(D1, "data/b", tx) == b"new"
    assert errno_of(xs.transaction_end, D1, tx, True) == errno.EAGAIN


def test_abort_discards_changes(xs):
    tx = xs.transaction_start(D1)
    xs.write(D1, "data/a", b"1", tx)
    xs.rm(D1, "data", tx)
    xs.transaction_end(D1, tx, commit=False)
    assert xs.exists("/local/domain/1/data")
    assert not xs.exists("/local/domain/1/data/a")


def test_conflict_on_a_node_read_in_the_transaction(xs):
    xs.write(D1, "data/state", b"1")
    tx = xs.transaction_start(D1)
    xs.read(D1, "data/state", tx)
    xs.write(D1, "data/other", b"x", tx)
    xs.write(DOM0, "/local/domain/1/data/state", b"2")
    assert errno_of(xs.transaction_end, D1, tx, True) == errno.EAGAIN
    assert not xs.exists("/local/domain/1/data/other")
    # the failed transaction is over
    assert errno_of(xs.transaction_end, D1, tx, False) == errno.ENOENT


def test_conflict_on_a_node_written_in_the_transaction(xs):
    xs.write(D1, "data/k", b"1")
    tx = xs.transaction_start(D1)
    xs.write(D1, "data/k", b"tx", tx)
    xs.write(D1, "data/k", b"outside")
    assert errno_of(xs.transaction_end, D1, tx, True) == errno.EAGAIN
    assert xs.read(D1, "data/k") == b"outside"


def test_conflict_when_a_read_node_is_removed(xs):
    xs.write(D1, "data/k", b"1")
    tx = xs.transaction_start(D1)
    xs.read(D1, "data/k", tx)
    xs.rm(D1, "data/k")
    assert errno_of(xs.transaction_end, D1, tx, True) == errno.EAGAIN


def test_conflict_when_a_node_seen_missing_appears(xs):
    tx = xs.transaction_start(D1)
    assert errno_of(xs.read, D1, "data/k", tx) == errno.ENOENT
    xs.write(D1, "data/k", b"now here")
    assert errno_of(xs.transaction_end, D1, tx, True) == errno.EAGAIN


def test_conflict_between_two_transactions(xs):
    xs.write(D1, "data/counter", b"0")
    t1, t2 = xs.transaction_start(D1), xs.transaction_start(D1)
    for tx in (t1, t2):
        n = int(xs.read(D1, "data/counter", tx))
        xs.write(D1, "data/counter", str(n + 1).encode(), tx)
    xs.transaction_end(D1, t1, True)
    assert errno_of(xs.transaction_end, D1, t2, True) == errno.EAGAIN
    assert xs.read(D1, "data/counter") == b"1"


def test_unrelated_commits_do_not_conflict(xs):
    xs.write(D1, "data/a", b"1")
    xs.write(D2, "data/b", b"1")
    tx = xs.transaction_start(D1)
    assert xs.read(D1, "data/a", tx) == b"1"
    xs.write(D1, "data/a", b"2", tx)
    xs.write(D2, "data/b", b"2")                   # another domain, another node
    xs.write(D2, "data/new", b"")                  # a new node elsewhere
    other = xs.transaction_start(D2)
    xs.write(D2, "data/b", b"3", other)
    xs.transaction_end(D2, other, True)
    xs.transaction_end(D1, tx, True)
    assert xs.read(D1, "data/a") == b"2"
    assert xs.read(D2, "data/b") == b"3"


def test_transaction_ids_belong_to_their_domain(xs):
    tx = xs.transaction_start(D1)
    assert errno_of(xs.read, D2, "data", tx) == errno.ENOENT
    assert errno_of(xs.transaction_end, D2, tx, True) == errno.ENOENT
    assert errno_of(xs.write, D1, "data/x", b"", 9999) == errno.ENOENT
    xs.transaction_end(D1, tx, True)


def test_transaction_rm_and_recreate_commit(xs):
    xs.write(D1, "data/dev/a", b"1")
    tx = xs.transaction_start(D1)
    xs.rm(D1, "data/dev", tx)
    xs.write(D1, "data/dev/b", b"2", tx)
    xs.transaction_end(D1, tx, True)
    assert xs.directory(D1, "data/dev") == ["b"]
    assert xs.node_count(1) == 3


# -- watches ---------------------------------------------------------------------

def test_watch_fires_once_on_registration(xs, events):
    xs.watch(D1, "c", "data/x", "tok")
    assert events.take() == [("data/x", "tok")]
    xs.watch(DOM0, "d", "/nowhere/yet", "t2")
    assert events.take() == [("/nowhere/yet", "t2")]


def test_write_fires_watches_on_the_node_and_its_ancestors(xs, events):
    xs.watch(DOM0, "c", "/local/domain/1/data/dev", "exact")
    xs.watch(DOM0, "c", "/local/domain/1", "parent")
    xs.watch(DOM0, "c", "/", "root")
    xs.watch(DOM0, "c", "/local/domain/1/data/dev/deeper", "below")
    xs.watch(DOM0, "c", "/local/domain/1/data/devices", "sibling-prefix")
    events.take()
    xs.write(DOM0, "/local/domain/1/data/dev", b"1")
    got = sorted(events.take())
    path = "/local/domain/1/data/dev"
    assert got == sorted([(path, "exact"), (path, "parent"), (path, "root")])


def test_mkdir_and_set_perms_fire(xs, events):
    xs.watch(DOM0, "c", "/tool", "t")
    events.take()
    xs.mkdir(DOM0, "/tool/d")
    assert events.take() == [("/tool/d", "t")]
    xs.mkdir(DOM0, "/tool/d")          # already there: nothing
    assert events.take() == []
    xs.set_perms(DOM0, "/tool/d", [(0, "r")])
    assert events.take() == [("/tool/d", "t")]


def test_failed_requests_fire_nothing(xs, events):
    xs.watch(DOM0, "c", "/", "t")
    events.take()
    with pytest.raises(XenStoreError):
        xs.write(D2, "/local/domain/1/data/x", b"")
    with pytest.raises(XenStoreError):
        xs.rm(DOM0, "/tool/missing/too")
    xs.rm(DOM0, "/tool/missing")            # acknowledged: its parent exists
    assert events.take() == []


def test_rm_fires_ancestors_with_node_and_descendants_with_their_own_path(xs, events):
    xs.write(DOM0, "/tool/dev/vif/0/state", b"4")
    xs.watch(DOM0, "c", "/tool", "up")
    xs.watch(DOM0, "c", "/tool/dev/vif/0/state", "down")
    xs.watch(DOM0, "c", "/tool/dev/vif/0/not-there", "ghost")
    xs.watch(DOM0, "c", "/tool/devices", "unrelated")
    events.take()
    xs.rm(DOM0, "/tool/dev")
    assert sorted(events.take()) == sorted([
        ("/tool/dev", "up"),
        ("/tool/dev/vif/0/state", "down"),
        ("/tool/dev/vif/0/not-there", "ghost"),
    ])


def test_relative_watch_gets_relative_event_paths(xs, events):
    xs.watch(D1, "c", "data", "rel")
    xs.watch(D1, "c", "/local/domain/1/data", "abs")
    events.take()
    xs.write(D1, "data/dev/x", b"")
    assert sorted(events.take()) == [("/local/domain/1/data/dev/x", "abs"), ("data/dev/x", "rel")]
    xs.watch(D1, "c", "data/dev/x/y", "below")
    events.take()
    xs.rm(D1, "data/dev")
    assert ("data/dev/x/y", "below") in events.take()


def test_events_only_reach_domains_that_may_read_the_node(xs, events):
    xs.write(DOM0, "/tool/pub", b"")
    xs.set_perms(DOM0, "/tool/pub", [(0, "r")])
    xs.watch(D1, "d1", "/tool", "t")
    xs.watch(D2, "d2", "/tool", "t")
    xs.watch(DOM0, "d0", "/tool", "t")
    events.take()
    xs.write(DOM0, "/tool/pub/x", b"")            # inherits r for everyone
    assert sorted(c for c, _, _ in events.log) == ["d0", "d1", "d2"]
    events.take()
    xs.write(DOM0, "/tool/private", b"")          # n0: only dom0
    assert [c for c, _, _ in events.log] == ["d0"]
    events.take()
    xs.set_perms(DOM0, "/tool/private", [(0, "n"), (2, "r")])
    assert sorted(c for c, _, _ in events.log) == ["d0", "d2"]


def test_set_perms_that_revokes_read_still_tells_the_old_reader(xs, events):
    xs.write(DOM0, "/tool/n", b"")
    xs.set_perms(DOM0, "/tool/n", [(0, "r")])
    xs.watch(D1, "d1", "/tool/n", "t")
    events.take()
    xs.set_perms(DOM0, "/tool/n", [(0, "n")])
    assert events.take("d1") == [("/tool/n", "t")]
    xs.write(DOM0, "/tool/n", b"x")
    assert events.take("d1") == []


def test_rm_event_checks_the_removed_nodes_perms(xs, events):
    xs.write(D1, "data/secret/inner", b"")
    xs.set_perms(D1, "data/secret", [(1, "n")])
    xs.set_perms(D1, "data/secret/inner", [(1, "n")])
    xs.watch(D2, "d2", "/local/domain/1/data/secret/inner", "t")
    events.take()
    xs.rm(D1, "data/secret")
    assert events.take("d2") == []


def test_transaction_events_fire_at_commit_only(xs, events):
    xs.watch(DOM0, "c", "/local/domain/1/data", "t")
    events.take()
    tx = xs.transaction_start(D1)
    xs.write(D1, "data/a", b"1", tx)
    xs.write(D1, "data/a", b"2", tx)
    xs.write(D1, "data/b", b"1", tx)
    assert events.take() == []
    xs.transaction_end(D1, tx, True)
    assert sorted(events.take()) == [("/local/domain/1/data/a", "t"),
                                     ("/local/domain/1/data/b", "t")]
    tx = xs.transaction_start(D1)
    xs.write(D1, "data/c", b"", tx)
    xs.transaction_end(D1, tx, False)
    assert events.take() == []


def test_duplicate_watch_and_unknown_unwatch(xs, events):
    xs.watch(D1, "c", "data", "t")
    assert errno_of(xs.watch, D1, "c", "/local/domain/1/data", "t") == errno.EEXIST
    xs.watch(D1, "other-conn", "data", "t")
    assert errno_of(xs.unwatch, D1, "c", "data", "nope") == errno.ENOENT
    xs.unwatch(D1, "c", "/local/domain/1/data", "t")
    events.take()
    xs.write(D1, "data/x", b"")
    assert [c for c, _, _ in events.log] == ["other-conn"]


def test_drop_connection_removes_its_watches(xs, events):
    xs.watch(D1, "c", "data", "t1")
    xs.watch(D1, "c", "/", "t2")
    xs.watch(D1, "keep", "data", "t1")
    assert xs.watch_count(1) == 3
    xs.drop_connection("c")
    assert xs.watch_count(1) == 1
    events.take()
    xs.write(D1, "data/x", b"")
    assert [c for c, _, _ in events.log] == ["keep"]


def test_watch_path_is_validated(xs):
    assert errno_of(xs.watch, D1, "c", "/bad//path", "t") == errno.EINVAL
    assert errno_of(xs.watch, DOM0, "c", "@unknownSpecial", "t") == errno.EINVAL


# -- special watches and domain lifecycle --------------------------------------

def test_special_watches_are_privileged_only(xs):
    for name in ("@introduceDomain", "@releaseDomain"):
        assert errno_of(xs.watch, D1, "c", name, "t") == errno.EACCES
    assert xs.watch_count(1) == 0


def test_introduce_and_release_fire_special_watches(xs, events):
    xs.watch(DOM0, "c", "@introduceDomain", "intro")
    xs.watch(DOM0, "c", "@releaseDomain", "rel")
    assert events.take() == [("@introduceDomain", "intro"), ("@releaseDomain", "rel")]
    xs.write(DOM0, "/tool/x", b"")
    assert events.take() == []
    xs.introduce_domain(3)
    assert events.take() == [("@introduceDomain", "intro")]
    xs.release_domain(3)
    assert events.take() == [("@releaseDomain", "rel")]


def test_release_domain_cleans_up(xs, events):
    xs.write(D1, "data/a/b", b"")
    xs.write(DOM0, "/tool/shared", b"")
    xs.set_perms(DOM0, "/tool/shared", [(0, "n"), (1, "b")])
    xs.write(D1, "/tool/shared/owned", b"")
    xs.watch(D1, "c", "data", "t")
    tx = xs.transaction_start(D1)
    assert xs.node_count(1) > 0
    xs.rm(DOM0, "/local/domain/1")
    xs.release_domain(1)
    assert xs.node_count(1) == 0
    assert xs.watch_count(1) == 0
    assert errno_of(xs.transaction_end, D1, tx, True) == errno.ENOENT
    # a later domain reusing the id inherits nothing
    assert xs.get_perms(DOM0, "/tool/shared") == [(0, "n")]
    assert xs.get_perms(DOM0, "/tool/shared/owned") == [(0, "n")]
    assert errno_of(xs.read, D1, "/tool/shared") == errno.EACCES
    events.take()
    xs.write(DOM0, "/local/domain/1/data/x", b"")
    assert events.take() == []


# -- no request walks the whole tree or every watch (issue "Hold the boundaries") -----------
class NoScan(dict):
    """A table that fails the test when anything walks or copies it."""

    def _scan(self, *args):
        raise AssertionError("a whole table was walked")

    __iter__ = items = values = keys = copy = _scan


def test_a_domus_requests_cost_no_walk_of_other_domains_nodes_or_watches(events):
    xs = make_store(events)
    for d in range(3, 40):                  # other domains, their nodes and watches
        xs.write(DOM0, f"/local/domain/{d}/data/x", b"")
        for i in range(20):
            xs.watch(Caller(d), f"c{d}", f"/local/domain/{d}/data/x/w{i}", "t")
    xs.watch(D1, "mine", "data/sub/deep/below", "b")
    events.take()
    xs._live.nodes = NoScan(xs._live.nodes)
    xs._watches = NoScan(xs._watches)
    tx = xs.transaction_start(D1)           # nothing copied
    xs.write(D1, "data/sub/a", b"1", tx)
    assert xs.read(D1, "data/sub/a", tx) == b"1"
    xs.transaction_end(D1, tx, commit=True)
    xs.rm(D1, "data/sub")                   # finds the watch below it without a walk
    assert ("data/sub/deep/below", "b") in events.take("mine")
    xs.unwatch(D1, "mine", "data/sub/deep/below", "b")
    xs.watch(D1, "mine", "data", "d")
    xs.drop_connection("mine")
    assert xs.watch_count(1) == 0


# -- the contract: counts seen from outside, both sides of each bound ---------

def test_unwatch_gives_the_watch_back_to_the_quota(events):
    xs = make_store(events, watches=1)
    xs.watch(D1, "c", "data/a", "t")
    assert xs.watch_count(1) == 1
    xs.unwatch(D1, "c", "data/a", "t")
    assert xs.watch_count(1) == 0 and xs.watches() == []
    xs.watch(D1, "c", "data/b", "t")
    assert xs.watch_count(1) == 1 and xs.watch_count(2) == 0
    assert errno_of(xs.watch, D1, "c", "data/c", "t") == errno.EDQUOT


def test_a_watch_dropped_by_one_token_leaves_the_others_on_the_path(xs, events):
    xs.watch(D1, "c", "data", "a")
    xs.watch(D1, "c", "data", "b")
    xs.unwatch(D1, "c", "data", "a")
    events.take()
    xs.write(D1, "data/x", b"")
    assert events.take() == [("data/x", "b")]
    assert [(w.path, w.token, w.relative, w.domid) for w in xs.watches()] == [
        ("/local/domain/1/data", "b", True, 1)]


def test_open_transactions_are_counted_per_domain(xs):
    assert xs.open_transactions(1) == 0
    t1 = xs.transaction_start(D1)
    t2 = xs.transaction_start(D1)
    xs.transaction_start(D2)
    assert (xs.open_transactions(1), xs.open_transactions(2), xs.open_transactions(0)) == (2, 1, 0)
    xs.transaction_end(D1, t1, commit=False)
    xs.transaction_end(D1, t2, commit=True)
    assert (xs.open_transactions(1), xs.open_transactions(2)) == (0, 1)
    xs.release_domain(2)
    assert xs.open_transactions(2) == 0


def test_the_transaction_quota_is_exact(events):
    xs = make_store(events, transactions=1)
    t = xs.transaction_start(D1)
    with pytest.raises(XenStoreError) as err:
        xs.transaction_start(D1)
    assert err.value.errno == errno.EDQUOT and "d1 has 1 transactions open" in err.value.message
    xs.transaction_end(D1, t, commit=True)
    xs.transaction_start(D1)


def test_nodes_is_a_read_only_view_of_the_live_tree(xs):
    xs.write(D1, "data/k", b"v")
    nodes = xs.nodes()
    node = nodes["/local/domain/1/data/k"]
    assert (node.value, node.perms, node.owner, node.children) == (b"v", ((1, "n"),), 1, frozenset())
    assert "k" in nodes["/local/domain/1/data"].children
    with pytest.raises(TypeError):
        nodes["/x"] = node
    xs.rm(D1, "data/k")
    assert "/local/domain/1/data/k" not in nodes           # live, not a copy


def test_a_transaction_that_replaces_an_owned_node_commits_at_the_quota(events):
    xs = make_store(events, nodes=3)
    xs.write(D1, "data/a", b"")
    xs.write(D1, "data/b", b"")
    assert xs.node_count(1) == 3                           # at the quota
    tx = xs.transaction_start(D1)
    xs.rm(D1, "data/a", tx)
    xs.write(D1, "data/c", b"", tx)                        # one out, one in: no growth
    xs.transaction_end(D1, tx, commit=True)
    assert xs.node_count(1) == 3 and xs.exists("/local/domain/1/data/c")
    assert not xs.exists("/local/domain/1/data/a")


def test_a_transaction_may_fill_the_quota_exactly_but_not_pass_it(events):
    xs = make_store(events, nodes=3)
    tx = xs.transaction_start(D1)
    xs.write(D1, "data/a", b"", tx)
    xs.write(D1, "data/b", b"", tx)
    xs.transaction_end(D1, tx, commit=True)
    assert xs.node_count(1) == 3
    xs.rm(D1, "data/b")
    tx = xs.transaction_start(D1)
    xs.write(D1, "data/x", b"", tx)
    xs.write(DOM0, "/tool/y", b"")                         # outside what the transaction saw,
    xs.set_perms(DOM0, "/tool/y", [(1, "n")])              # dom0 fills d1's last place
    assert xs.node_count(1) == 3
    with pytest.raises(XenStoreError) as err:
        xs.transaction_end(D1, tx, commit=True)
    assert err.value.errno == errno.EDQUOT
    assert f"past its quota of 3 nodes" in err.value.message
    assert xs.node_count(1) == 3 and xs.open_transactions(1) == 0


def test_the_node_quota_is_exact(events):
    xs = make_store(events, nodes=2)
    xs.write(D1, "data/a", b"")                            # 2 of 2
    with pytest.raises(XenStoreError) as err:
        xs.write(D1, "data/b", b"")
    assert err.value.errno == errno.EDQUOT and "d1 owns 2 nodes; the quota is 2" in err.value.message


def test_the_entry_size_quota_is_exact_and_names_the_sizes(events):
    xs = make_store(events, entry_size=4)
    xs.write(D1, "data/v", b"1234")
    with pytest.raises(XenStoreError) as err:
        xs.write(D1, "data/v", b"12345")
    assert err.value.errno == errno.EDQUOT and "holds 4 bytes at most, not 5" in err.value.message
    xs.write(DOM0, "/local/domain/1/data/v", b"12345")      # privileged: only the payload limit
    assert xs.read(D1, "data/v") == b"12345"


def test_the_perm_list_quota_is_exact(events):
    xs = make_store(events, perms=2)
    xs.write(D1, "data/n", b"")
    xs.set_perms(D1, "data/n", [(1, "n"), (2, "r")])
    assert xs.get_perms(D1, "data/n") == [(1, "n"), (2, "r")]
    xs.set_perms(DOM0, "/local/domain/1/data/n", [(1, "n"), (2, "r"), (3, "w")])
    assert xs.get_perms(D1, "data/n") == [(1, "n"), (2, "r"), (3, "w")]


@pytest.mark.parametrize("perms, words", [
    ([(1, "x")], "permission 'x'"), ([(1, "rw")], "permission 'rw'"), ([(1, "")], "permission ''"),
    ([(-1, "r")], "invalid domain -1"), ([(0x7FF0, "r")], "invalid domain 32752"),
    ([], "at least the owner")])
def test_bad_permission_lists_say_why(xs, perms, words):
    with pytest.raises(XenStoreError) as err:
        xs.set_perms(DOM0, "/tool", perms)
    assert err.value.errno == errno.EINVAL and words in err.value.message
    assert xs.get_perms(DOM0, "/tool") == [(0, "n")]


def test_the_highest_ordinary_domid_may_be_named_in_a_permission(xs):
    xs.set_perms(DOM0, "/tool", [(0, "n"), (0x7FEF, "r")])
    assert xs.get_perms(DOM0, "/tool") == [(0, "n"), (0x7FEF, "r")]


def test_a_watch_token_may_be_a_whole_payload_but_no_more(xs):
    xs.watch(D1, "c", "data", "t" * 4096)
    assert errno_of(xs.watch, D1, "c", "data", "t" * 4097) == errno.EINVAL


def test_a_relative_path_may_be_2048_characters_but_no_more(events):
    xs = make_store(events)
    name = "data/" + "x" * (2048 - 5)
    xs.write(D1, name, b"")
    assert xs.read(D1, name) == b""
    with pytest.raises(XenStoreError) as err:
        xs.write(D1, name + "y", b"")
    assert err.value.errno == errno.EINVAL and "2048 characters at most" in err.value.message


def test_an_absolute_path_may_be_path_max_characters_but_no_more(events):
    xs = make_store(events, path_max=40)
    path = "/tool/" + "x" * 34
    xs.write(DOM0, path, b"")
    assert xs.exists(path)
    with pytest.raises(XenStoreError) as err:
        xs.write(DOM0, path + "y", b"")
    assert err.value.errno == errno.EINVAL and "40 characters at most" in err.value.message


def test_special_watches_are_named_and_privileged(xs, events):
    with pytest.raises(XenStoreError) as err:
        xs.watch(DOM0, "c", "@bogus", "t")
    assert err.value.errno == errno.EINVAL and "unknown special watch '@bogus'" in err.value.message
    with pytest.raises(XenStoreError) as err:
        xs.watch(D1, "c", "@releaseDomain", "t")
    assert err.value.errno == errno.EACCES
    xs.watch(DOM0, "c", "@releaseDomain", "t")
    assert [(w.path, w.relative) for w in xs.watches()] == [("@releaseDomain", False)]
    assert events.take() == [("@releaseDomain", "t")]
    xs.introduce_domain(5)
    assert events.take() == []
    xs.release_domain(5)
    assert events.take() == [("@releaseDomain", "t")]


def test_the_root_cannot_be_removed(xs):
    with pytest.raises(XenStoreError) as err:
        xs.rm(DOM0, "/")
    assert err.value.errno == errno.EINVAL and xs.exists("/")


def test_a_refused_write_names_the_verb(xs):
    xs.write(DOM0, "/tool/ro", b"")
    xs.set_perms(DOM0, "/tool/ro", [(0, "r")])
    with pytest.raises(XenStoreError) as err:
        xs.write(D1, "/tool/ro", b"x")
    assert err.value.errno == errno.EACCES and err.value.message == "d1 may not write /tool/ro"
    xs.set_perms(DOM0, "/tool/ro", [(0, "w")])
    with pytest.raises(XenStoreError) as err:
        xs.read(D1, "/tool/ro")
    assert err.value.errno == errno.EACCES and err.value.message == "d1 may not read /tool/ro"


def test_a_transaction_of_another_domain_is_enoent(xs):
    tx = xs.transaction_start(D2)
    with pytest.raises(XenStoreError) as err:
        xs.read(D1, "data", tx)
    assert err.value.errno == errno.ENOENT and err.value.message == f"d1 has no transaction {tx}"
    assert errno_of(xs.transaction_end, D1, tx, True) == errno.ENOENT
    assert xs.open_transactions(2) == 1


def test_transaction_ids_wrap_past_u32_and_skip_ones_in_use(xs):
    import itertools
    first = xs.transaction_start(D1)
    assert first == 1
    xs._tx_ids = itertools.count(0xFFFFFFFF)
    assert xs.transaction_start(D1) == 0xFFFFFFFF
    assert xs.transaction_start(D1) == 2            # 0 is "no transaction"; 1 is open


def test_release_hands_a_domains_nodes_to_dom0_and_drops_its_entries(xs):
    xs.write(D1, "data/mine", b"")
    xs.set_perms(D1, "data/mine", [(1, "r"), (2, "w"), (1, "b")])
    xs.write(DOM0, "/tool/shared", b"")
    xs.set_perms(DOM0, "/tool/shared", [(2, "r"), (1, "w"), (3, "r")])
    xs.release_domain(1)
    assert xs.get_perms(DOM0, "/local/domain/1/data/mine") == [(0, "r"), (2, "w")]
    assert xs.get_perms(DOM0, "/tool/shared") == [(2, "r"), (3, "r")]
    assert xs.node_count(1) == 0


def test_a_missing_node_says_why_in_words(xs):
    with pytest.raises(XenStoreError) as err:
        xs.read(D1, "data/nope")
    assert err.value.errno == errno.ENOENT
    assert err.value.message == "/local/domain/1/data/nope does not exist"
    with pytest.raises(XenStoreError) as err:
        xs.read(D1, "/local/domain/2/data/nope")
    assert err.value.errno == errno.EACCES
    assert err.value.message == "d1 may not read /local/domain/2/data/nope"


def test_mkdir_in_a_transaction_is_its_own_until_commit(xs, events):
    xs.watch(DOM0, "c", "/tool", "t")
    events.take()
    tx = xs.transaction_start(D1)
    xs.mkdir(D1, "data/dir", tx)
    assert xs.read(D1, "data/dir", tx) == b"" and not xs.exists("/local/domain/1/data/dir")
    xs.mkdir(D1, "data/dir", tx)                       # again, in the transaction: fine
    xs.transaction_end(D1, tx, commit=True)
    assert xs.read(D1, "data/dir") == b""
    tx = xs.transaction_start(DOM0)
    xs.mkdir(DOM0, "/tool/d", tx)
    assert events.take() == []
    xs.transaction_end(DOM0, tx, commit=False)
    assert not xs.exists("/tool/d") and events.take() == []


def test_mkdir_of_an_existing_node_needs_write_on_it(xs):
    xs.write(DOM0, "/tool/ro", b"keep")
    xs.set_perms(DOM0, "/tool/ro", [(0, "r")])
    with pytest.raises(XenStoreError) as err:
        xs.mkdir(D1, "/tool/ro")
    assert err.value.errno == errno.EACCES and err.value.message == "d1 may not write /tool/ro"
    xs.set_perms(DOM0, "/tool/ro", [(0, "w")])
    xs.mkdir(D1, "/tool/ro")
    assert xs.read(DOM0, "/tool/ro") == b"keep"


def test_two_permission_changes_in_a_transaction_tell_every_reader_of_either(xs, events):
    xs.write(DOM0, "/tool/n", b"")
    xs.watch(D1, "c1", "/tool/n", "one")
    xs.watch(D2, "c2", "/tool/n", "two")
    events.take()
    tx = xs.transaction_start(DOM0)
    xs.set_perms(DOM0, "/tool/n", [(0, "n"), (1, "r")], tx)
    xs.set_perms(DOM0, "/tool/n", [(0, "n"), (2, "r")], tx)
    xs.transaction_end(DOM0, tx, commit=True)
    assert sorted(events.take()) == [("/tool/n", "one"), ("/tool/n", "two")]


def test_a_node_removed_twice_in_a_transaction_fires_for_both_subtrees(xs, events):
    xs.write(DOM0, "/tool/a/x", b"")
    xs.watch(DOM0, "c", "/tool/a/x", "x")
    xs.watch(DOM0, "c", "/tool/a/y", "y")
    events.take()
    tx = xs.transaction_start(DOM0)
    xs.rm(DOM0, "/tool/a", tx)                         # takes /tool/a/x
    xs.write(DOM0, "/tool/a/y", b"", tx)
    xs.rm(DOM0, "/tool/a", tx)                         # takes /tool/a/y
    xs.transaction_end(DOM0, tx, commit=True)
    # y fires for its own write and for the removal; x only for the removal
    assert sorted(events.take()) == [("/tool/a/x", "x"), ("/tool/a/y", "y"), ("/tool/a/y", "y")]


def test_a_node_written_then_removed_in_a_transaction_fires_below_it(xs, events):
    xs.write(DOM0, "/tool/a/x", b"")
    xs.watch(DOM0, "c", "/tool/a/x", "x")
    events.take()
    tx = xs.transaction_start(DOM0)
    xs.write(DOM0, "/tool/a", b"v", tx)
    xs.rm(DOM0, "/tool/a", tx)
    xs.transaction_end(DOM0, tx, commit=True)
    assert events.take() == [("/tool/a/x", "x")]


def test_a_transaction_counts_what_it_removed_against_its_quota(events):
    xs = make_store(events, nodes=3)
    xs.write(D1, "data/a", b"")
    xs.write(D1, "data/b", b"")
    tx = xs.transaction_start(D1)
    xs.rm(D1, "data/a", tx)
    xs.write(D1, "data/x", b"", tx)                    # back at 3 inside the transaction
    with pytest.raises(XenStoreError) as err:
        xs.write(D1, "data/y", b"", tx)
    assert err.value.errno == errno.EDQUOT


def test_a_subtree_removed_earlier_in_a_transaction_keeps_its_own_permissions(xs, events):
    xs.write(DOM0, "/tool/a/x", b"")
    xs.set_perms(DOM0, "/tool/a/x", [(0, "n"), (1, "r")])       # d1 may read x, not /tool/a
    xs.watch(D1, "c", "/tool/a/x", "x")
    events.take()
    tx = xs.transaction_start(DOM0)
    xs.rm(DOM0, "/tool/a", tx)
    xs.write(DOM0, "/tool/a", b"", tx)
    xs.rm(DOM0, "/tool/a", tx)
    xs.transaction_end(DOM0, tx, commit=True)
    assert events.take() == [("/tool/a/x", "x")]


def test_removing_a_node_fires_only_watches_below_it_not_beside_it(xs, events):
    xs.write(DOM0, "/tool/a/x", b"")
    xs.write(DOM0, "/tool/ab", b"")
    for path, token in (("/tool/a/x", "x"), ("/tool/a/y", "y"), ("/tool/ab", "ab"), ("/tool/a", "a")):
        xs.watch(DOM0, "c", path, token)
    xs.unwatch(DOM0, "c", "/tool/a/y", "y")
    events.take()
    xs.rm(DOM0, "/tool/a")
    assert sorted(events.take()) == [("/tool/a", "a"), ("/tool/a/x", "x")]


def test_removing_a_top_node_fires_the_root_watch_and_the_ones_below(xs, events):
    xs.write(DOM0, "/top/deep", b"")
    xs.watch(DOM0, "c", "/", "root")
    xs.watch(DOM0, "c", "/top/deep", "deep")
    events.take()
    xs.rm(DOM0, "/top")
    assert sorted(events.take()) == [("/top", "root"), ("/top/deep", "deep")]


def test_a_relative_watch_below_a_removed_node_gets_a_relative_path(xs, events):
    xs.write(D1, "data/sub/leaf", b"")
    xs.watch(D1, "c", "data/sub/leaf", "t")
    events.take()
    xs.rm(D1, "data/sub")
    assert events.take() == [("data/sub/leaf", "t")]


def test_a_target_domain_has_its_targets_rights(xs):
    from xenlab.hypervisor.xenstore import access
    dm = Caller(2, False, 1)
    assert access(((1, "n"),), dm) == "b"                   # owned by its target
    assert access(((0, "n"), (1, "w")), dm) == "w"          # its target's entry
    assert access(((0, "n"), (2, "r"), (1, "w")), dm) == "r"  # the first entry that names either
    assert access(((0, "r"), (3, "w")), dm) == "r"          # neither: the default
    assert access(((0, "n"),), Caller(0, True)) == "b"


def test_an_unprivileged_creator_owns_what_it_creates_with_the_parents_other_entries(xs):
    xs.write(DOM0, "/tool/shared", b"")
    xs.set_perms(DOM0, "/tool/shared", [(0, "w"), (2, "r")])
    xs.write(D1, "/tool/shared/a/b", b"")
    assert xs.get_perms(DOM0, "/tool/shared/a") == [(1, "w"), (2, "r")]
    assert xs.get_perms(DOM0, "/tool/shared/a/b") == [(1, "w"), (2, "r")]
    assert xs.node_count(1) == 3 and xs.read(D1, "/tool/shared/a") == b""   # with its data/


def test_a_transaction_that_adds_nothing_commits_even_past_the_quota(events):
    xs = make_store(events, nodes=2)
    for name in ("x", "y"):                              # dom0 gives d1 more than its quota
        xs.write(DOM0, f"/local/domain/1/data/{name}", b"")
        xs.set_perms(DOM0, f"/local/domain/1/data/{name}", [(1, "n")])
    assert xs.node_count(1) == 3
    tx = xs.transaction_start(D1)
    xs.write(D1, "data/x", b"new value", tx)
    xs.transaction_end(D1, tx, commit=True)
    assert xs.read(D1, "data/x") == b"new value"


def test_transaction_ids_start_again_at_1_after_wrapping(xs):
    import itertools
    xs._tx_ids = itertools.count(0xFFFFFFFF)
    assert xs.transaction_start(D1) == 0xFFFFFFFF
    assert xs.transaction_start(D1) == 1


def test_a_node_readable_but_not_writable_may_be_listed(xs):
    xs.write(DOM0, "/tool/ro/child", b"")
    xs.set_perms(DOM0, "/tool/ro", [(0, "r")])
    assert xs.directory(D1, "/tool/ro") == ["child"]
    assert xs.get_perms(D1, "/tool/ro") == [(0, "r")]


def test_get_perms_in_a_transaction_sees_its_own_change(xs):
    xs.write(D1, "data/n", b"")
    tx = xs.transaction_start(D1)
    xs.set_perms(D1, "data/n", [(1, "n"), (2, "r")], tx)
    assert xs.get_perms(D1, "data/n", tx) == [(1, "n"), (2, "r")]
    assert xs.get_perms(D1, "data/n") == [(1, "n")]


def test_conflicts_and_missing_watches_say_what(xs):
    xs.write(D1, "data/a", b"")
    tx = xs.transaction_start(D1)
    xs.read(D1, "data/a", tx)
    xs.write(D1, "data/a", b"changed")
    with pytest.raises(XenStoreError) as err:
        xs.transaction_end(D1, tx, commit=True)
    assert err.value.message == (f"transaction {tx} conflicts with changes to /local/domain/1/data/a; "
                                 f"retry it")
    with pytest.raises(XenStoreError) as err:
        xs.unwatch(D1, "c", "data", "tok")
    assert err.value.message == "no watch on data with token 'tok'"


def test_set_perms_refusals_say_whose_node_it_is(xs):
    xs.write(DOM0, "/tool/n", b"")
    xs.set_perms(DOM0, "/tool/n", [(0, "r")])
    with pytest.raises(XenStoreError) as err:
        xs.set_perms(D1, "/tool/n", [(1, "n")])
    assert (err.value.errno, err.value.message) == (
        errno.EACCES, "/tool/n: only its owner d0 may set its permissions")
    xs.write(D1, "data/mine", b"")
    with pytest.raises(XenStoreError) as err:
        xs.set_perms(D1, "data/mine", [(2, "b")])
    assert (err.value.errno, err.value.message) == (
        errno.EPERM, "/local/domain/1/data/mine: d1 may not change the owner to d2")


def test_refusals_word_for_word(events):
    xs = make_store(events, watches=1, perms=2)
    xs.watch(D1, "c", "data", "t")
    cases = [
        (lambda: xs.set_perms(DOM0, "/tool", []), errno.EINVAL,
         "a permission list needs at least the owner entry"),
        (lambda: xs.set_perms(DOM0, "/tool", [(0, "x")]), errno.EINVAL,
         "permission 'x': use one of n, r, w, b"),
        (lambda: xs.set_perms(DOM0, "/tool", [(0x7FF0, "r")]), errno.EINVAL,
         "permission for invalid domain 32752"),
        (lambda: xs.set_perms(D1, "data", [(1, "n"), (2, "r"), (3, "r")]), errno.EDQUOT,
         "a permission list has 2 entries at most"),
        (lambda: xs.watch(D1, "c", "@releaseDomain", "t"), errno.EACCES,
         "@releaseDomain may only be watched by a privileged domain"),
        (lambda: xs.rm(DOM0, "/"), errno.EINVAL, "the root node cannot be removed"),
        (lambda: xs.watch(D1, "c", "data", "t" * 4097), errno.EINVAL,
         "a watch token is 4096 bytes at most"),
        (lambda: xs.watch(D1, "c", "data", "t"), errno.EEXIST, "already watching data with token 't'"),
        (lambda: xs.watch(D1, "d", "data", "u"), errno.EDQUOT, "d1 has 1 watches, the most allowed"),
        (lambda: xs.read(D1, "rel//x"), errno.EINVAL,
         "invalid path '/local/domain/1/rel//x': use [A-Za-z0-9-/_@], no empty components"),
        (lambda: xs.write(DOM0, "/tool/big", b"x" * 4097), errno.E2BIG,
         "/tool/big: a value is 4096 bytes at most, not 4097"),
    ]
    for call, code, words in cases:
        with pytest.raises(XenStoreError) as err:
            call()
        assert (err.value.errno, err.value.message) == (code, words)


def test_the_initial_nodes_are_empty_and_an_empty_path_is_invalid(xs):
    assert [xs.read(DOM0, p) for p in ("/", "/local", "/local/domain", "/vm", "/tool")] == [b""] * 5
    with pytest.raises(XenStoreError) as err:
        xs.read(D1, "")
    assert (err.value.errno, err.value.message) == (errno.EINVAL, "invalid path ''")


def test_a_refused_create_names_the_ancestor_it_needed(xs):
    with pytest.raises(XenStoreError) as err:
        xs.write(D1, "/tool/new/deeper", b"")
    assert (err.value.errno, err.value.message) == (errno.EACCES, "d1 may not write /tool")
