"""What must hold in a hypervisor whatever its guests do, checked from the
outside of its cores: ``check_invariants(hv)`` for fuzzers and property
tests (re-exported by ``xenlab.testing``), ``GrantAudit`` to watch every grant
map and copy a backend makes, and memory digests to prove that nobody wrote
where they had no grant.

``hv`` is a ``xenlab.hypervisor.core.Hypervisor`` running in this process
(``InProcessLab.hv``). The checks read the cores through their public views
only, so they hold for any core that keeps the same contracts.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import operator
from dataclasses import dataclass, field
from typing import Iterable

from xenlab.xen import abi
from xenlab.xen import paging as pg
from xenlab.xen.abi import EvtchnState
from xenlab.xen.digits import is_decimal

class InvariantError(AssertionError):
    """The hypervisor's state broke one or more invariants."""

    def __init__(self, violations: list[str]):
        self.violations = violations
        shown = "\n  ".join(violations[:20])
        more = f"\n  ... and {len(violations) - 20} more" if len(violations) > 20 else ""
        super().__init__(f"{len(violations)} invariant violation(s):\n  {shown}{more}")


def check_invariants(hv) -> None:
    """Raise InvariantError listing everything that does not hold."""
    violations = invariant_violations(hv)
    if violations:
        raise InvariantError(violations)


def invariant_violations(hv) -> list[str]:
    """Every invariant that does not hold, as one line each:

    * every core knows exactly the domains of the domain table (a dying
      domain may already be gone from the cores);
    * memory: no domain holds more pages than its maximum, the host never
      hands out more than it has, a mapped grant's frame is populated, and
      every page type count is what the validated tables, pins, base
      pointers and writable grant mappings hold (check_page_types), and
      a PTE names another domain's frame only while its owner holds a grant
      mapping of it (writable only through a writable one);
    * grants: every mapping belongs to a live entry granted to its mapper
      (or to a granter that is gone, whose page the mapper's mapping keeps),
      a writable mapping never comes from a read-only grant, the entries'
      GTF_reading/GTF_writing flags and active counts match the mappings,
      and no table or maptrack is past its limit;
    * event channels: every port is in range, every interdomain port has a
      live peer bound back to it (a closed peer leaves it unbound), or the
      hypervisor's consumer (a store port xenstored holds), VIRQs and PIRQs
      are bound once, every port's vCPU exists;
    * xenstore: the tree is linked both ways, the per-owner node counts and
      per-domain watch counts match what is there, no unprivileged domain is
      past its node, watch or transaction quota, no node is owned by a domain
      that is gone, and no backend directory names a frontend that is gone.
    """
    out: list[str] = []
    table = {d.domid: d for d in hv.domains}
    live = {domid for domid, d in table.items() if d.state.value != "dying"}
    _check_cores(hv, table, live, out)
    _check_memory(hv, out)
    _check_grants(hv, out)
    _check_evtchn(hv, out)
    _check_xenstore(hv, table, live, out)
    return out


def _check_cores(hv, table: dict, live: set[int], out: list[str]) -> None:
    for name, domids in (("memory", hv.memory.domains()), ("grants", hv.grants.domains()),
                         ("evtchn", hv.evtchn.domains())):
        present = set(domids)
        for domid in sorted(present - set(table)):
            out.append(f"{name}: d{domid} is not in the domain table")
        for domid in sorted(live - present):
            out.append(f"{name}: live d{domid} has no {name} state")


