"""XenStore: the tree, permissions, watches and transactions (docs/misc/xenstore.txt).

A pure core: requests come in as method calls made as a ``Caller``; watch
events leave through the injected ``fire(conn, path, token)`` callback. The
behaviour mirrors C xenstored wherever xenstore.txt leaves it open:

* a node's permissions are a list whose first entry names the owner and the
  access of every domain not listed; the owner and privileged domains have
  full access;
* a new node inherits its parent's permissions, but an unprivileged creator
  becomes its owner;
* a missing node reads as EACCES rather than ENOENT when the caller may not
  read its nearest existing ancestor, so that existence does not leak;
* quotas apply to unprivileged domains only; nodes count against their owner.

Nodes are immutable and replaced on change. A transaction copies nothing
when it starts: it reads a node from the live tree the first time it touches
it and keeps that version (as C xenstored records each accessed node's
generation), and conflict detection is an identity check of every node it
touched against the live tree at commit. No request walks a table that
grows with other domains: watches are indexed by path (sorted, for the
watches below a removed node) and by connection.
"""
from __future__ import annotations

import bisect
import errno
import itertools
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from xenlab.hypervisor.caller import Caller
from xenlab.xen import abi
from xenlab.xen.errors import XenStoreError

Perm = tuple[int, str]
Perms = tuple[Perm, ...]
FireFn = Callable[[object, str, str], None]

# xen/include/public/io/xs_wire.h
XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_REL_PATH_MAX = 2048

INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"
SPECIAL_WATCHES = (INTRODUCE_DOMAIN, RELEASE_DOMAIN)

DOM0 = 0
PERM_LETTERS = "nrwb"
_VALID_PATH = re.compile(r"[A-Za-z0-9\-/_@]+")
_MAX_TX_ID = 0xFFFFFFFF


@dataclass(frozen=True)
class XenStoreQuotas:
    nodes: int = 1000          # nodes a domain owns (xenstored quota-nr-entries)
    watches: int = 128         # per domain (quota-nr-watches-per-domain)
    transactions: int = 10     # open per domain (quota-max-transaction)
    entry_size: int = 2048     # bytes per value (quota-max-entry-size)
    path_max: int = 3072       # XENSTORE_ABS_PATH_MAX
    perms: int = 5             # entries in a permission list (quota-nr-perms)
    # Watch connections (WatchStreams) a domain may hold open at once; a
    # domU has exactly one xenstore connection in Xen, Domain-0 one per tool.
    watch_streams: int = 8
    privileged_watch_streams: int = 128
    # Bytes of watch events (and acks) queued, not yet read, over all of a
    # domain's streams: xenstored's per-domain memory quota (quota-memory,
    # hard 2.5 MB) counts the watch events queued for the domain.
    watch_event_bytes: int = 2 * 1024 * 1024 + 512 * 1024
    privileged_watch_event_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class Node:
    value: bytes
    perms: Perms
    children: frozenset[str] = frozenset()

    @property
    def owner(self) -> int:
        return self.perms[0][0]


@dataclass(frozen=True)
class Watch:
    conn: object
    domid: int
    privileged: bool
    path: str           # canonical path, or a special watch name
    token: str
    relative: bool      # registered relative to the domain's home: events come back relative
    target: int | None = None   # the watcher's SET_TARGET domain


@dataclass
class _Change:
    """One watch event source: `path` changed; a watcher sees it if it may
    read the node under any of `perms` (old and new ones for set_perms)."""
    path: str
    perms: list[Perms]
    removed: dict[str, Node] | None = None   # rm: the removed subtree, for descendant watches

    def merge(self, other: "_Change") -> None:
        self.perms.extend(p for p in other.perms if p not in self.perms)
        if other.removed:
            self.removed = {**(self.removed or {}), **other.removed}


# -- permissions ---------------------------------------------------------------

def access(perms: Perms, caller: Caller) -> str:
    """The access letter a caller has on a node, as xenstored's perm_for_conn:
    a domain with a target (XS_SET_TARGET) also has that domain's rights."""
    if caller.privileged or perms[0][0] in (caller.domid, caller.target):
        return "b"
    for domid, perm in perms[1:]:
        if domid in (caller.domid, caller.target):
            return perm
    return perms[0][1]


def may_read(perms: Perms, caller: Caller) -> bool:
    return access(perms, caller) in "rb"


