"""Every hypercall with hostile arguments (issue "Hostile input and faults",
part 2).

Hypothesis draws calls to every RPC of every hypervisor service (Domains,
Memory, GrantTable, EventChannel, XenStore: the list comes from the protos,
so a new RPC is fuzzed without a word here), with request fields generated
from their descriptors: random values, values at and past every limit, and
the ids, refs, ports and paths of other domains. The world is an
in-process hypervisor with a victim domain that has granted pages, offered
ports, a channel to Domain-0 and private xenstore nodes.

* As an unprivileged domain (and sometimes with wrong, missing or borrowed
  credentials): every call returns a valid result or a specific error
  (NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT, ...), never UNKNOWN or
  INTERNAL and never a hang; check_invariants holds after every call; and
  nothing of the victim's or Domain-0's changes (xenstore, reservation,
  grants, ports), except what the victim offered to the caller.
* As Domain-0 (the toolstack), with waits capped: the same, bar the
  victim clause.
* Every unary-request RPC refuses a request one byte past its method's size
  limit with RESOURCE_EXHAUSTED, without parsing it.
"""
from __future__ import annotations

import asyncio
import collections
import logging

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from xenlab.proto import (domains_pb2, domains_pb2_grpc, evtchn_pb2, evtchn_pb2_grpc,
                          grants_pb2, grants_pb2_grpc, memory_pb2, memory_pb2_grpc, xenstore_pb2,
                          xenstore_pb2_grpc)
from xenlab.rpc import CHANNEL_OPTIONS, credentials_metadata
from xenlab.testing import check_invariants
from xenlab.testing.grants import GuestGrantTable
from xenlab.xen import abi

SERVICES = [
    (domains_pb2, "Domains", domains_pb2_grpc.DomainsStub),
    (memory_pb2, "Memory", memory_pb2_grpc.MemoryStub),
    (grants_pb2, "GrantTable", grants_pb2_grpc.GrantTableStub),
    (evtchn_pb2, "EventChannel", evtchn_pb2_grpc.EventChannelStub),
    (xenstore_pb2, "XenStore", xenstore_pb2_grpc.XenStoreStub),
]
METHODS = [(name, method) for module, name, _ in SERVICES
           for method in module.DESCRIPTOR.services_by_name[name].methods]

# What a hostile or mistaken call may get back. UNKNOWN and INTERNAL are
# server bugs (an exception no core turned into a XenError), and so is a hang.
SPECIFIC = {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED}
HANG = 15.0          # seconds: a call still running then is a hung server
U32, U64 = (1 << 32) - 1, (1 << 64) - 1