def check_machine_frames(mem) -> list[str]:
    """The pool, the P2Ms and the M2P agree: the M2P is the inverse of the
    union of the P2Ms (so no frame is owned twice), and every machine frame
    ever handed out is owned, free, a gone domain's still referenced, or
    the hypervisor's own (a paging pool's), exactly one of them. Run after every fuzzer step over every frame, so
    the walks are C-level (map, set operations) and copy nothing."""
    out: list[str] = []
    m2p = mem.m2p_view()
    pool = mem.pool()
    free, kept, unowned = set(pool.free), pool.kept, pool.unowned
    owned = 0
    for domid in mem.domains():
        p2m = mem.p2m_view(domid)
        owned += len(p2m)
        if all(map(operator.eq, map(m2p.get, p2m.values()),
                   zip(itertools.repeat(domid), p2m.keys()))):
            continue
        for gfn, mfn in sorted(p2m.items()):
            if m2p.get(mfn) != (domid, gfn):
                out.append(f"memory: d{domid} gfn {gfn:#x} -> mfn {mfn:#x}, but the M2P "
                           f"says {m2p.get(mfn)}")
    if owned != len(m2p):
        out.append(f"memory: the M2P has {len(m2p)} frames, the P2Ms {owned}")
    if len(free) != len(pool.free):
        out.append("memory: a frame is on the free list twice")
    for name, frames in (("free", free), ("kept for its references", kept),
                         ("in a paging pool", unowned)):
        for mfn in sorted(m for m in frames if m in m2p):
            out.append(f"memory: mfn {mfn:#x} is {name} and owned by d{m2p[mfn][0]}")
    for mfn in sorted(free & kept):
        out.append(f"memory: mfn {mfn:#x} is free and kept for its references")
    for mfn in sorted((free | kept) & unowned):
        out.append(f"memory: mfn {mfn:#x} is in a paging pool and free or kept")
    for frames in (free, kept, unowned, m2p.keys()):
        if frames and not pool.first <= min(frames) <= max(frames) < pool.fresh:
            out.append(f"memory: a frame outside {pool.first:#x}..{pool.fresh:#x} (the "
                       "frames the pool handed out) is owned, free or kept")
    # The four are disjoint (checked above), so their sizes add up.
    accounted = len(free) + len(kept) + len(unowned) + len(m2p)
    if accounted != pool.fresh - pool.first:
        out.append(f"memory: {pool.fresh - pool.first} frames handed out, "
                   f"{accounted} accounted for")
    taken = len(m2p) + len(kept) + len(unowned)
    if mem.free_pages != mem.total_pages - taken:
        out.append(f"memory: {mem.free_pages} pages free; the pool says "
                   f"{mem.total_pages - taken}")
    return out


def check_paging_pools(hv) -> list[str]:
    """Every paging pool's frames are the hypervisor's own frames of the
    machine pool, each in one pool, and each domain with a pool has memory."""
    out: list[str] = []
    pools = hv.paging.pool_frames()
    unowned = hv.memory.pool().unowned
    if set(pools) != unowned:
        out.append(f"paging: {len(pools)} pool frames, {len(unowned)} held by the hypervisor "
                   f"(only in pools: {sorted(set(pools) - unowned)[:4]}, only held: "
                   f"{sorted(unowned - set(pools))[:4]})")
    sizes = collections.Counter(pools.values())
    if sum(sizes.values()) != sum(len(hv.paging.get(d).mfns) for d in hv.paging.domains()):
        out.append("paging: a frame is in two pools")
    for domid in sorted(set(hv.paging.domains()) - set(hv.memory.domains())):
        out.append(f"paging: d{domid} has a paging state but no memory")
    return out


def _check_memory(hv, out: list[str]) -> None:
    mem = hv.memory
    out.extend(check_machine_frames(mem))
    out.extend(check_paging_pools(hv))
    if mem.free_pages < 0:
        out.append(f"memory: {-mem.free_pages} pages handed out beyond the host's {mem.total_pages}")
    for domid in mem.domains():
        current, maximum, _target = mem.reservation(domid)
        if current > maximum:
            out.append(f"memory: d{domid} holds {current} pages, above its maximum {maximum}")
    grants = hv.grants
    tables = set(grants.domains())
    out.extend(check_page_types(
        mem.pagetables, lambda mfn: (mem.mfn_owner(mfn) or (None,))[0],
        lambda domid: grants.mapped_by(domid) if domid in tables else {}))
    writable = collections.Counter(m.mfn for m in grants.mappings() if not m.readonly)
    if writable != collections.Counter(mem.pagetables.grant_writable()):
        out.append(f"memory: writable grant mappings {dict(writable)} but WRITABLE type "
                   f"refs held for {mem.pagetables.grant_writable()}")