def may_write(perms: Perms, caller: Caller) -> bool:
    return access(perms, caller) in "wb"


def inherit(parent: Perms, caller: Caller) -> Perms:
    """Permissions of a node `caller` creates under `parent` (xenstored's
    create_node: a copy of the parent's, owner replaced by an unprivileged creator)."""
    if caller.privileged:
        return parent
    return ((caller.domid, parent[0][1]),) + parent[1:]


# -- paths --------------------------------------------------------------------

def home(domid: int) -> str:
    return f"/local/domain/{domid}"


def parent_of(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


def ancestors_and_self(path: str) -> Iterator[str]:
    while True:
        yield path
        if path == "/":
            return
        path = parent_of(path)


def _join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


# -- the tree -----------------------------------------------------------------

class _Tree:
    """A node table with per-owner node counts."""

    def __init__(self, nodes: dict[str, Node], owned: Counter) -> None:
        self.nodes = nodes
        self.owned = owned

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def set(self, path: str, node: Node) -> None:
        old = self.nodes.get(path)
        if old is not None:
            self.owned[old.owner] -= 1
        self.owned[node.owner] += 1
        self.nodes[path] = node

    def delete(self, path: str) -> None:
        old = self.nodes.pop(path)
        self.owned[old.owner] -= 1

    def subtree(self, path: str) -> dict[str, Node]:
        found: dict[str, Node] = {}
        stack = [path]
        while stack:
            p = stack.pop()
            node = self.get(p)
            if node is None:
                continue
            found[p] = node
            stack.extend(_join(p, name) for name in node.children)
        return found


class _TxTree(_Tree):
    """A transaction's view: the live tree as the transaction first saw each
    node, under the transaction's own changes. ``touched`` holds the first
    version of every node it touched (None when absent), ``nodes`` its
    changes (None when removed), ``changed`` which nodes those are."""

    def __init__(self, live: _Tree) -> None:
        super().__init__({}, Counter(live.owned))
        self.live = live
        self.touched: dict[str, Node | None] = {}
        self.changed: set[str] = set()

    def get(self, path: str) -> Node | None:
        if path in self.nodes:
            return self.nodes[path]
        if path not in self.touched:
            self.touched[path] = self.live.get(path)
        return self.touched[path]

    def set(self, path: str, node: Node) -> None:
        old = self.get(path)
        if old is not None:
            self.owned[old.owner] -= 1
        self.owned[node.owner] += 1
        self.nodes[path] = node
        self.changed.add(path)

    def delete(self, path: str) -> None:
        old = self.get(path)
        self.owned[old.owner] -= 1
        self.nodes[path] = None
        self.changed.add(path)


@dataclass
class _Transaction:
    id: int
    caller: Caller
    tree: _TxTree
    changes: dict[str, _Change] = field(default_factory=dict)

    def record(self, change: _Change) -> None:
        known = self.changes.get(change.path)
        if known is None:
            self.changes[change.path] = change
        else:
            known.merge(change)


# -- the store ---------------------------------------------------------------

class XenStore:
    def __init__(self, fire: FireFn, quotas: XenStoreQuotas = XenStoreQuotas()) -> None:
        self._fire = fire
        self.quotas = quotas
        self._live = _Tree({}, Counter())
        # /tool/xenstored is xenstored's own, made at its start (core.c's
        # manual_node); /local and /vm stand for what the toolstack makes.
        for path in ("/", "/local", "/local/domain", "/vm", "/tool", "/tool/xenstored"):
            self._add_child(self._live, path, Node(b"", ((DOM0, "n"),)))
        self._transactions: dict[int, _Transaction] = {}
        self._tx_ids = itertools.count(1)
        self._watches: dict[str, list[Watch]] = {}
        self._watched_paths: list[str] = []                # the keys of _watches, sorted
        self._by_conn: dict[object, list[Watch]] = {}
        self._watch_count: Counter = Counter()

    # -- requests on the tree ------------------------------------------------
    def read(self, caller: Caller, path: str, tx: int = 0) -> bytes:
        path = self._canonical(caller, path)
        return self._get(self._tree(caller, tx), caller, path, "r").value

    def write(self, caller: Caller, path: str, value: bytes, tx: int = 0) -> None:
        path = self._canonical(caller, path)
        value = bytes(value)
        if len(value) > XENSTORE_PAYLOAD_MAX:
            # xs_wire.h: no message carries more, for any caller.
            raise XenStoreError(errno.E2BIG, f"{path}: a value is {XENSTORE_PAYLOAD_MAX} bytes "
                                             f"at most, not {len(value)}")
        if not caller.privileged and len(value) > self.quotas.entry_size:
            raise XenStoreError(errno.EDQUOT, f"{path}: a value holds {self.quotas.entry_size} "
                                              f"bytes at most, not {len(value)}")
        tree = self._tree(caller, tx)
        node = tree.get(path)
        if node is None:
            node = self._create(tree, caller, path, value)
        else:
            self._require(caller, path, node, "w")
            node = replace(node, value=value)
            tree.set(path, node)
        self._publish(caller, tx, _Change(path, [node.perms]))

    def mkdir(self, caller: Caller, path: str, tx: int = 0) -> None:
        path = self._canonical(caller, path)
        tree = self._tree(caller, tx)
        node = tree.get(path)
        if node is not None:
            # xenstored's do_mkdir: an existing node is fine, if writable, and fires nothing.
            self._require(caller, path, node, "w")
            return
        node = self._create(tree, caller, path, b"")
        self._publish(caller, tx, _Change(path, [node.perms]))

    def rm(self, caller: Caller, path: str, tx: int = 0) -> None:
        path = self._canonical(caller, path)
        if path == "/":
            raise XenStoreError(errno.EINVAL, "the root node cannot be removed")
        tree = self._tree(caller, tx)
        node = tree.get(path)
        if node is None:
            missing = self._missing(tree, caller, path)
            if missing.errno == errno.ENOENT and tree.get(parent_of(path)) is not None:
                # xenstored's do_rm: "Didn't exist already? Fine, if parent exists."
                return
            raise missing
        self._require(caller, path, node, "w")
        removed = tree.subtree(path)
        for p in removed:
            tree.delete(p)
        parent_path = parent_of(path)
        parent = tree.get(parent_path)
        tree.set(parent_path, replace(parent, children=parent.children - {basename(path)}))
        self._publish(caller, tx, _Change(path, [node.perms], removed))

    def directory(self, caller: Caller, path: str, tx: int = 0) -> list[str]:
        path = self._canonical(caller, path)
        return sorted(self._get(self._tree(caller, tx), caller, path, "r").children)

    def get_perms(self, caller: Caller, path: str, tx: int = 0) -> list[Perm]:
        path = self._canonical(caller, path)
        return list(self._get(self._tree(caller, tx), caller, path, "r").perms)

    def set_perms(self, caller: Caller, path: str, perms: Iterable[Sequence], tx: int = 0) -> None:
        path = self._canonical(caller, path)
        new = self._validate_perms(caller, perms)
        tree = self._tree(caller, tx)
        node = self._get(tree, caller, path, "r")
        if not caller.privileged and node.owner not in (caller.domid, caller.target):
            raise XenStoreError(errno.EACCES, f"{path}: only its owner d{node.owner} "
                                              f"may set its permissions")
        if not caller.privileged and new[0][0] != node.owner:
            # xenstored's do_set_perms: unprivileged domains may not give nodes away.
            raise XenStoreError(errno.EPERM, f"{path}: d{caller.domid} may not change "
                                             f"the owner to d{new[0][0]}")
        tree.set(path, replace(node, perms=new))
        self._publish(caller, tx, _Change(path, [node.perms, new]))

    # -- transactions ------------------------------------------------------
    def transaction_start(self, caller: Caller) -> int:
        open_here = sum(1 for t in self._transactions.values() if t.caller.domid == caller.domid)
        if not caller.privileged and open_here >= self.quotas.transactions:
            raise XenStoreError(errno.EDQUOT, f"d{caller.domid} has {open_here} transactions "
                                              f"open, the most allowed")
        tx = self._new_tx_id()
        self._transactions[tx] = _Transaction(tx, caller, _TxTree(self._live))
        return tx

    def transaction_end(self, caller: Caller, tx: int, commit: bool) -> None:
        t = self._transaction(caller, tx)
        del self._transactions[tx]
        if not commit:
            return
        conflicts = [p for p, seen in t.tree.touched.items() if self._live.get(p) is not seen]
        if conflicts:
            raise XenStoreError(errno.EAGAIN, f"transaction {tx} conflicts with changes to "
                                              f"{sorted(conflicts)[0]}; retry it")
        self._check_commit_quota(t)
        for path in t.tree.changed:
            node = t.tree.nodes.get(path)
            if node is None:
                if self._live.get(path) is not None:
                    self._live.delete(path)
            else:
                self._live.set(path, node)
        for change in t.changes.values():
            self._deliver(change)

    # -- watches ------------------------------------------------------------
    def watch(self, caller: Caller, conn: object, path: str, token: str) -> None:
        canonical, relative = self._watch_path(caller, path)
        if len(token) > XENSTORE_PAYLOAD_MAX:
            raise XenStoreError(errno.EINVAL, f"a watch token is {XENSTORE_PAYLOAD_MAX} bytes at most")
        if any(w.conn is conn and w.token == token for w in self._watches.get(canonical, ())):
            raise XenStoreError(errno.EEXIST, f"already watching {path} with token {token!r}")
        if not caller.privileged and self._watch_count[caller.domid] >= self.quotas.watches:
            raise XenStoreError(errno.EDQUOT, f"d{caller.domid} has {self.quotas.watches} "
                                              f"watches, the most allowed")
        w = Watch(conn, caller.domid, caller.privileged, canonical, token, relative, caller.target)
        self._add_watch(w)
        # xenstored fires every new watch once, with the path as given.
        self._fire(conn, path, token)

    def unwatch(self, caller: Caller, conn: object, path: str, token: str) -> None:
        canonical, _ = self._watch_path(caller, path)
        for w in self._watches.get(canonical, ()):
            if w.conn is conn and w.token == token:
                self._drop_watch(w)
                return
        raise XenStoreError(errno.ENOENT, f"no watch on {path} with token {token!r}")

    def drop_connection(self, conn: object) -> None:
        for w in list(self._by_conn.get(conn, ())):
            self._drop_watch(w)

    def watch_count(self, domid: int) -> int:
        return self._watch_count[domid]

    # -- domains ------------------------------------------------------------
    def introduce_domain(self, domid: int) -> None:
        self._fire_special(INTRODUCE_DOMAIN)

    def release_domain(self, domid: int) -> None:
        """A domain is gone: end its transactions and watches, and hand the
        nodes it still owns to Domain-0 and drop it from permission lists, so
        that a later domain reusing the id inherits nothing (as XSA-322's fix)."""
        for tx in [t.id for t in self._transactions.values() if t.caller.domid == domid]:
            del self._transactions[tx]
        self._remove_watches(lambda w: w.domid == domid)
        for path, node in list(self._live.nodes.items()):
            if domid in (d for d, _ in node.perms):
                self._live.set(path, replace(node, perms=self._disown(node.perms, domid)))
        self._fire_special(RELEASE_DOMAIN)

    def fire_release_domain(self) -> None:
        """@releaseDomain for a domain that shut down but is not gone yet."""
        self._fire_special(RELEASE_DOMAIN)

    # -- privileged helpers ---------------------------------------------------
    def exists(self, path: str) -> bool:
        self._check_path(path)
        return self._live.get(path) is not None

    def node_count(self, domid: int) -> int:
        return self._live.owned[domid]

    def nodes(self) -> Mapping[str, Node]:
        """The live tree, path -> node (a read-only view, for audits)."""
        return MappingProxyType(self._live.nodes)

    def watches(self) -> list[Watch]:
        return [w for ws in self._watches.values() for w in ws]

    def open_transactions(self, domid: int) -> int:
        return sum(1 for t in self._transactions.values() if t.caller.domid == domid)

    # -- internals: paths -----------------------------------------------------
    def _canonical(self, caller: Caller, path: str) -> str:
        if not path.startswith("/"):
            if len(path) > XENSTORE_REL_PATH_MAX:
                raise XenStoreError(errno.EINVAL, f"a relative path is {XENSTORE_REL_PATH_MAX} "
                                                  f"characters at most")
            path = f"{home(caller.domid)}/{path}" if path else ""
        self._check_path(path)
        return path

    def _check_path(self, path: str) -> None:
        """xenstored's is_valid_nodename."""
        if not path.startswith("/"):
            raise XenStoreError(errno.EINVAL, f"invalid path {path!r}")
        if len(path) > self.quotas.path_max:
            raise XenStoreError(errno.EINVAL, f"a path is {self.quotas.path_max} characters at most")
        if not _VALID_PATH.fullmatch(path) or "//" in path or (path != "/" and path.endswith("/")):
            raise XenStoreError(errno.EINVAL, f"invalid path {path!r}: use [A-Za-z0-9-/_@], "
                                              f"no empty components")

    def _watch_path(self, caller: Caller, path: str) -> tuple[str, bool]:
        if path.startswith("@"):
            if path not in SPECIAL_WATCHES:
                raise XenStoreError(errno.EINVAL, f"unknown special watch {path!r}")
            if not caller.privileged:
                raise XenStoreError(errno.EACCES, f"{path} may only be watched by a privileged domain")
            return path, False
        return self._canonical(caller, path), not path.startswith("/")

    # -- internals: nodes and permissions -------------------------------------
    def _tree(self, caller: Caller, tx: int) -> _Tree:
        return self._transaction(caller, tx).tree if tx else self._live

    def _transaction(self, caller: Caller, tx: int) -> _Transaction:
        t = self._transactions.get(tx)
        if t is None or t.caller.domid != caller.domid:
            raise XenStoreError(errno.ENOENT, f"d{caller.domid} has no transaction {tx}")
        return t

    def _new_tx_id(self) -> int:
        while True:
            tx = next(self._tx_ids)
            if tx > _MAX_TX_ID:
                self._tx_ids = itertools.count(1)
                continue
            if tx not in self._transactions:
                return tx

    def _get(self, tree: _Tree, caller: Caller, path: str, need: str) -> Node:
        node = tree.get(path)
        if node is None:
            raise self._missing(tree, caller, path)
        self._require(caller, path, node, need)
        return node

    def _require(self, caller: Caller, path: str, node: Node, need: str) -> None:
        allowed = may_read if need == "r" else may_write
        if not allowed(node.perms, caller):
            verb = "read" if need == "r" else "write"
            raise XenStoreError(errno.EACCES, f"d{caller.domid} may not {verb} {path}")

    def _missing(self, tree: _Tree, caller: Caller, path: str) -> XenStoreError:
        """xenstored's errno_from_parents: ENOENT only if the caller may read
        the nearest existing ancestor."""
        for anc in ancestors_and_self(parent_of(path)):
            node = tree.get(anc)
            if node is not None:
                if may_read(node.perms, caller):
                    return XenStoreError(errno.ENOENT, f"{path} does not exist")
                break
        return XenStoreError(errno.EACCES, f"d{caller.domid} may not read {path}")

    def _create(self, tree: _Tree, caller: Caller, path: str, value: bytes) -> Node:
        """Create `path` and any missing parents, as xenstored's create_node:
        the caller needs write access to the nearest existing ancestor."""
        missing = []
        anc = path
        while tree.get(anc) is None:
            missing.append(anc)
            anc = parent_of(anc)
        self._require(caller, anc, tree.get(anc), "w")
        self._check_node_quota(tree, caller, len(missing))
        perms = tree.get(anc).perms
        node = None
        for p in reversed(missing):
            perms = inherit(perms, caller)
            node = Node(value if p == path else b"", perms)
            self._add_child(tree, p, node)
        return node

    def _add_child(self, tree: _Tree, path: str, node: Node) -> None:
        tree.set(path, node)
        if path != "/":
            parent_path = parent_of(path)
            parent = tree.get(parent_path)
            tree.set(parent_path, replace(parent, children=parent.children | {basename(path)}))

    def _validate_perms(self, caller: Caller, perms: Iterable[Sequence]) -> Perms:
        result = []
        for entry in perms:
            domid, perm = int(entry[0]), str(entry[1])
            if perm not in PERM_LETTERS or len(perm) != 1:
                raise XenStoreError(errno.EINVAL, f"permission {perm!r}: use one of n, r, w, b")
            if not 0 <= domid < abi.DOMID_FIRST_RESERVED:
                raise XenStoreError(errno.EINVAL, f"permission for invalid domain {domid}")
            result.append((domid, perm))
        if not result:
            raise XenStoreError(errno.EINVAL, "a permission list needs at least the owner entry")
        if not caller.privileged and len(result) > self.quotas.perms:
            raise XenStoreError(errno.EDQUOT, f"a permission list has {self.quotas.perms} "
                                              f"entries at most")
        return tuple(result)

    @staticmethod
    def _disown(perms: Perms, domid: int) -> Perms:
        owner, default = perms[0]
        head = (DOM0 if owner == domid else owner, default)
        return (head,) + tuple(p for p in perms[1:] if p[0] != domid)

    # -- internals: quotas ----------------------------------------------------
    def _check_node_quota(self, tree: _Tree, caller: Caller, new_nodes: int) -> None:
        if caller.privileged:
            return
        if tree.owned[caller.domid] + new_nodes > self.quotas.nodes:
            raise XenStoreError(errno.EDQUOT, f"d{caller.domid} owns {tree.owned[caller.domid]} "
                                              f"nodes; the quota is {self.quotas.nodes}")

    def _check_commit_quota(self, t: _Transaction) -> None:
        """Other requests may have created nodes while the transaction ran:
        check the quota again against the live tree."""
        if t.caller.privileged:
            return
        d = t.caller.domid
        delta = 0
        for path in t.tree.changed:
            old, new = self._live.get(path), t.tree.nodes.get(path)
            delta += (new is not None and new.owner == d) - (old is not None and old.owner == d)
        if delta > 0 and self._live.owned[d] + delta > self.quotas.nodes:
            raise XenStoreError(errno.EDQUOT, f"committing transaction {t.id} would take d{d} "
                                              f"past its quota of {self.quotas.nodes} nodes")

    # -- internals: watch events ---------------------------------------------
    def _publish(self, caller: Caller, tx: int, change: _Change) -> None:
        if tx:
            self._transaction(caller, tx).record(change)
        else:
            self._deliver(change)

    def _deliver(self, change: _Change) -> None:
        events = list(self._events_for(change))
        for w, path in events:
            self._fire(w.conn, path, w.token)

    def _events_for(self, change: _Change) -> Iterator[tuple[Watch, str]]:
        for anc in ancestors_and_self(change.path):
            for w in self._watches.get(anc, ()):
                if self._may_see(w, change.perms):
                    yield w, self._event_path(w, change.path)
        if change.removed:
            for wpath in self._watched_below(change.path):
                perms = self._removed_perms(change.removed, wpath)
                for w in self._watches[wpath]:
                    if self._may_see(w, [perms]):
                        yield w, self._event_path(w, wpath)

    def _watched_below(self, path: str) -> list[str]:
        """The watched paths strictly below ``path``, from the sorted index."""
        prefix = "/" if path == "/" else path + "/"
        paths = self._watched_paths
        start = bisect.bisect_left(paths, prefix)
        end = start
        while end < len(paths) and paths[end].startswith(prefix):
            end += 1
        return paths[start:end]

    @staticmethod
    def _removed_perms(removed: Mapping[str, Node], path: str) -> Perms:
        for anc in ancestors_and_self(path):
            if anc in removed:
                return removed[anc].perms
        raise AssertionError(f"{path} is not in the removed subtree")

    @staticmethod
    def _may_see(w: Watch, options: list[Perms]) -> bool:
        who = Caller(w.domid, w.privileged, w.target)
        return any(may_read(perms, who) for perms in options)

    @staticmethod
    def _event_path(w: Watch, path: str) -> str:
        if w.relative:
            return path[len(home(w.domid)) + 1:]
        return path

    def _fire_special(self, name: str) -> None:
        for w in list(self._watches.get(name, ())):
            self._fire(w.conn, name, w.token)

    def _add_watch(self, w: Watch) -> None:
        watches = self._watches.get(w.path)
        if watches is None:
            watches = self._watches[w.path] = []
            bisect.insort(self._watched_paths, w.path)
        watches.append(w)
        self._by_conn.setdefault(w.conn, []).append(w)
        self._watch_count[w.domid] += 1

    def _drop_watch(self, w: Watch) -> None:
        watches = self._watches[w.path]
        watches.remove(w)
        if not watches:
            del self._watches[w.path]
            del self._watched_paths[bisect.bisect_left(self._watched_paths, w.path)]
        mine = self._by_conn[w.conn]
        mine.remove(w)
        if not mine:
            del self._by_conn[w.conn]
        self._watch_count[w.domid] -= 1

    def _remove_watches(self, doomed: Callable[[Watch], bool]) -> None:
        for w in [w for ws in self._watches.values() for w in ws if doomed(w)]:
            self._drop_watch(w)