# -- the world ---------------------------------------------------------------------------------------
class World:
    """Domain-0, a victim with things worth stealing, and the caller."""

    def __init__(self, lab):
        self.lab, self.hv = lab, lab.hv
        self.secrets: dict[int, str] = {0: lab.hv.dom0_secret}
        self.victim = self.attacker = -1
        self.attacker_name = ""
        self.victim_refs: list[int] = []
        self.offered_refs: list[int] = []
        self.victim_ports: list[int] = []
        self.offered_port = 0
        self.generation = 0
        self.outcomes: collections.Counter = collections.Counter()    # (method, status)
        self.channel = grpc.aio.insecure_channel(lab.address, options=CHANNEL_OPTIONS)
        self.stubs = {name: stub(self.channel) for _, name, stub in SERVICES}

    async def build(self) -> None:
        if self.victim not in self.hv.domains:
            await self._victim()
        if self.attacker not in self.hv.domains or \
                self.hv.domains.get(self.attacker).state.value == "dying":
            await self._attacker()

    async def _create(self, name: str) -> int:
        self.generation += 1
        reply = await self.lab.dom0.domains.Create(domains_pb2.CreateDomainRequest(
            spec=domains_pb2.DomainSpec(name=f"{name}{self.generation}", memory_mb=16,
                                        launcher="none")))
        self.secrets[reply.info.domid] = reply.secret
        return reply.info.domid

    def _client(self, domid: int):
        return self.lab.client_as(domid, self.secrets[domid])

    async def _victim(self) -> None:
        self.victim = await self._create("victim")
        victim = self._client(self.victim)
        # The victim's kernel: its grant frame, its entries written there.
        self.victim_table = await GuestGrantTable.setup(self.hv, victim)
        self.victim_refs = [self.victim_table.grant(0, 100 + i, readonly=i % 2 == 0)
                            for i in range(4)]
        await self.lab.dom0.grants.Map(grants_pb2.MapGrantRequest(
            domid=self.victim, ref=self.victim_refs[1], readonly=False))
        port0 = (await self.lab.dom0.evtchn.AllocUnbound(evtchn_pb2.AllocUnboundRequest(
            dom=0, remote_dom=self.victim))).port
        bound = await victim.evtchn.BindInterdomain(evtchn_pb2.BindInterdomainRequest(
            remote_dom=0, remote_port=port0))
        offered0 = await victim.evtchn.AllocUnbound(evtchn_pb2.AllocUnboundRequest(
            dom=self.victim, remote_dom=0))
        self.victim_ports = [bound.port, offered0.port]
        for path, value in (("data/secret", b"hunter2"), ("data/public", b"hello")):
            await victim.xenstore.Write(xenstore_pb2.WriteRequest(path=path, value=value))
        await victim.xenstore.SetPerms(xenstore_pb2.SetPermsRequest(
            path="data/secret", perms=[xenstore_pb2.Perm(domid=self.victim, perm="n")]))

    async def _attacker(self) -> None:
        self.attacker = await self._create("attacker")
        self.attacker_name = f"attacker{self.generation}"
        victim = self._client(self.victim)
        # The victim offers the new attacker a page of each kind and a port:
        # what the attacker may legitimately touch.
        self.offered_refs = [self.victim_table.grant(self.attacker, 200, readonly=True),
                             self.victim_table.grant(self.attacker, 201, readonly=False)]
        self.offered_port = (await victim.evtchn.AllocUnbound(evtchn_pb2.AllocUnboundRequest(
            dom=self.victim, remote_dom=self.attacker))).port

    def ids(self) -> list[int]:
        return [0, self.victim, self.attacker]

    def protected(self) -> dict:
        """What an unprivileged attacker must never change: Domain-0's and
        the victim's xenstore, reservations, grants and ports, bar the port
        and pages the victim offered to the attacker."""
        hv, v = self.hv, self.victim
        nodes = hv.xenstore.nodes()
        tops = ("/local/domain/0", f"/local/domain/{v}", "/tool", f"/libxl/{v}")
        # Domain-0's backend directories for the attacker's own devices (its
        # console) go when the attacker dies, as libxl removes them, and come
        # for the domain it restarts as (on_reboot=restart, the default, keeps
        # its name): not the attacker's doing to Domain-0.
        its_ids = {self.attacker} | {d.domid for d in hv.domains
                                     if d.name == self.attacker_name}
        its_backends = tuple(f"/local/domain/0/backend/{kind}/{domid}"
                             for kind in ("console", "vif") for domid in its_ids)
        mine = {p: (n.value, n.perms) for p, n in nodes.items()
                if any(p == t or p.startswith(t + "/") for t in tops)
                and not any(p == b or p.startswith(b + "/") for b in its_backends)}
        offered = {self.offered_port}
        ports = {d: {p: hv.evtchn.channel(d, p) for p in hv.evtchn.ports(d)
                     if not (d == v and p in offered)} for d in (0, v)}
        entries = {d: [(e.ref, e.domid, e.frame, e.flags) for e in hv.grants.entries(d)
                       if not (d == v and e.ref in self.offered_refs)] for d in (0, v)}
        return {"xenstore": mine, "ports": ports, "grants": entries,
                "maps": [(m.granter, m.ref) for m in hv.grants.mappings(0)],
                "memory": {d: (hv.memory.reservation(d), hv.memory.populated(d)) for d in (0, v)}}


# -- requests from descriptors -------------------------------------------------------------------------
def _ints(world: World, name: str, bits: int) -> st.SearchStrategy:
    top = (1 << bits) - 1
    ids = world.ids()
    hints = {
        "domid": ids + [abi.DOMID_SELF, abi.DOMID_INVALID, abi.DOMID_IO, 999, top],
        "port": [0, 1, 2, 3, *world.victim_ports, world.offered_port, 1023, 1024, 4095, top],
        "ref": [0, 7, 8, 9, *world.victim_refs, *world.offered_refs, 16383, 16384, top],
        "gfn": [0, 15, 16, 100, 200, 4095, 4096, 1 << 22, top],
        "handle": [0, 1, 2, 1023, 1024, top],
        "offset": [0, 1, 4095, 4096, 4097, top],
        "len": [0, 1, 4095, 4096, 4097, top],
        "vcpu": [0, 1, 2, 31, 32, 127, 128, top],
        "vcpus": [0, 1, 2, 128, 129, top],
        "virq": [0, 1, 2, 3, 23, 24, top],
        "pirq": [0, 1, 255, 256, top],
        "kb": [0, 1, 4, 4096, 16384, 1 << 30, top],
        "nr_pages": [0, 1, 100, 4096, 1 << 22, top],
        "memory_mb": [0, 1, 16, 2048, 4096, top],
        "mtu": [0, 67, 68, 1500, 9000, 65535, 65536, top],
        "tx": [0, 1, 2, 3, 10, top],
        "ptr": [0, 1, 7, *(mfn << 12 for mfn in _own_mfns(world)), top],
        "mfn": [0, 0xFF, 0x100, *_own_mfns(world), top],
    }
    for key, values in hints.items():
        if name == key or name.endswith("_" + key) or name.endswith(key + "s") \
                or (key == "domid" and name in ("dom", "remote_dom", "backend_id")):
            picks = [x for x in values if 0 <= x <= top]
            return st.one_of(st.sampled_from(picks), st.integers(0, top))
    return st.one_of(st.sampled_from([0, 1, 2, top]), st.integers(0, top))