def check_page_types(pt, owner, foreign=lambda domid: {}, frame=None) -> list[str]:
    """Xen's page-type invariants over a ``PageTables``, recounted from
    scratch from its validated tables, pins and base pointers:

    * every frame's type count is the references that need its type: a
      pin, a base pointer, an entry of a validated table one level up
      (the table types), a writable L1 entry or writable grant mapping
      (WRITABLE); its general count is the entries naming it;
    * a frame with a table type and a count is validated, and no writable
      L1 entry names a page table;
    * an L1 entry names a frame its table's owner owns, or holds a grant
      mapping of (writable only through a writable one), or is a grant PTE;
      an L2..L4 entry names a table of its owner's;
    * with ``frame`` (mfn -> bytes), each validated table's frame holds
      exactly its entries (but for the A/D bits the MMU sets).

    ``owner(mfn)`` is the owning domid or None; ``foreign(domid)`` the
    mfn -> read-only mapping of what it has mapped through grants."""
    out: list[str] = []
    tables = pt.tables()
    count: collections.Counter = collections.Counter()
    refs: collections.Counter = collections.Counter()
    wants: dict[int, set] = collections.defaultdict(set)
    frames = pt.frames()
    for mfn in pt.pinned():
        count[mfn] += 1
        wants[mfn].add(frames[mfn].type if mfn in frames else None)
    for domid, bases in pt.base_pointers().items():
        for base in bases:
            if base is not None:
                count[base] += 1
                wants[base].add(pg.PageType.L4)
    grant_ptes = pt.grant_ptes()
    for table, (level, entries) in tables.items():
        table_owner = owner(table)
        mapped = foreign(table_owner) if table_owner is not None else {}
        for index, val in entries.items():
            target = pg.pte_frame(val)
            refs[target] += 1
            where = f"memory: L{int(level)} table {table:#x} (d{table_owner}) entry {index}"
            if level > 1:
                count[target] += 1
                wants[target].add(pg.PageType.table(int(level) - 1))
                if owner(target) != table_owner:
                    out.append(f"{where} names mfn {target:#x}, not its owner's")
                continue
            writable = bool(val & pg.PTE_RW)
            if writable:
                count[target] += 1
                wants[target].add(pg.PageType.WRITABLE)
                if target in tables or int(pt.info(target).type) in range(1, 5):
                    out.append(f"{where} maps page table {target:#x} writable")
            if owner(target) == table_owner or (table << 12 | index * 8) in grant_ptes:
                continue
            if target not in mapped:
                out.append(f"{where} names mfn {target:#x}, neither its owner's own "
                           "nor granted to it")
            elif writable and mapped[target]:
                out.append(f"{where} maps mfn {target:#x} writable through read-only grants")
    for mfn, n in pt.grant_writable().items():
        count[mfn] += n
        wants[mfn].add(pg.PageType.WRITABLE)
    for mfn in sorted(set(count) | set(refs) | set(frames)):
        info = pt.info(mfn)
        if (info.count, info.refs) != (count[mfn], refs[mfn]):
            out.append(f"memory: mfn {mfn:#x} has type count {info.count} and {info.refs} "
                       f"references; the tables hold {count[mfn]} and {refs[mfn]}")
        if count[mfn] and wants[mfn] != {info.type}:
            out.append(f"memory: mfn {mfn:#x} is {info.type.name}; its references need "
                       f"{sorted(str(w) for w in wants[mfn])}")
        if info.count and 1 <= int(info.type) <= 4 and mfn not in tables:
            out.append(f"memory: mfn {mfn:#x} is an {info.type.name} table in use, not validated")
    if frame is not None:
        for table, (level, entries) in tables.items():
            raw = bytes(frame(table))
            vals = [int.from_bytes(raw[i * 8:i * 8 + 8], "little") for i in range(pg.ENTRIES)]
            held = {i: v & ~pg.PTE_AD for i, v in enumerate(vals) if v & pg.PTE_PRESENT}
            if held != {i: v & ~pg.PTE_AD for i, v in entries.items()}:
                out.append(f"memory: L{int(level)} table {table:#x}'s frame does not hold "
                           "the entries validated")
    return out


def _check_grants(hv, out: list[str]) -> None:
    """The hypervisor's pins against the mappings held, and the flags in
    the granters' frames against the pins (a granter that writes its
    entries behind its kernel's back breaks the last check, not Xen's)."""
    grants, mem = hv.grants, hv.memory
    tables = set(grants.domains())
    pinned = {d: grants.pinned(d) for d in tables}
    uses: collections.Counter = collections.Counter()      # (granter, ref, readonly) -> mappings
    for mapper in sorted(tables):
        maps = grants.mappings(mapper)
        limit = grants.maptrack_limit(mapper)
        if len(maps) > limit:
            out.append(f"grants: d{mapper} holds {len(maps)} mappings, above {limit}")
        for m in maps:
            where = f"grants: d{mapper} handle {m.handle} (d{m.granter} ref {m.ref})"
            owner = mem.mfn_owner(m.mfn)
            if owner is None:
                # The granter is gone; the mapper's mmap keeps the page, and
                # the frame stays out of the pool while it does.
                if m.mfn not in mem.pool().kept:
                    out.append(f"{where}: mfn {m.mfn:#x} of a gone granter is back in the pool")
                continue
            granter, gfn = owner
            if granter != m.granter:
                out.append(f"{where}: mfn {m.mfn:#x} is now d{granter}'s")
                continue
            pin = pinned.get(granter, {}).get(m.ref)
            if pin is None or pin[1] != gfn:
                out.append(f"{where}: no pinned grant entry for it")
                continue
            if pin[0] != mapper:
                out.append(f"{where}: the entry is pinned for d{pin[0]}, not the mapper")
            if not mem.is_populated(granter, gfn):
                out.append(f"{where}: gfn {gfn:#x} of d{granter} is mapped but not populated")
            uses[(granter, m.ref, m.readonly)] += 1
    for granter in sorted(tables):
        info = grants.query(granter)
        active = 0
        for ref, (_grantee, _gfn, readers, writers) in pinned[granter].items():
            mapped_ro, mapped_rw = uses[(granter, ref, True)], uses[(granter, ref, False)]
            active += mapped_ro + mapped_rw
            if (readers, writers) != (mapped_ro, mapped_rw):
                out.append(f"grants: d{granter} ref {ref} is pinned {readers} read-only and "
                           f"{writers} writable; {mapped_ro} and {mapped_rw} mappings exist")
        for e in grants.entries(granter):
            if e.ref < abi.GNTTAB_NR_RESERVED_ENTRIES:
                out.append(f"grants: d{granter} handed out reserved ref {e.ref}")
            pin = pinned[granter].get(e.ref)
            reading = pin is not None
            writing = pin is not None and pin[3] > 0
            if bool(e.flags & abi.GTF_reading) != reading:
                out.append(f"grants: d{granter} ref {e.ref}: GTF_reading is "
                           f"{bool(e.flags & abi.GTF_reading)}, pinned {reading}")
            if bool(e.flags & abi.GTF_writing) != writing:
                out.append(f"grants: d{granter} ref {e.ref}: GTF_writing is "
                           f"{bool(e.flags & abi.GTF_writing)}, pinned writable {writing}")
        if info["active_maps"] != active:
            out.append(f"grants: d{granter} counts {info['active_maps']} active mappings; "
                       f"{active} live ones exist")