def _own_mfns(world) -> list[int]:
    """A few machine frames the attacker owns (its P2M), for PTE pointers."""
    mem = world.hv.memory
    if world.attacker not in mem.domains():
        return []
    return sorted(mem.p2m(world.attacker).values())[20:23]


PATHS = ["/", "/local", "/local/domain", "/local/domain/0", "/local/domain/0/backend",
         "/tool", "/tool/xenlab", "/vm", "/libxl", "data", "data/x", "device/vif/0/backend",
         "control/shutdown", "memory/target", "error/x", "@introduceDomain", "@releaseDomain",
         "@bogus", "", "//", "/local/", "bad path", "../x", "a" * 3100, "/" + "a/" * 1600,
         "data/²", "/local/domain/٣", "/local/domain/²/data", "data/é"]
# Characters Python's own tests take for digits ('²'.isdigit(), int('٣') == 3)
# or for space, and a few other scripts: what a C-minded parser must refuse.
ODD = ["²", "٣", "１", "é", "\u2003", "\x85", "ᛒ"]


def _strings(world: World, name: str) -> st.SearchStrategy:
    v, a = world.victim, world.attacker
    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
    hints = {
        "path": PATHS + [f"/local/domain/{v}", f"/local/domain/{v}/data/secret",
                         f"/local/domain/{a}/data", f"/local/domain/{a}/device/vif/0/backend",
                         f"/libxl/{v}"],
        "name": ["", "Domain-0", "0", str(v), str(a), f"victim{world.generation}", "nosuch",
                 "a/b", "x" * 65, "9" * 5000, f"00{v}", f" {v}", *ODD, f"victim{world.generation}²"],
        "perm": ["n", "r", "w", "b", "", "rw", "x"],
        "reason": ["poweroff", "reboot", "crash", "suspend", "watchdog", "", "halt"],
        "mac": ["", "00:16:3e:00:00:01", "01:00:5e:00:00:01", "zz", "00:16:3e:00:00:01:02",
                "00:16:3e:00:00:٠١"],
        "bridge": ["", "xenbr0", "br/0", "b" * 16, "xenbr²"],
        "ip": ["", "10.0.0.1", "10.0.0.1/24", "10.0.0.300", "10.0.0.1 10.0.0.2", "10.0.0.٣"],
        "rate": ["", "10Mb/s", "1MB/s@20ms", "fast", "0b/s", "²Mb/s", "10Mb/s@٣ms"],
        "launcher": ["", "none", "teleport"],
        "uuid": ["", "00000000-0000-0000-0000-000000000001", "not-a-uuid"],
        "backend": ["", "Domain-0", str(v), "nosuch", *ODD],
        "device": ["0", "1", "00:16:3e:00:00:01", "", "x", *ODD],
        "token": ["t", "", "x" * 5000, "²"],
        "on_poweroff": ["destroy", "preserve", "restart", "explode", ""],
        "on_reboot": ["destroy", "preserve", "explode", ""],
        "on_crash": ["destroy", "preserve", "coredump-destroy", "explode", ""],
    }
    for key, values in hints.items():
        if name == key:
            return st.one_of(st.sampled_from(values), text)
    return text