def _check_evtchn(hv, out: list[str]) -> None:
    ev = hv.evtchn
    domains = set(ev.domains())
    for domid in sorted(domains):
        max_ports, nr_vcpus = ev.max_ports(domid), ev.nr_vcpus(domid)
        virqs: dict[tuple[int, int], int] = {}
        pirqs: dict[int, int] = {}
        for port in ev.ports(domid):
            where = f"evtchn: d{domid} port {port}"
            if not 0 < port < max_ports:
                out.append(f"{where}: outside 1..{max_ports - 1}")
            ch = ev.channel(domid, port)
            if ch is None:
                out.append(f"{where}: listed but not bound")
                continue
            if not 0 <= ch.vcpu < nr_vcpus:
                out.append(f"{where}: notifies vcpu {ch.vcpu} of {nr_vcpus}")
            if ch.state == EvtchnState.interdomain and ch.remote_dom == abi.DOMID_XEN:
                if not ev.has_consumer(domid, port):
                    out.append(f"{where}: interdomain to the hypervisor, which does not hold it")
            elif ch.state == EvtchnState.interdomain:
                peer = ev.channel(ch.remote_dom, ch.remote_port) if ch.remote_dom in domains else None
                if peer is None:
                    out.append(f"{where}: interdomain to d{ch.remote_dom} port {ch.remote_port}, "
                               "which is not bound")
                elif (peer.state != EvtchnState.interdomain or peer.remote_dom != domid
                      or peer.remote_port != port):
                    out.append(f"{where}: its peer d{ch.remote_dom} port {ch.remote_port} is "
                               f"{peer.state.name} to d{peer.remote_dom} port {peer.remote_port}")
            elif ch.state == EvtchnState.virq:
                key = (ch.virq, ch.vcpu if ch.virq in abi.VIRQ_PER_VCPU else 0)
                if key in virqs:
                    out.append(f"{where}: VIRQ {ch.virq} also bound to port {virqs[key]}")
                virqs[key] = port
            elif ch.state == EvtchnState.pirq:
                if ch.pirq in pirqs:
                    out.append(f"{where}: PIRQ {ch.pirq} also bound to port {pirqs[ch.pirq]}")
                pirqs[ch.pirq] = port
    # A channel's direct path lives exactly as long as the channel, and
    # each end's object raises its port on the vCPU the port notifies.
    for a, b in hv.doorbell.links():
        for (domid, port, vcpu), (peer, peer_port, _) in ((a, b), (b, a)):
            where = f"evtchn: the direct path of d{domid} port {port}"
            ch = ev.channel(domid, port) if domid in domains else None
            if (ch is None or ch.state != EvtchnState.interdomain
                    or (ch.remote_dom, ch.remote_port) != (peer, peer_port)):
                out.append(f"{where} to d{peer} port {peer_port} outlives its channel")
            elif ch.vcpu != vcpu:
                out.append(f"{where} raises vcpu {vcpu}, the port notifies vcpu {ch.vcpu}")


def _check_xenstore(hv, table: dict, live: set[int], out: list[str]) -> None:
    xs = hv.xenstore
    nodes = xs.nodes()
    owners: collections.Counter = collections.Counter()
    for path, node in nodes.items():
        owners[node.owner] += 1
        if node.owner not in table:
            out.append(f"xenstore: {path} is owned by d{node.owner}, which is gone")
        if path != "/":
            parent_path, _, name = path.rpartition("/")
            parent = nodes.get(parent_path or "/")
            if parent is None or name not in parent.children:
                out.append(f"xenstore: {path} is not linked from its parent")
        for child in node.children:
            child_path = f"/{child}" if path == "/" else f"{path}/{child}"
            if child_path not in nodes:
                out.append(f"xenstore: {path} lists child {child!r}, which does not exist")
    for domid in sorted(set(owners) | set(table)):
        if xs.node_count(domid) != owners[domid]:
            out.append(f"xenstore: d{domid} is counted as owning {xs.node_count(domid)} nodes; "
                       f"it owns {owners[domid]}")
    watchers = collections.Counter(w.domid for w in xs.watches())
    quotas = xs.quotas
    for domid in sorted(set(watchers) | set(table)):
        if xs.watch_count(domid) != watchers[domid]:
            out.append(f"xenstore: d{domid} is counted as having {xs.watch_count(domid)} watches; "
                       f"it has {watchers[domid]}")
        if watchers[domid] and domid not in table:
            out.append(f"xenstore: d{domid} is gone but still has {watchers[domid]} watches")
    for domid in sorted(live):
        if table[domid].privileged:
            continue
        for what, have, limit in (("nodes", owners[domid], quotas.nodes),
                                  ("watches", watchers[domid], quotas.watches),
                                  ("transactions", xs.open_transactions(domid),
                                   quotas.transactions)):
            if have > limit:
                out.append(f"xenstore: d{domid} has {have} {what}, above its quota of {limit}")
    for backend in table:
        vifs = nodes.get(f"/local/domain/{backend}/backend/vif")
        for frontend in sorted(vifs.children if vifs else ()):
            if not is_decimal(frontend) or int(frontend) not in table:
                out.append(f"xenstore: /local/domain/{backend}/backend/vif/{frontend} names a "
                           "frontend that is gone")