def _field(world: World, f, depth: int, capped: bool) -> st.SearchStrategy:
    if f.type == FD.TYPE_MESSAGE:
        return message(world, f.message_type, depth + 1, capped)
    if f.type in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return _ints(world, f.name, 32)
    if f.type in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return _ints(world, f.name, 64)
    if f.type in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return st.integers(-(1 << 31), (1 << 31) - 1)
    if f.type in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return st.integers(-(1 << 63), (1 << 63) - 1)
    if f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if capped and f.name == "timeout":
            return st.floats(0.01, 0.05)    # 0 means the server's default wait
        return st.one_of(st.sampled_from([0.0, -1.0, 0.01, 3600.0, 3600.5, 1e300]),
                         st.floats(allow_nan=True, allow_infinity=True))
    if f.type == FD.TYPE_BOOL:
        return st.booleans()
    if f.type == FD.TYPE_STRING:
        return _strings(world, f.name)
    if f.type == FD.TYPE_BYTES:
        return st.one_of(st.binary(max_size=32), st.sampled_from([b"x" * 2048, b"x" * 2049,
                                                                   b"\0" * 5000, b"\xff",
                                                                   "²".encode()]))
    if f.type == FD.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in f.enum_type.values]),
                         st.integers(-5, 1000))
    raise AssertionError(f"no strategy for field {f.full_name}")


def message(world: World, descriptor, depth: int = 0, capped: bool = False) -> st.SearchStrategy:
    """Any instance of ``descriptor``: each field unset or drawn."""
    from google.protobuf import message_factory
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    fields = {}
    for f in descriptor.fields:
        if f.type == FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            key, value = f.message_type.fields
            inner = st.dictionaries(_field(world, key, depth, capped),
                                    _field(world, value, depth, capped), max_size=3)
        else:
            inner = _field(world, f, depth, capped)
            if f.is_repeated:
                inner = st.lists(inner, max_size=4)
        fields[f.name] = st.one_of(st.none(), inner)

    def build(values: dict):
        msg = cls()
        for f in descriptor.fields:
            value = values[f.name]
            if value is None:
                continue
            target = getattr(msg, f.name) if f.is_repeated or \
                f.type == FD.TYPE_MESSAGE else None
            if isinstance(value, dict):
                target.update(value)
            elif f.is_repeated:
                if f.type == FD.TYPE_MESSAGE:
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif f.type == FD.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(msg, f.name, value)
        return msg

    return st.fixed_dictionaries(fields).map(build)


# -- calling ------------------------------------------------------------------------------------------------
async def call(world: World, service: str, method, request, metadata) -> grpc.StatusCode:
    """One RPC of any shape; its final status (streams are read a little, then cancelled)."""
    stub = getattr(world.stubs[service], method.name)
    if method.client_streaming:
        controls = list(request)
        rpc = stub(metadata=metadata, timeout=HANG)
        try:
            for control in controls:
                try:
                    await rpc.write(control)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    # The server ended the call already (a refusal) and the
                    # client library fails the late write locally, as
                    # INTERNAL or, when it has seen the end already, as
                    # "RPC already finished": ask again without writing to
                    # hear the server's own answer.
                    rpc.cancel()
                    return await call(world, service, method, [], metadata)
            acks = 0
            for _ in range(2 * len(controls) + 1):
                try:        # every control is acknowledged at once; events may follow
                    event = await asyncio.wait_for(rpc.read(), 1.0 if acks < len(controls) else 0.01)
                except asyncio.TimeoutError:
                    assert acks == len(controls), f"{len(controls) - acks} watch controls unanswered"
                    break
                if event is grpc.aio.EOF:
                    break
                acks += event.ack
                assert not event.ack or not event.error or event.errno > 0, \
                    f"a refused watch control carries no errno: {event}"
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            return err.code()
        finally:
            rpc.cancel()
    if method.server_streaming:
        rpc = stub(request, metadata=metadata, timeout=HANG)
        try:
            for _ in range(3):
                try:
                    item = await asyncio.wait_for(rpc.read(), 0.02)
                except asyncio.TimeoutError:
                    break
                if item is grpc.aio.EOF:
                    break
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            return err.code()
        finally:
            rpc.cancel()
    try:
        await asyncio.wait_for(stub(request, metadata=metadata, timeout=HANG), HANG + 5)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "Deadline" in (err.details() or ""):
            raise AssertionError(f"{service}.{method.name} hung: {request}") from None
        return err.code()


def credentials(world: World, domid: int, kind: str):
    if kind == "own":
        return credentials_metadata(domid, world.secrets[domid])
    if kind == "missing":
        return ()
    if kind == "wrong secret":
        return credentials_metadata(domid, "x" + world.secrets[domid][1:])
    if kind == "borrowed id":
        return credentials_metadata(world.victim, world.secrets[domid])
    if kind == "dom0 id":
        return credentials_metadata(0, world.secrets[domid])
    return (("xen-domid", kind), ("xen-secret", world.secrets[domid]))


async def fuzz_calls(world: World, data, caller: str, capped: bool) -> None:
    await world.build()
    for _ in range(data.draw(st.integers(1, 4), label="calls")):
        domid = 0 if caller == "dom0" else world.attacker
        service, method = data.draw(st.sampled_from(METHODS), label="method")
        if method.client_streaming:
            request = data.draw(st.lists(message(world, method.input_type, capped=capped),
                                         max_size=4), label="stream")
        else:
            request = data.draw(message(world, method.input_type, capped=capped), label="request")
        creds = data.draw(st.sampled_from(["own"] * 60 + ["missing", "wrong secret", "borrowed id",
                                                          "dom0 id", "-1", "abc", "1e3", " 0",
                                                          "9" * 5000]),
                          label="credentials")
        note(f"{caller} d{domid} {service}.{method.name}({request}) creds={creds}")
        before = world.protected() if caller == "attacker" else None
        status = await call(world, service, method, request, credentials(world, domid, creds))
        note(f"-> {status.name}")
        world.outcomes[(f"{service}.{method.name}", status.name)] += 1
        gone = domid not in world.hv.domains or world.hv.domains.get(domid).state.value == "dying"
        allowed = SPECIFIC | ({grpc.StatusCode.UNAUTHENTICATED} if creds != "own" or gone else set())
        if capped:
            allowed |= {grpc.StatusCode.DEADLINE_EXCEEDED}     # a detach that timed out (ETIMEDOUT)
        assert status in allowed, (f"{service}.{method.name} answered {status.name} to d{domid} "
                                   f"(credentials: {creds}): {request}")
        await asyncio.sleep(0)          # a SchedShutdown's teardown runs now
        check_invariants(world.hv)
        if before is not None and world.victim in world.hv.domains:
            assert world.protected() == before, \
                f"{service}.{method.name} by d{domid} changed what it may not touch"
        await world.build()


@pytest.fixture
async def world(hypervisor, caplog):
    caplog.set_level(logging.WARNING, logger="xenlab")
    w = World(hypervisor)
    await w.build()
    yield w
    await w.channel.close()
    calls = sum(w.outcomes.values())
    ok = sum(n for (_, status), n in w.outcomes.items() if status == "OK")
    methods = {m for m, _ in w.outcomes}
    print(f"\nhypercall fuzz: {calls} calls to {len(methods)} methods, {ok} succeeded; "
          f"{dict(collections.Counter(s for (_, s) in w.outcomes.elements()))}")
    failures = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not failures, failures[:5]


FUZZ = settings(max_examples=1000, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@pytest.mark.asyncio
@FUZZ
@given(data=st.data())
async def test_an_unprivileged_domain_gets_specific_errors_and_changes_nothing_of_others(world, data):
    await fuzz_calls(world, data, "attacker", capped=False)


@pytest.mark.asyncio
@settings(FUZZ, max_examples=500)
@given(data=st.data())
async def test_the_toolstack_gets_specific_errors_too(world, data):
    await fuzz_calls(world, data, "dom0", capped=True)


def test_every_hypervisor_rpc_is_fuzzed():
    names = {f"{service}.{m.name}" for service, m in METHODS}
    assert {"Domains.Create", "Memory.MmuUpdate", "GrantTable.Copy", "EventChannel.Upcalls",
            "XenStore.WatchStream"} <= names
    assert len(names) == sum(len(module.DESCRIPTOR.services_by_name[name].methods)
                             for module, name, _ in SERVICES)


async def test_every_rpc_refuses_a_request_past_its_size_limit_unparsed(world):
    """One byte past a method's limit (not even protobuf) is RESOURCE_EXHAUSTED,
    for every unary-request RPC of every service, without a word here."""
    from xenlab.hypervisor.admission import limit_for
    creds = credentials(world, world.attacker, "own")
    for service, method in METHODS:
        if method.client_streaming:
            continue
        name = f"/{method.containing_service.full_name}/{method.name}"
        raw = b"\xff" * (limit_for(name) + 1)
        if method.server_streaming:
            call = world.channel.unary_stream(name)(raw, metadata=creds, timeout=HANG)
            outcome = call.read()
        else:
            outcome = world.channel.unary_unary(name)(raw, metadata=creds, timeout=HANG)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await outcome
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (name, err.value.details())
        # the method's own words, or grpc-core's for the largest limit
        assert "at most" in err.value.details() or "larger than max" in err.value.details()
    check_invariants(world.hv)