# ----------------------------------------------------------------------------
# Memory digests
# ----------------------------------------------------------------------------
def granted_frames(hv, domid: int) -> set[int]:
    """The gfns of ``domid`` that it grants to anyone right now, and its
    grant frames (its kernel writes its entries there)."""
    return {e.frame for e in hv.grants.entries(domid)} | set(hv.grants.grant_frames(domid))


def memory_digest(hv, domid: int, exclude: Iterable[int] = ()) -> dict[int, bytes]:
    """gfn -> a digest of its contents, for every populated frame of ``domid``
    not in ``exclude``."""
    skip = set(exclude)
    out = {}
    for gfn in hv.memory.populated(domid):
        if gfn in skip:
            continue
        with hv.memory.frame(domid, gfn) as page:
            out[gfn] = hashlib.blake2b(page, digest_size=16).digest()
    return out


def changed_frames(before: dict[int, bytes], after: dict[int, bytes]) -> list[int]:
    """Frames whose contents differ, or that appeared or went, between two digests."""
    return sorted(g for g in set(before) | set(after) if before.get(g) != after.get(g))


# ----------------------------------------------------------------------------
# GrantAudit
# ----------------------------------------------------------------------------
@dataclass
class GrantAudit:
    """Watch every GNTTABOP_map and GNTTABOP_copy that ``auditee`` makes
    through the in-process hypervisor ``hv`` (over gRPC or the doorbell), and
    check each against the grant table *before* the hypervisor carries it out:

    * a copy pointer that names a frame by gfn must name the caller's own
      frame (a privileged backend may name any domain's gfn, and must not);
    * an op the hypervisor let through must have named an entry granted to
      the caller, writable if written to;
    * the backend validated what it asked for: no op fails with
      GNTST_bad_copy_arg (past a page), nor with GNTST_general_error unless
      it named a ref not granted to it (the frontend's doing: Xen answers
      an entry granted to someone else, unused or read-only that way).

    ``named[domid]`` is every ref of ``domid`` the auditee named, and
    ``statuses`` counts the outcomes by (domid, GNTST name). Use it as a
    context manager; ``violations`` lists what went wrong.
    """

    hv: object
    auditee: int = 0
    violations: list[str] = field(default_factory=list)
    named: dict[int, set[int]] = field(default_factory=lambda: collections.defaultdict(set))
    statuses: collections.Counter = field(default_factory=collections.Counter)
    ops: int = 0
    _restore: list = field(default_factory=list)

    def __enter__(self) -> "GrantAudit":
        grants = self.hv.grants
        real_copy, real_map = grants.copy_gnttab, grants.map

        def copy(caller, ops):
            ops = list(ops)
            named = [self._before_copy(caller, op) for op in ops] \
                if caller.domid == self.auditee else None
            statuses = real_copy(caller, ops)
            if named is not None:
                for op, refs, status in zip(ops, named, statuses):
                    self._after_copy(op, refs, status)
            return statuses

        def map_(mapper, granter, ref, readonly, pte_addr=None):
            if mapper.domid != self.auditee:
                return real_map(mapper, granter, ref, readonly, pte_addr)
            allowed = self._granted(mapper.domid, granter, ref, write=not readonly)
            self.named[granter].add(ref)
            try:
                mapping = real_map(mapper, granter, ref, readonly, pte_addr)
            except Exception as err:
                self.statuses[(granter, f"map:{type(err).__name__}")] += 1
                raise
            self.statuses[(granter, "map:okay")] += 1
            if not allowed:
                self.violations.append(f"map of d{granter} ref {ref} succeeded without a grant "
                                       f"to d{mapper.domid}")
            return mapping

        # The copy entry point may have been handed out already (the doorbell
        # keeps it): replace every reference to it, and put them back after.
        for owner in (grants, *[v for v in vars(self.hv).values() if hasattr(v, "__dict__")]):
            for name, value in list(vars(owner).items()):
                if callable(value) and value == real_copy:
                    self._restore.append((owner, name, value))
                    setattr(owner, name, copy)
        grants.copy_gnttab, grants.map = copy, map_
        self._restore += [(grants, "copy_gnttab", None), (grants, "map", None)]
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, value in reversed(self._restore):
            if value is None:
                vars(owner).pop(name, None)
            else:
                setattr(owner, name, value)
        self._restore.clear()

    def _granted(self, caller: int, domid: int, ref: int, write: bool) -> bool:
        """Whether Xen's rules let ``caller`` pin ``ref`` of ``domid``: the
        entry in the granter's frame grants it, or the caller holds the pin
        already (which is not read from the frame again)."""
        grants = self.hv.grants
        if domid not in grants.domains():
            return False
        pin = grants.pinned(domid).get(ref)
        if pin is not None:
            return pin[0] == caller and (not write or pin[3] > 0 or (
                not grants.entry(domid, ref).flags & abi.GTF_readonly))
        entry = grants.entry(domid, ref)
        return (entry is not None and entry.domid == caller
                and entry.flags & abi.GTF_type_mask == abi.GTF_permit_access
                and not (write and entry.flags & abi.GTF_readonly)
                and self.hv.memory.is_populated(domid, entry.frame))

    def _before_copy(self, caller, op) -> list[tuple[int, int, bool]]:
        """The grant refs one struct gnttab_copy names, each (domid, ref, granted)."""
        self.ops += 1
        sptr, sdom, _soff, dptr, ddom, _doff, _length, flags = op
        named = []
        for ptr, domid, is_gref, write in ((sptr, sdom, flags & abi.GNTCOPY_source_gref, False),
                                           (dptr, ddom, flags & abi.GNTCOPY_dest_gref, True)):
            domid = caller.domid if domid == abi.DOMID_SELF else domid
            if is_gref:
                self.named[domid].add(ptr)
                named.append((domid, ptr, self._granted(caller.domid, domid, ptr, write)))
            elif domid != caller.domid:
                self.violations.append(f"copy names gfn {ptr:#x} of d{domid} without a grant "
                                       f"(d{caller.domid} used its privilege)")
        return named

    def _after_copy(self, op, named: list[tuple[int, int, bool]], status: int) -> None:
        name = abi.GNTST_NAMES.get(status, str(status))
        for domid, _ref, _ok in named or [(self.auditee, -1, True)]:
            self.statuses[(domid, name)] += 1
        if status == abi.GNTST_okay:
            for domid, ref, ok in named:
                if not ok:
                    self.violations.append(f"copy through d{domid} ref {ref} succeeded without a "
                                           f"grant to d{self.auditee}")
        elif status == abi.GNTST_bad_copy_arg or (
                status == abi.GNTST_general_error and all(ok for _, _, ok in named)):
            self.violations.append(f"d{self.auditee} issued a copy the hypervisor refused as "
                                   f"{name}: {tuple(op)}")

    def refused(self, domid: int) -> int:
        """Ops naming ``domid``'s refs that the hypervisor refused."""
        return sum(n for (d, name), n in self.statuses.items()
                   if d == domid and name not in ("okay", "map:okay"))
