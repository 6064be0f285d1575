"""xenstored's connection state machine (xenlab.hypervisor.xenstored) on
plain bytes: replies in order with their req_id, watch events unsolicited,
every malformed request answered with XS_ERROR or the connection closed,
and the per-connection limits."""
from __future__ import annotations

import errno
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.xenstore import XenStore, XenStoreQuotas
from xenlab.hypervisor.xenstored import ConnectionLimits, Xenstored
from xenlab.xen.errors import XenStoreError
from xenlab.xen import xs_wire as w
from xenlab.xen.xs_wire import XsMessage, XsType

DOMAINS = {0, 1, 2, 5}


class Peer:
    """A client of one XsConnection: encodes requests, decodes what comes out."""

    def __init__(self, daemon: Xenstored, caller: Caller = Caller(0, True)):
        self.wakes = 0
        self.conn = daemon.connect(caller, wake=self._wake)
        self.reader = w.MessageReader()
        self.req = 0

    def _wake(self):
        self.wakes += 1

    def send(self, type_, payload=b"", tx=0) -> int:
        self.req += 1
        self.conn.receive(w.encode(XsMessage(type_, self.req, tx, payload)))
        return self.req

    def out(self) -> list[XsMessage]:
        self.reader.feed(self.conn.take())
        msgs = []
        while (m := self.reader.next()) is not None:
            msgs.append(m)
        return msgs

    def call(self, type_, payload=b"", tx=0) -> XsMessage:
        req = self.send(type_, payload, tx)
        msgs = self.out()
        replies = [m for m in msgs if m.type != XsType.WATCH_EVENT]
        assert len(replies) == 1 and replies[0].req_id == req and replies[0].tx_id == tx, msgs
        return replies[0]

    def ok(self, type_, payload=b"", tx=0) -> bytes:
        reply = self.call(type_, payload, tx)
        assert reply.type == type_, (reply, w.error_from_payload(reply.payload))
        return reply.payload

    def error(self, type_, payload=b"", tx=0) -> str:
        reply = self.call(type_, payload, tx)
        assert reply.type == XsType.ERROR, reply
        return reply.payload[:-1].decode()


@pytest.fixture
def daemon():
    box = {}

    def fire(conn, path, token):
        conn.fire(path, token)

    store = XenStore(fire=fire, quotas=XenStoreQuotas(watches=3, transactions=2, nodes=50))
    box["d"] = Xenstored(store, lambda domid: domid in DOMAINS)
    store.write(Caller(0, True), "/local/domain/0/name", b"Domain-0")
    store.write(Caller(0, True), "/local/domain/0/domid", b"0")
    for domid in (1, 2, 5):
        box["d"].introduce(domid)
        store.write(Caller(0, True), f"/local/domain/{domid}", b"")
        store.set_perms(Caller(0, True), f"/local/domain/{domid}", [(domid, "n")])
    return box["d"]


@pytest.fixture
def dom0(daemon):
    return Peer(daemon)


def test_pipelined_requests_are_answered_in_order(dom0):
    stream = b"".join(w.encode(XsMessage(t, rid, 0, p)) for t, rid, p in [
        (XsType.WRITE, 10, b"/tool/a\0one"), (XsType.READ, 11, b"/tool/a\0"),
        (XsType.READ, 12, b"/nope\0"), (XsType.DIRECTORY, 13, b"/tool\0")])
    dom0.conn.receive(stream)
    out = dom0.out()
    assert [(m.type, m.req_id, m.payload) for m in out] == [
        (XsType.WRITE, 10, b"OK\0"), (XsType.READ, 11, b"one"),
        (XsType.ERROR, 12, b"ENOENT\0"), (XsType.DIRECTORY, 13, b"a\0xenstored\0")]


def test_a_watch_is_acknowledged_then_fires_then_follows_changes(dom0):
    dom0.send(XsType.WATCH, b"/tool\0tok\0")
    ack, first = dom0.out()
    assert (ack.type, ack.payload) == (XsType.WATCH, b"OK\0")
    assert (first.type, first.req_id, first.tx_id, first.payload) == \
        (XsType.WATCH_EVENT, 0, 0, b"/tool\0tok\0")
    dom0.send(XsType.WRITE, b"/tool/x/y\0v")
    reply, event = dom0.out()
    assert reply.type == XsType.WRITE and event.payload == b"/tool/x/y\0tok\0"
    other = Peer(dom0.conn.daemon)
    other.ok(XsType.RM, b"/tool/x\0")
    assert [m.payload for m in dom0.out()] == [b"/tool/x\0tok\0"]
    dom0.ok(XsType.UNWATCH, b"/tool\0tok\0")
    other.ok(XsType.WRITE, b"/tool/z\0")
    assert dom0.out() == []


def test_watch_tokens_come_back_byte_for_byte(dom0):
    token = bytes(range(1, 256))
    dom0.send(XsType.WATCH, b"/tool\0" + token + b"\0")
    assert dom0.out()[1].payload == b"/tool\0" + token + b"\0"


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_the_same_bytes_cut_anywhere_give_the_same_answers(data):
    stream = b"".join(w.encode(XsMessage(t, i, 0, p)) for i, (t, p) in enumerate([
        (XsType.WATCH, b"/tool\0t\0"), (XsType.WRITE, b"/tool/a\0" + b"v" * 300),
        (XsType.READ, b"/tool/a\0"), (XsType.GET_PERMS, b"/tool/a\0"), (0xFFFF, b""),
        (XsType.READ, b"/tool/a"), (XsType.RM, b"/tool/a\0")]))

    def run(cuts):
        store = XenStore(fire=lambda c, p, t: c.fire(p, t))
        daemon = Xenstored(store, lambda d: d == 0)
        store.write(Caller(0, True), "/local/domain/0/name", b"Domain-0")
        conn = daemon.connect(Caller(0, True))
        for start, end in zip([0, *cuts], [*cuts, len(stream)]):
            conn.receive(stream[start:end])
        return conn.take()

    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    assert run(cuts) == run([])


@pytest.mark.parametrize("type_", [20, XsType.WATCH_EVENT, XsType.ERROR, XsType.GET_FEATURE,
                                   XsType.SET_QUOTA, w.XS_TYPE_COUNT, 1000, w.XS_INVALID])
def test_types_xenstored_does_not_serve_are_enosys(dom0, type_):
    assert dom0.error(type_, b"/\0") == "ENOSYS"
    assert dom0.ok(XsType.READ, b"/local/domain/0/name\0") == b"Domain-0"


@pytest.mark.parametrize("type_,payload", [
    (XsType.READ, b"/tool"), (XsType.READ, b""), (XsType.READ, b"/tool\0extra"),
    (XsType.MKDIR, b"/tool/a"), (XsType.RM, b"/tool/a"), (XsType.DIRECTORY, b"/tool"),
    (XsType.GET_PERMS, b"/tool"), (XsType.WRITE, b"/tool/a"), (XsType.SET_PERMS, b"/tool\0"),
    (XsType.SET_PERMS, b"/tool\0x0\0"), (XsType.SET_PERMS, b"/tool\0r\0"),
    (XsType.WATCH, b"/tool\0"), (XsType.WATCH, b"/tool\0t\0extra\0"), (XsType.UNWATCH, b"/tool"),
    (XsType.DIRECTORY_PART, b"/tool\0"), (XsType.DIRECTORY_PART, b"/tool\0x\0"),
    (XsType.TRANSACTION_END, b"X\0"), (XsType.GET_DOMAIN_PATH, b"one\0"),
    (XsType.GET_DOMAIN_PATH, b"1"), (XsType.IS_DOMAIN_INTRODUCED, b"\0"),
    (XsType.INTRODUCE, b"5\0" b"1\0"), (XsType.INTRODUCE, b"5\0x\0" b"3\0"),
    (XsType.INTRODUCE, b"5\0" b"1\0" b"0\0"), (XsType.INTRODUCE, b"0\0" b"1\0" b"3\0"),
    (XsType.INTRODUCE, b"32752\0" b"1\0" b"3\0"), (XsType.RELEASE, b"0\0"), (XsType.RESUME, b"x\0"),
    (XsType.SET_TARGET, b"1\0"), (XsType.CONTROL, b""), (XsType.CONTROL, b"nosuch\0"),
    (XsType.CONTROL, b"print\0"), (XsType.READ, b"/bad//path\0"), (XsType.READ, "/ü\0".encode()),
])
def test_malformed_payloads_are_einval(dom0, type_, payload):
    assert dom0.error(type_, payload) == "EINVAL"
    assert dom0.ok(XsType.READ, b"/local/domain/0/name\0") == b"Domain-0"


def test_a_length_over_the_limit_drops_only_that_connection(daemon, dom0, caplog):
    other = Peer(daemon)
    dom0.send(XsType.WATCH, b"/tool\0t\0")
    assert daemon.store.watches()
    dom0.conn.receive(w.HEADER.pack(XsType.READ, 2, 0, w.XENSTORE_PAYLOAD_MAX + 1))
    assert dom0.conn.closed and dom0.conn.error == w.XENSTORE_ERROR_PROTO
    assert dom0.conn.take() == b""          # nothing more is sent
    assert not daemon.store.watches() and dom0.conn not in daemon.connections
    dom0.conn.receive(w.encode(XsMessage(XsType.READ, 3, 0, b"/\0")))
    assert dom0.conn.take() == b""
    assert other.ok(XsType.READ, b"/local/domain/0/name\0") == b"Domain-0"
    assert "4097" in caplog.text


def test_a_header_split_across_writes_is_reassembled(dom0):
    data = w.encode(XsMessage(XsType.READ, 77, 0, b"/local/domain/0/name\0"))
    for i in range(len(data) - 1):
        dom0.conn.receive(data[i:i + 1])
        assert dom0.conn.take() == b""
    dom0.conn.receive(data[-1:])
    (reply,) = dom0.out()
    assert (reply.req_id, reply.payload) == (77, b"Domain-0")


def test_privileged_requests_are_refused_to_a_domain(daemon):
    guest = Peer(daemon, Caller(5))
    for type_, payload in [(XsType.INTRODUCE, b"2\0" b"1\0" b"3\0"), (XsType.RELEASE, b"2\0"),
                           (XsType.IS_DOMAIN_INTRODUCED, b"2\0"), (XsType.RESUME, b"2\0"),
                           (XsType.SET_TARGET, b"5\0" b"2\0"), (XsType.CONTROL, b"print\0x\0")]:
        assert guest.error(type_, payload) == "EACCES"
    assert daemon.is_introduced(2)
    assert guest.error(XsType.READ, b"/local/domain/2\0") == "EACCES"
    assert guest.error(XsType.READ, b"/local/domain/2/missing\0") == "EACCES"
    guest.ok(XsType.WRITE, b"data\0mine")           # relative to /local/domain/5
    assert Peer(daemon).ok(XsType.READ, b"/local/domain/5/data\0") == b"mine"
    assert guest.ok(XsType.GET_DOMAIN_PATH, b"5\0") == b"/local/domain/5\0"


def test_a_domains_quotas_come_back_as_xenstored_says_them(daemon):
    guest = Peer(daemon, Caller(5))
    for i in range(3):
        guest.ok(XsType.WATCH, f"data\0t{i}\0".encode())
    assert guest.error(XsType.WATCH, b"data\0t9\0") == "E2BIG"
    guest.ok(XsType.TRANSACTION_START, b"\0")
    guest.ok(XsType.TRANSACTION_START, b"\0")
    assert guest.error(XsType.TRANSACTION_START, b"\0") == "ENOSPC"
    assert guest.error(XsType.WRITE, b"data/big\0" + b"x" * 3000) == "ENOSPC"
    for i in range(60):
        reply = guest.call(XsType.WRITE, f"data/n{i}\0".encode())
    assert reply.type == XsType.ERROR and reply.payload == b"ENOSPC\0"


def test_per_connection_limits_hold_for_domain_0_too(daemon):
    daemon.limits = ConnectionLimits(watches=2, transactions=1)
    peer = Peer(daemon)
    peer.ok(XsType.WATCH, b"/a\0a\0")
    peer.ok(XsType.WATCH, b"/b\0b\0")
    assert peer.error(XsType.WATCH, b"/c\0c\0") == "E2BIG"
    peer.ok(XsType.UNWATCH, b"/a\0a\0")
    peer.ok(XsType.WATCH, b"/c\0c\0")
    peer.ok(XsType.TRANSACTION_START, b"\0")
    assert peer.error(XsType.TRANSACTION_START, b"\0") == "ENOSPC"


def test_transactions_belong_to_their_connection(daemon, dom0):
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    other = Peer(daemon)
    assert other.error(XsType.READ, b"/tool\0", tx=tx) == "ENOENT"
    assert other.error(XsType.TRANSACTION_END, b"T\0", tx=tx) == "ENOENT"
    assert dom0.error(XsType.TRANSACTION_START, b"\0", tx=tx) == "EBUSY"
    assert dom0.error(XsType.TRANSACTION_END, b"T\0") == "ENOENT"
    assert dom0.error(XsType.TRANSACTION_END, b"yes\0", tx=tx) == "EINVAL"
    dom0.ok(XsType.WRITE, b"/tool/t\0in-tx", tx=tx)
    assert other.error(XsType.READ, b"/tool/t\0") == "ENOENT"
    dom0.ok(XsType.TRANSACTION_END, b"T\0", tx=tx)
    assert other.ok(XsType.READ, b"/tool/t\0") == b"in-tx"
    assert dom0.error(XsType.READ, b"/tool/t\0", tx=tx) == "ENOENT"     # ended


def test_conflicting_writers_get_eagain_and_a_retry_commits(daemon, dom0):
    other = Peer(daemon)
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    dom0.ok(XsType.READ, b"/local/domain/0/name\0", tx=tx)
    dom0.ok(XsType.WRITE, b"/tool/counter\0" b"1", tx=tx)
    other.ok(XsType.WRITE, b"/tool/counter\0" b"9")
    assert dom0.error(XsType.TRANSACTION_END, b"T\0", tx=tx) == "EAGAIN"
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    value = dom0.ok(XsType.READ, b"/tool/counter\0", tx=tx)
    dom0.ok(XsType.WRITE, b"/tool/counter\0" + str(int(value) + 1).encode(), tx=tx)
    dom0.ok(XsType.TRANSACTION_END, b"T\0", tx=tx)
    assert other.ok(XsType.READ, b"/tool/counter\0") == b"10"


def test_closing_ends_the_connections_watches_and_transactions(daemon, dom0):
    dom0.ok(XsType.WATCH, b"/tool\0t\0")
    dom0.ok(XsType.TRANSACTION_START, b"\0")
    assert daemon.store.open_transactions(0) == 1
    dom0.conn.close()
    assert daemon.store.open_transactions(0) == 0 and not daemon.store.watches()
    assert dom0.conn not in daemon.connections


def test_reset_watches_ends_watches_and_transactions(daemon, dom0):
    dom0.ok(XsType.WATCH, b"/tool\0t\0")
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    dom0.ok(XsType.RESET_WATCHES, b"\0")
    assert not daemon.store.watches() and daemon.store.open_transactions(0) == 0
    assert dom0.error(XsType.READ, b"/\0", tx=tx) == "ENOENT"
    dom0.ok(XsType.WATCH, b"/tool\0t\0")        # the same watch may be set again


def test_rm_of_a_missing_node_is_fine_when_its_parent_exists(dom0):
    dom0.ok(XsType.RM, b"/tool/never\0")
    assert dom0.error(XsType.RM, b"/tool/never/deeper\0") == "ENOENT"
    assert dom0.error(XsType.RM, b"/\0") == "EINVAL"


def test_a_long_directory_is_e2big_and_comes_whole_by_directory_part(dom0):
    names = [f"child-with-a-long-name-{i:04d}" for i in range(200)]
    for name in names:
        dom0.ok(XsType.WRITE, f"/tool/big/{name}\0".encode())
    assert dom0.error(XsType.DIRECTORY, b"/tool/big\0") == "E2BIG"
    got, off, gens = b"", 0, set()
    while True:
        gen, part = dom0.ok(XsType.DIRECTORY_PART, f"/tool/big\0{off}\0".encode()).split(b"\0", 1)
        gens.add(gen)
        assert len(gen) + 1 + len(part) <= w.XENSTORE_PAYLOAD_MAX
        got += part
        off += len(part)
        if got.endswith(b"\0\0"):
            break
    assert len(gens) == 1
    assert got[:-1].split(b"\0")[:-1] == sorted(n.encode() for n in names)
    dom0.ok(XsType.WRITE, b"/tool/big/another\0")
    gen2, _ = dom0.ok(XsType.DIRECTORY_PART, b"/tool/big\0" b"0\0").split(b"\0", 1)
    assert gen2 not in gens
    assert dom0.ok(XsType.DIRECTORY_PART, b"/tool/big\0" b"999999\0").split(b"\0", 1)[1] == b"\0"
    empty = dom0.ok(XsType.DIRECTORY_PART, b"/local/domain/0/name\0" b"0\0")
    assert empty.split(b"\0", 1)[1] == b"\0"


def test_domain_table_requests(daemon, dom0):
    assert dom0.ok(XsType.IS_DOMAIN_INTRODUCED, b"2\0") == b"T\0"
    assert dom0.ok(XsType.IS_DOMAIN_INTRODUCED, b"7\0") == b"F\0"
    assert dom0.ok(XsType.IS_DOMAIN_INTRODUCED, b"32752\0") == b"T\0"     # DOMID_SELF
    assert dom0.ok(XsType.GET_DOMAIN_PATH, b"42\0") == b"/local/domain/42\0"
    dom0.ok(XsType.WATCH, b"@releaseDomain\0rel\0")
    dom0.ok(XsType.WATCH, b"@introduceDomain\0intro\0")
    dom0.out()
    assert dom0.error(XsType.RELEASE, b"7\0") == "ENOENT"
    assert dom0.error(XsType.RESUME, b"7\0") == "ENOENT"
    assert dom0.error(XsType.SET_TARGET, b"2\0" b"7\0") == "ENOENT"
    dom0.ok(XsType.SET_TARGET, b"2\0" b"1\0")
    assert daemon.domains[2].target == 1
    dom0.ok(XsType.RESUME, b"2\0")
    dom0.send(XsType.RELEASE, b"2\0")
    assert [(m.type, m.payload) for m in dom0.out()] == [
        (XsType.RELEASE, b"OK\0"), (XsType.WATCH_EVENT, b"@releaseDomain\0rel\0")]
    assert dom0.ok(XsType.IS_DOMAIN_INTRODUCED, b"2\0") == b"F\0"
    assert dom0.error(XsType.INTRODUCE, b"7\0" b"1\0" b"3\0") == "ENOENT"    # no such domain
    dom0.send(XsType.INTRODUCE, b"2\0" b"-1\0" b"3\0")
    assert [(m.type, m.payload) for m in dom0.out()] == [
        (XsType.INTRODUCE, b"OK\0"), (XsType.WATCH_EVENT, b"@introduceDomain\0intro\0")]
    dom0.ok(XsType.INTRODUCE, b"2\0" b"1\0" b"9\0")      # again: only the port changes
    assert daemon.domains[2].port == 9 and dom0.out() == []


def test_releasing_a_domain_drops_its_connection(daemon):
    guest = Peer(daemon, Caller(2))
    guest.ok(XsType.WATCH, b"data\0t\0")
    Peer(daemon).ok(XsType.RELEASE, b"2\0")
    assert guest.conn.closed and guest.conn.error == w.XENSTORE_ERROR_COMM


def test_control_print_help_and_quota(dom0, caplog):
    caplog.set_level(logging.INFO, logger="xenlab.hypervisor.xenstored")
    assert dom0.ok(XsType.CONTROL, b"print\0hello from the tools\0") == b"OK\0"
    assert "control: hello from the tools" in [r.getMessage() for r in caplog.records]
    assert b"print\t<string>" in dom0.ok(XsType.CONTROL, b"help\0")
    assert b"Watches per domain: 3" in dom0.ok(XsType.CONTROL, b"quota\0")
    assert b"nodes: " in dom0.ok(XsType.CONTROL, b"quota\0" b"5\0")
    assert dom0.error(XsType.CONTROL, b"quota\0set\0nodes\0" b"1\0") == "EINVAL"


def test_a_reply_too_long_for_a_payload_is_e2big(daemon, dom0):
    # No value is over 4096 bytes, but a directory's names can add up past
    # it: XS_DIRECTORY says E2BIG (DIRECTORY_PART is the way to list it).
    for i in range(80):
        daemon.store.write(Caller(0, True), f"/tool/huge/{'n' * 60}{i:03d}", b"")
    assert dom0.error(XsType.DIRECTORY, b"/tool/huge\0") == "E2BIG"


def test_a_client_that_writes_without_reading_stalls_itself(daemon):
    daemon.limits = ConnectionLimits(backlog=1000, input=1 << 20)
    peer = Peer(daemon)
    stream = b"".join(w.encode(XsMessage(XsType.READ, i, 0, b"/local/domain/0/name\0"))
                      for i in range(1, 501))
    peer.conn.receive(stream)
    assert 0 < peer.conn.stats["requests"] < 500
    assert not peer.conn.wants_input and not peer.conn.closed
    got = []
    while len(got) < 500:
        peer.reader.feed(peer.conn.take(100))
        while (m := peer.reader.next()) is not None:
            got.append(m)
        peer.conn.process()
    assert [m.req_id for m in got] == list(range(1, 501))
    assert all(m.payload == b"Domain-0" for m in got)


def test_a_client_that_leaves_events_unread_is_dropped(daemon, caplog):
    daemon.limits = ConnectionLimits(output=10_000)
    slow, writer = Peer(daemon), Peer(daemon)
    slow.ok(XsType.WATCH, b"/tool\0t\0")
    slow.out()
    for i in range(1000):
        writer.ok(XsType.WRITE, f"/tool/n{i}\0".encode())
        if slow.conn.closed:
            break
    assert slow.conn.closed and slow.conn.error == w.XENSTORE_ERROR_COMM
    assert not [x for x in daemon.store.watches() if x.conn is slow.conn]
    assert writer.ok(XsType.READ, b"/tool/n1\0") == b""


def test_identical_unsent_events_are_merged(daemon, dom0):
    writer = Peer(daemon)
    dom0.ok(XsType.WATCH, b"/tool\0t\0")
    dom0.ok(XsType.WATCH, b"@introduceDomain\0i\0")
    dom0.out()
    for _ in range(5):
        writer.ok(XsType.WRITE, b"/tool/same\0x")
    daemon.introduce(1)                 # already introduced: nothing fires
    daemon.store.introduce_domain(9)
    daemon.store.introduce_domain(9)
    assert [m.payload for m in dom0.out()] == [
        b"/tool/same\0t\0", b"@introduceDomain\0i\0", b"@introduceDomain\0i\0"]
    assert dom0.conn.stats["events_merged"] == 4


def test_an_event_too_long_for_a_payload_is_dropped_and_counted(daemon, dom0):
    token = b"t" * 3000
    dom0.ok(XsType.WATCH, b"/tool\0" + token + b"\0")
    dom0.out()
    deep = "/tool/" + "/".join(["d" * 100] * 15)
    Peer(daemon).ok(XsType.WRITE, deep.encode() + b"\0")
    assert dom0.out() == [] and dom0.conn.stats["events_too_long"] >= 1


def test_take_cuts_messages_anywhere(dom0):
    dom0.send(XsType.READ, b"/local/domain/0/name\0")
    dom0.send(XsType.READ, b"/local/domain/0/domid\0")
    pieces = []
    while piece := dom0.conn.take(5):
        assert len(piece) <= 5
        pieces.append(piece)
    dom0.reader.feed(b"".join(pieces))
    assert dom0.reader.next().payload == b"Domain-0"
    assert dom0.reader.next().payload == b"0"
    assert dom0.conn.pending_output == 0


def test_errors_not_in_xsd_errors_go_as_einval(dom0, monkeypatch):
    from xenlab.xen.errors import XenStoreError

    def broken(*a, **k):
        raise XenStoreError(errno.ETIMEDOUT, "not a wire error")
    monkeypatch.setattr(dom0.conn.store, "read", broken)
    assert dom0.error(XsType.READ, b"/\0") == "EINVAL"


def test_set_target_gives_a_domain_its_targets_rights(daemon):
    """SET_TARGET 2 1: domain 2 (a device model, say) acts for domain 1 on
    its nodes, as xenstored's perm_for_conn, until domain 1 is released."""
    dm, dom0 = Peer(daemon, Caller(2)), Peer(daemon)
    dom0.ok(XsType.WRITE, b"/local/domain/1/data\0")
    dom0.ok(XsType.SET_PERMS, b"/local/domain/1/data\0n1\0")
    assert dm.error(XsType.READ, b"/local/domain/1/data\0") == "EACCES"
    dom0.ok(XsType.SET_TARGET, b"2\0" b"1\0")
    dm.ok(XsType.WRITE, b"/local/domain/1/data/from-dm\0hello")
    assert dm.ok(XsType.READ, b"/local/domain/1/data/from-dm\0") == b"hello"
    dm.ok(XsType.SET_PERMS, b"/local/domain/1/data\0n1\0r5\0")      # its owner's to set
    assert dm.error(XsType.SET_PERMS, b"/local/domain/1/data\0n2\0") == "EPERM"
    dm.send(XsType.WATCH, b"/local/domain/1/data\0dm\0")
    dm.out()
    Peer(daemon, Caller(1)).ok(XsType.WRITE, b"/local/domain/1/data/x\0")
    assert [m.payload for m in dm.out()] == [b"/local/domain/1/data/x\0dm\0"]
    assert Peer(daemon, Caller(7)).error(XsType.READ, b"/local/domain/1/data\0") == "EACCES"
    dom0.ok(XsType.RELEASE, b"1\0")
    assert daemon.domains[2].target is None
    assert dm.error(XsType.READ, b"/local/domain/1/data\0") == "EACCES"


# -- counts, bounds and words a client (or the toolstack) can observe ---------

def test_a_connection_counts_its_requests_errors_and_events(daemon, dom0):
    dom0.ok(XsType.WATCH, b"/tool\0t\0")
    dom0.error(XsType.READ, b"/nope\0")
    Peer(daemon).ok(XsType.WRITE, b"/tool/x\0")
    dom0.out()
    assert dom0.conn.stats == {"requests": 2, "errors": 1, "events": 2, "events_merged": 0,
                               "events_too_long": 0}


def test_connections_are_named_after_their_domain_in_order(daemon):
    a, b = daemon.connect(Caller(1)), daemon.connect(Caller(2), name="qemu")
    c = daemon.connect(Caller(1))
    assert (a.name, b.name, c.name) == ("d1#1", "qemu", "d1#3")
    assert repr(a) == "<XsConnection d1#1>" and {a, b, c} <= daemon.connections


def test_a_batch_of_requests_yields_to_other_connections(daemon):
    daemon.limits = ConnectionLimits(batch=3)
    peer = Peer(daemon)
    stream = b"".join(w.encode(XsMessage(XsType.READ, i, 0, b"/local/domain/0/name\0"))
                      for i in range(1, 6))
    assert peer.conn.receive(stream) == 3
    assert [m.req_id for m in peer.out()] == [1, 2, 3]
    assert peer.conn.process() == 2 and peer.conn.process() == 0
    assert [m.req_id for m in peer.out()] == [4, 5]


def test_requests_wait_exactly_while_the_backlog_is_full(daemon):
    reply = len(w.encode(XsMessage(XsType.READ, 1, 0, b"Domain-0")))
    daemon.limits = ConnectionLimits(backlog=2 * reply)
    peer = Peer(daemon)
    stream = b"".join(w.encode(XsMessage(XsType.READ, i, 0, b"/local/domain/0/name\0"))
                      for i in range(1, 5))
    assert peer.conn.receive(stream) == 2
    assert peer.conn.pending_output == 2 * reply and not peer.conn.wants_input
    peer.conn.take(1)
    assert peer.conn.pending_output == 2 * reply - 1 and peer.conn.wants_input
    assert peer.conn.process() == 1


def test_input_is_read_until_exactly_the_input_limit(daemon):
    daemon.limits = ConnectionLimits(input=20)
    peer = Peer(daemon)
    head = w.HEADER.pack(XsType.WRITE, 1, 0, 100)
    peer.conn.receive(head + b"x" * 3)
    assert peer.conn.reader.buffered == 19 and peer.conn.wants_input
    peer.conn.receive(b"x")
    assert peer.conn.reader.buffered == 20 and not peer.conn.wants_input


def test_output_may_reach_exactly_the_limit(daemon):
    ack = w.encode(XsMessage(XsType.WATCH, 1, 0, b"OK\0"))
    event = w.encode(XsMessage(XsType.WATCH_EVENT, 0, 0, b"/tool\0t\0"))
    daemon.limits = ConnectionLimits(output=len(ack) + len(event))
    peer = Peer(daemon)
    peer.send(XsType.WATCH, b"/tool\0t\0")
    assert not peer.conn.closed and peer.conn.pending_output == len(ack) + len(event)
    Peer(daemon).ok(XsType.WRITE, b"/tool/x\0")
    assert peer.conn.closed and peer.conn.error == w.XENSTORE_ERROR_COMM
    assert peer.conn.reason == (f"{len(ack) + 2 * len(event) + 2} bytes of replies and watch events "
                                f"unread (the most is {len(ack) + len(event)})")
    assert peer.conn.pending_output == 0 and peer.conn.take() == b""


def test_a_failed_connection_keeps_its_first_reason_and_wakes_once(daemon):
    peer = Peer(daemon)
    peer.conn.fail(w.XENSTORE_ERROR_RINGIDX, "bad index")
    peer.conn.fail(w.XENSTORE_ERROR_COMM, "later")
    peer.conn.close()
    assert (peer.conn.error, peer.conn.reason, peer.wakes) == (w.XENSTORE_ERROR_RINGIDX, "bad index", 1)
    assert peer.conn.receive(w.encode(XsMessage(XsType.READ, 1, 0, b"/\0"))) == 0
    peer.conn.fire("/tool", "t")
    assert peer.conn.take() == b""


def test_special_events_are_never_merged_and_others_merge_only_unsent(daemon, dom0):
    dom0.ok(XsType.WATCH, b"/tool\0t\0")
    dom0.out()
    dom0.conn.fire("/tool/a", "t")
    dom0.conn.fire("/tool/a", "t")
    assert (dom0.conn.stats["events"], dom0.conn.stats["events_merged"]) == (2, 1)   # and the watch's own
    first = dom0.conn.take(20)                     # the first is partly sent: no longer mergeable
    dom0.conn.fire("/tool/a", "t")
    dom0.conn.fire("@releaseDomain", "r")
    dom0.conn.fire("@releaseDomain", "r")
    assert (dom0.conn.stats["events"], dom0.conn.stats["events_merged"]) == (5, 1)
    sent = first + dom0.conn.take()
    assert sent.count(b"@releaseDomain\0r\0") == 2 and sent.count(b"/tool/a\0t\0") == 2
    dom0.conn.fire("/tool/a", "t")                 # all sent: a new one goes out
    assert (dom0.conn.stats["events"], dom0.conn.stats["events_merged"]) == (6, 1)


def test_an_event_of_exactly_a_payload_is_sent(daemon, dom0):
    token = "t" * (w.XENSTORE_PAYLOAD_MAX - len("/tool\0") - 1)
    dom0.conn.fire("/tool", token)
    assert dom0.conn.stats == {"requests": 0, "errors": 0, "events": 1, "events_merged": 0,
                               "events_too_long": 0}
    dom0.conn.fire("/tool", token + "t")
    assert dom0.conn.stats["events_too_long"] == 1 and dom0.conn.stats["events"] == 1
    (event,) = dom0.out()
    assert len(event.payload) == w.XENSTORE_PAYLOAD_MAX


def test_events_a_request_causes_follow_its_reply(daemon, dom0):
    dom0.ok(XsType.WATCH, b"/tool\0t\0")
    dom0.out()
    dom0.send(XsType.WRITE, b"/tool/x\0")
    out = dom0.out()
    assert [(m.type, m.req_id) for m in out] == [(XsType.WRITE, dom0.req), (XsType.WATCH_EVENT, 0)]


def test_watch_and_unwatch_ignore_the_transaction_id(daemon, dom0):
    assert dom0.ok(XsType.WATCH, b"/tool\0t\0", tx=77) == b"OK\0"
    assert dom0.ok(XsType.UNWATCH, b"/tool\0t\0", tx=77) == b"OK\0"
    assert dom0.error(XsType.READ, b"/tool\0", tx=77) == "ENOENT"


def test_quota_errors_map_to_what_xenstored_answers():
    from xenlab.hypervisor.xenstored import XsConnection
    wire = XsConnection._wire_errno
    assert wire(XsType.WATCH, errno.EDQUOT) == errno.E2BIG
    assert wire(XsType.WRITE, errno.EDQUOT) == errno.ENOSPC
    assert wire(XsType.READ, errno.ESRCH) == errno.ENOENT
    assert wire(XsType.READ, errno.EACCES) == errno.EACCES


def test_unwatch_gives_the_connection_its_watch_back(daemon):
    daemon.limits = ConnectionLimits(watches=1)
    peer = Peer(daemon)
    peer.ok(XsType.WATCH, b"/a\0a\0")
    assert peer.error(XsType.WATCH, b"/b\0b\0") == "E2BIG"
    assert peer.error(XsType.UNWATCH, b"/b\0b\0") == "ENOENT"
    assert peer.error(XsType.WATCH, b"/b\0b\0") == "E2BIG"      # a failed unwatch gave nothing back
    peer.ok(XsType.UNWATCH, b"/a\0a\0")
    peer.ok(XsType.WATCH, b"/b\0b\0")


def test_the_connection_transaction_limit_is_exact_and_freed_by_an_end(daemon):
    daemon.limits = ConnectionLimits(transactions=2)
    peer = Peer(daemon)
    t1 = int(peer.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    peer.ok(XsType.TRANSACTION_START, b"\0")
    assert peer.error(XsType.TRANSACTION_START, b"\0") == "ENOSPC"
    assert peer.ok(XsType.TRANSACTION_END, b"F\0", tx=t1) == b"OK\0"
    assert peer.ok(XsType.TRANSACTION_START, b"\0").endswith(b"\0")


def test_a_transaction_start_answers_its_id_as_decimal(daemon, dom0):
    tx = dom0.ok(XsType.TRANSACTION_START, b"\0")
    assert tx[:-1].isdigit() and tx[-1:] == b"\0"
    assert daemon.store.open_transactions(0) == 1
    assert dom0.ok(XsType.TRANSACTION_END, b"T\0", tx=int(tx[:-1])) == b"OK\0"
    assert daemon.store.open_transactions(0) == 0


def test_rm_of_a_missing_node_under_an_unreadable_parent_stays_refused(daemon):
    guest = Peer(daemon, Caller(5))
    guest.ok(XsType.RM, b"missing\0")                              # relative: its home is there
    assert guest.error(XsType.RM, b"/local/domain/1/missing\0") == "EACCES"
    assert guest.error(XsType.RM, b"nohere/missing\0") == "ENOENT"
    Peer(daemon).ok(XsType.WRITE, b"/local/domain/1/ro\0")
    assert guest.error(XsType.RM, b"/local/domain/1/ro\0") == "EACCES"


def test_set_perms_needs_a_path_and_one_permission(daemon, dom0):
    assert dom0.error(XsType.SET_PERMS, b"/tool\0") == "EINVAL"
    assert dom0.ok(XsType.SET_PERMS, b"/tool\0r0\0") == b"OK\0"
    assert dom0.ok(XsType.GET_PERMS, b"/tool\0") == b"r0\0"
    assert dom0.ok(XsType.SET_PERMS, b"/tool\0n0\0w3\0") == b"OK\0"
    assert dom0.ok(XsType.GET_PERMS, b"/tool\0") == b"n0\0w3\0"


def test_set_target_needs_two_domains(daemon, dom0):
    assert dom0.error(XsType.SET_TARGET, b"1\0") == "EINVAL"
    assert dom0.error(XsType.SET_TARGET, b"7\0" b"1\0") == "ENOENT"
    assert dom0.ok(XsType.SET_TARGET, b"1\0" b"2\0") == b"OK\0"
    assert daemon.domains[1].target == 2 and daemon.domains[2].target is None


def test_introduce_takes_the_highest_real_domid_and_a_positive_channel(daemon, dom0):
    daemon._domain_exists = lambda d: True
    assert dom0.ok(XsType.INTRODUCE, b"32751\0" b"7\0" b"1\0") == b"OK\0"
    assert (daemon.domains[32751].gfn, daemon.domains[32751].port) == (7, 1)
    assert dom0.error(XsType.INTRODUCE, b"32752\0" b"7\0" b"1\0") == "EINVAL"
    assert dom0.error(XsType.INTRODUCE, b"9\0" b"7\0" b"-1\0") == "EINVAL"
    assert dom0.error(XsType.INTRODUCE, b"9\0" b"x7\0" b"1\0") == "EINVAL"
    assert dom0.error(XsType.RELEASE, b"0\0") == "EINVAL" and dom0.error(XsType.RESUME, b"0\0") == "EINVAL"


class Rings:
    def __init__(self):
        self.calls = []

    def attach(self, dom):
        self.calls.append(("attach", dom.domid, dom.port))

    def rebind(self, dom, port):
        self.calls.append(("rebind", dom.domid, port))

    def detach(self, domid):
        self.calls.append(("detach", domid))


def test_the_domain_table_drives_the_store_rings(daemon):
    daemon.rings = rings = Rings()
    daemon.introduce(5, gfn=3, port=4)                  # known already: only its port changes
    daemon.introduce(5, gfn=3, port=4)                  # the same port: nothing to rebind
    daemon.introduce(5, gfn=3)                          # no port: keeps the one it has
    assert daemon.domains[5].port == 4
    daemon.release(5)
    daemon._domain_exists = lambda d: d == 5
    daemon.introduce(5)                                 # no port: no ring to attach
    daemon.release(5)
    dom = daemon.introduce(5, gfn=3, port=6)
    assert (dom.domid, dom.gfn, dom.port) == (5, 3, 6)
    assert rings.calls == [("rebind", 5, 4), ("detach", 5), ("detach", 5), ("attach", 5, 6)]


def test_an_unknown_domain_is_not_introduced_and_says_so(daemon):
    with pytest.raises(XenStoreError) as err:
        daemon.introduce(9)
    assert err.value.errno == errno.ENOENT and err.value.message == "there is no domain 9 to introduce"
    with pytest.raises(XenStoreError) as err:
        daemon.find(9)
    assert err.value.errno == errno.ENOENT and err.value.message == "domain 9 is not introduced"
    assert not daemon.is_introduced(9) and daemon.is_introduced(0)


def test_releasing_a_domain_drops_only_its_connections_and_targets(daemon):
    mine, other, dom0 = Peer(daemon, Caller(2)), Peer(daemon, Caller(5)), Peer(daemon)
    dom0.ok(XsType.SET_TARGET, b"5\0" b"2\0")
    assert other.conn.caller.target == 2
    daemon.release(2)
    assert mine.conn.closed and not other.conn.closed and not dom0.conn.closed
    assert daemon.domains[5].target is None and other.conn.caller.target is None
    daemon.release(0)                                   # Domain-0's own connections stay
    assert not dom0.conn.closed


def test_retarget_changes_only_that_domains_connections(daemon):
    a, b = Peer(daemon, Caller(1)), Peer(daemon, Caller(2))
    daemon.domains[1].target = 5
    daemon.retarget(daemon.domains[1])
    assert (a.conn.caller.domid, a.conn.caller.target, a.conn.caller.privileged) == (1, 5, False)
    assert b.conn.caller.target is None


def test_control_help_lists_every_command_with_its_usage(dom0):
    assert dom0.ok(XsType.CONTROL, b"help\0") == b"print\t<string>\nquota\t[<domid>]\nhelp\t\n\0"
    assert dom0.error(XsType.CONTROL, b"help\0x\0") == "EINVAL"
    assert dom0.error(XsType.CONTROL, b"print\0a\0b\0") == "EINVAL"


def test_control_quota_reports_the_quotas_and_a_domains_use(daemon, dom0):
    assert dom0.ok(XsType.CONTROL, b"quota\0") == (
        b"Nodes per domain: 50\nWatches per domain: 3\nTransactions per domain: 2\n"
        b"Max. size of a node: 2048\nMax. length of a node path: 3072\n"
        b"Max. number of permissions per node: 5\n\0")
    guest = Peer(daemon, Caller(5))
    guest.ok(XsType.WATCH, b"data\0t\0")
    guest.ok(XsType.WRITE, b"data\0")
    guest.ok(XsType.TRANSACTION_START, b"\0")
    assert dom0.ok(XsType.CONTROL, b"quota\0" b"5\0") == (
        b"Domain 5:\nnodes: 2\nwatches: 1\ntransactions: 1\n\0")
    assert dom0.error(XsType.CONTROL, b"quota\0" b"9\0") == "ENOENT"
    assert dom0.error(XsType.CONTROL, b"quota\0x\0") == "EINVAL"


def test_directory_part_answers_from_any_offset_to_the_end(dom0):
    # Names that, with their NULs, fill the payload to the byte after the generation.
    gen = dom0.ok(XsType.DIRECTORY_PART, b"/tool\0" b"0\0").split(b"\0", 1)[0]
    room = w.XENSTORE_PAYLOAD_MAX - len(gen) - 1
    dom0.ok(XsType.WRITE, b"/tool/d\0")
    names = [f"{i:03d}" + "n" * 96 for i in range(room // 100)]
    for name in names:
        dom0.ok(XsType.WRITE, f"/tool/d/{name}\0".encode())
    first = dom0.ok(XsType.DIRECTORY_PART, b"/tool/d\0" b"0\0")
    gen, part = first.split(b"\0", 1)
    listed = b"".join(n.encode() + b"\0" for n in names)
    assert len(listed) < room and part == listed + b"\0"
    off = len(listed) - 100
    tail = dom0.ok(XsType.DIRECTORY_PART, f"/tool/d\0{off}\0".encode()).split(b"\0", 1)[1]
    assert tail == listed[off:] + b"\0"
    assert dom0.ok(XsType.DIRECTORY_PART, f"/tool/d\0{len(listed)}\0".encode()).split(b"\0", 1)[1] == b"\0"
    assert dom0.error(XsType.DIRECTORY_PART, b"/tool/d\0" b"-1\0") == "EINVAL"


# What the debug log says of each refusal: the wire carries only the errno's
# name, so the reason is for whoever reads xenstored's log.
@pytest.mark.parametrize("type_, payload, tx, logged", [
    (XsType.CONTROL, b"", 0, "EINVAL: CONTROL: expected a command"),
    (XsType.CONTROL, b"nosuch\0", 0, "EINVAL: CONTROL: unknown command 'nosuch' (try help)"),
    (XsType.CONTROL, b"help\0x\0", 0, "EINVAL: CONTROL help takes no parameter"),
    (XsType.CONTROL, b"print\0", 0, "EINVAL: CONTROL print: expected one string"),
    (XsType.CONTROL, b"quota\0a\0b\0", 0,
     "EINVAL: CONTROL quota: no parameter, or a domain id (the quotas are set when the hypervisor starts)"),
    (XsType.CONTROL, b"quota\0" b"9\0", 0, "ENOENT: domain 9 is not introduced"),
    (XsType.GET_DOMAIN_PATH, b"1", 0,
     "EINVAL: GET_DOMAIN_PATH: the payload must be one NUL-terminated string"),
    (XsType.IS_DOMAIN_INTRODUCED, b"1", 0,
     "EINVAL: IS_DOMAIN_INTRODUCED: the payload must be one NUL-terminated string"),
    (XsType.MKDIR, b"/a", 0, "EINVAL: MKDIR: the payload must be one NUL-terminated string"),
    (XsType.DIRECTORY, b"/a", 0, "EINVAL: DIRECTORY: the payload must be one NUL-terminated string"),
    (XsType.READ, b"/a", 0, "EINVAL: READ: the payload must be one NUL-terminated string"),
    (XsType.RM, b"/a", 0, "EINVAL: RM: the payload must be one NUL-terminated string"),
    (XsType.GET_PERMS, b"/a", 0, "EINVAL: GET_PERMS: the payload must be one NUL-terminated string"),
    (XsType.WRITE, b"\0v", 0, "EINVAL: invalid path ''"),
    (XsType.RELEASE, b"1", 0, "EINVAL: RELEASE: the payload must be one NUL-terminated string"),
    (XsType.RESUME, b"1", 0, "EINVAL: RESUME: the payload must be one NUL-terminated string"),
    (XsType.INTRODUCE, b"5\0" b"1\0", 0,
     "EINVAL: INTRODUCE: expected a domain id, a gfn and an event channel"),
    (XsType.INTRODUCE, b"32752\0" b"1\0" b"3\0", 0, "EINVAL: INTRODUCE: 32752 is not a real domain id"),
    (XsType.INTRODUCE, b"5\0" b"X5\0" b"3\0", 0,
     "EINVAL: INTRODUCE: the gfn and the event channel are decimal numbers, the channel above 0"),
    (XsType.SET_PERMS, b"/tool\0", 0, "EINVAL: SET_PERMS: expected a path and at least one permission"),
    (XsType.SET_PERMS, b"/tool\0x0\0", 0,
     "EINVAL: bad permission b'x0': n, r, w or b and a domain id"),
    (XsType.SET_TARGET, b"1\0", 0, "EINVAL: SET_TARGET: expected two domain ids"),
    (XsType.TRANSACTION_END, b"f\0", 1, "EINVAL: TRANSACTION_END: the payload is T (commit) or F (abort)"),
    (XsType.TRANSACTION_END, b"F\0", 0, "ENOENT: TRANSACTION_END outside a transaction"),
    (XsType.TRANSACTION_START, b"\0", 1, "EBUSY: TRANSACTION_START inside a transaction"),
    (XsType.UNWATCH, b"/tool\0", 0, "EINVAL: UNWATCH: expected a path and a token"),
    (XsType.WATCH, b"/tool\0", 0, "EINVAL: WATCH: expected a path and a token"),
    (XsType.WRITE, b"/tool", 0, "EINVAL: WRITE: the path must be NUL-terminated"),
    (XsType.DIRECTORY_PART, b"/tool\0", 0, "EINVAL: DIRECTORY_PART: expected a path and an offset"),
    (XsType.DIRECTORY_PART, b"/tool\0x\0", 0, "EINVAL: DIRECTORY_PART: bad offset b'x'"),
    (XsType.READ, b"/tool\0", 99, "ENOENT: this connection has no transaction 99"),
    (XsType.GET_FEATURE, b"", 0, "ENOSYS: GET_FEATURE is not a request xenstored serves"),
    (XsType.RELEASE, b"0\0", 0, "EINVAL: Domain-0 cannot be introduced, released or resumed"),
    (XsType.RELEASE, b"x\0", 0, "EINVAL: bad domain id b'x'"),
])
def test_every_refusal_logs_its_reason(daemon, caplog, type_, payload, tx, logged):
    caplog.set_level(logging.DEBUG, logger="xenlab.hypervisor.xenstored")
    peer = Peer(daemon)
    if tx:
        tx = int(peer.ok(XsType.TRANSACTION_START, b"\0")[:-1]) if tx == 1 else tx
    expected = logged.split(":", 1)[0]
    assert peer.error(type_, payload, tx) == expected
    name = XsMessage(type_).type_name
    assert caplog.records[-1].getMessage() == f"xenstored: {peer.conn.name}: {name} req {peer.req}: {logged}"


def test_a_domains_privileged_request_and_a_full_connection_log_why(daemon, caplog):
    caplog.set_level(logging.DEBUG, logger="xenlab.hypervisor.xenstored")
    guest = Peer(daemon, Caller(5))
    assert guest.error(XsType.RELEASE, b"2\0") == "EACCES"
    assert caplog.records[-1].getMessage().endswith("EACCES: RELEASE is for the toolstack only")
    daemon.limits = ConnectionLimits(transactions=1, watches=1)
    peer = Peer(daemon)
    peer.ok(XsType.TRANSACTION_START, b"\0")
    assert peer.error(XsType.TRANSACTION_START, b"\0") == "ENOSPC"
    assert caplog.records[-1].getMessage().endswith(
        "ENOSPC: this connection has 1 transactions open, the most allowed")
    peer.ok(XsType.WATCH, b"/a\0a\0")
    assert peer.error(XsType.WATCH, b"/b\0b\0") == "E2BIG"
    assert caplog.records[-1].getMessage().endswith(
        "E2BIG: this connection has 1 watches, the most allowed")


def test_mkdir_set_perms_and_unwatch_act_for_the_caller_in_its_transaction(daemon):
    guest = Peer(daemon, Caller(5))
    tx = int(guest.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    assert guest.ok(XsType.MKDIR, b"dir\0", tx=tx) == b"OK\0"
    assert guest.ok(XsType.SET_PERMS, b"dir\0n5\0r1\0", tx=tx) == b"OK\0"
    assert guest.error(XsType.READ, b"dir\0") == "ENOENT"
    guest.ok(XsType.TRANSACTION_END, b"T\0", tx=tx)
    assert daemon.store.get_perms(Caller(0, True), "/local/domain/5/dir") == [(5, "n"), (1, "r")]
    guest.ok(XsType.WATCH, b"dir\0t\0")
    guest.ok(XsType.UNWATCH, b"dir\0t\0")
    assert daemon.store.watch_count(5) == 0


def test_releasing_an_unknown_domain_is_harmless_and_a_released_ones_nodes_go_to_dom0(daemon):
    daemon.release(9)
    guest = Peer(daemon, Caller(5))
    guest.ok(XsType.WRITE, b"mine\0")
    daemon.release(5)
    assert guest.conn.reason == "the domain was released"
    assert daemon.store.get_perms(Caller(0, True), "/local/domain/5/mine")[0][0] == 0


def test_reintroducing_with_a_new_channel_rebinds_at_once(daemon):
    daemon.rings = rings = Rings()
    daemon.introduce(5, gfn=3, port=4)
    assert rings.calls == [("rebind", 5, 4)]
    daemon.introduce(5, gfn=3, port=4)
    assert rings.calls == [("rebind", 5, 4)]
    daemon._domain_exists = lambda d: True
    assert daemon.introduce(9).gfn == 0 and daemon.introduce(9).port == 0


def test_directory_answers_from_the_transaction(dom0):
    dom0.ok(XsType.MKDIR, b"/tool/t\0")
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    dom0.ok(XsType.WRITE, b"/tool/t/intx\0", tx=tx)
    assert dom0.ok(XsType.DIRECTORY, b"/tool/t\0", tx=tx) == b"intx\0"
    assert dom0.ok(XsType.DIRECTORY, b"/tool/t\0") == b""
    part = dom0.ok(XsType.DIRECTORY_PART, b"/tool/t\0" b"0\0", tx=tx).split(b"\0", 1)[1]
    assert part == b"intx\0\0"


def _fill_to(dom0, room_extra: int) -> tuple[bytes, bytes]:
    """Children of /tool/fit whose list is `room_extra` bytes longer than what
    fits in one DIRECTORY_PART after its generation; the first part. The
    generation's length depends on the list, so the last name is tried in a
    few spellings until one gives the length it was sized for."""
    dom0.ok(XsType.WRITE, b"/tool/fit\0")
    for i in range(39):                                           # 39 x 100 bytes with NULs
        dom0.ok(XsType.WRITE, f"/tool/fit/n{i:02d}{'x' * 96}\0".encode())
    for ch in "zyxwvuts":
        for digits in (19, 20, 18, 17):
            room = w.XENSTORE_PAYLOAD_MAX - (digits + 1) - 1       # what a part may carry
            name = ch * (room - 39 * 100 + room_extra - 1)
            dom0.ok(XsType.WRITE, f"/tool/fit/{name}\0".encode())
            reply = dom0.ok(XsType.DIRECTORY_PART, b"/tool/fit\0" b"0\0")
            gen = reply.split(b"\0", 1)[0]
            if len(gen) == digits:
                return gen, reply
            dom0.ok(XsType.RM, f"/tool/fit/{name}\0".encode())
    raise AssertionError("no spelling gave a generation of the length sized for")


def test_directory_part_fills_a_payload_to_the_byte(dom0):
    gen, reply = _fill_to(dom0, 0)
    assert len(reply) == w.XENSTORE_PAYLOAD_MAX and reply.endswith(b"\0\0")


def test_directory_part_leaves_a_name_that_would_pass_the_payload_for_the_next_part(dom0):
    gen, reply = _fill_to(dom0, 1)
    assert len(reply) == len(gen) + 1 + 39 * 100                  # the 39, not the last
    assert not reply.endswith(b"\0\0")
    rest = dom0.ok(XsType.DIRECTORY_PART, f"/tool/fit\0{len(reply) - len(gen) - 1}\0".encode())
    part = rest.split(b"\0", 1)[1]
    assert part.endswith(b"\0\0") and len(set(part[:-2])) == 1        # the last name, alone


def test_resetting_and_unwatching_give_the_connection_its_watches_back(daemon):
    daemon.limits = ConnectionLimits(watches=2)
    peer = Peer(daemon)
    peer.ok(XsType.WATCH, b"/a\0a\0")
    peer.ok(XsType.WATCH, b"/b\0b\0")
    peer.ok(XsType.UNWATCH, b"/a\0a\0")
    peer.ok(XsType.WATCH, b"/c\0c\0")
    assert peer.error(XsType.WATCH, b"/d\0d\0") == "E2BIG"
    peer.ok(XsType.RESET_WATCHES, b"\0")
    peer.ok(XsType.WATCH, b"/a\0a\0")
    peer.ok(XsType.WATCH, b"/b\0b\0")


def test_closing_a_connection_aborts_its_transactions(daemon, caplog):
    peer = Peer(daemon)
    tx = int(peer.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    peer.ok(XsType.WRITE, b"/tool/uncommitted\0", tx=tx)
    peer.conn.fail(w.XENSTORE_ERROR_COMM, "gone")
    assert not daemon.store.exists("/tool/uncommitted")
    assert "xenstored: dropping d0#1: gone" in [r.getMessage() for r in caplog.records]


def test_every_request_in_a_transaction_sees_the_transaction(daemon, dom0):
    dom0.ok(XsType.WRITE, b"/tool/old\0o")
    tx = int(dom0.ok(XsType.TRANSACTION_START, b"\0")[:-1])
    dom0.ok(XsType.WRITE, b"/tool/new/leaf\0v\0with a NUL", tx=tx)
    assert dom0.ok(XsType.READ, b"/tool/new/leaf\0", tx=tx) == b"v\0with a NUL"
    assert dom0.error(XsType.READ, b"/tool/new/leaf\0") == "ENOENT"
    dom0.ok(XsType.SET_PERMS, b"/tool/new\0r0\0", tx=tx)
    assert dom0.ok(XsType.GET_PERMS, b"/tool/new\0", tx=tx) == b"r0\0"
    dom0.ok(XsType.RM, b"/tool/old\0", tx=tx)
    assert dom0.error(XsType.READ, b"/tool/old\0", tx=tx) == "ENOENT"
    assert dom0.ok(XsType.READ, b"/tool/old\0") == b"o"
    dom0.ok(XsType.RM, b"/tool/new/gone\0", tx=tx)            # missing, its parent only in tx: fine
    dom0.ok(XsType.TRANSACTION_END, b"T\0", tx=tx)
    assert dom0.error(XsType.READ, b"/tool/old\0") == "ENOENT"


def test_a_reply_of_exactly_a_payload_is_sent_and_one_more_is_e2big(daemon, dom0, caplog):
    caplog.set_level(logging.DEBUG, logger="xenlab.hypervisor.xenstored")
    store = daemon.store
    # 4096 bytes of names with their NULs: 40 x 100 + 96
    for i in range(40):
        store.write(Caller(0, True), f"/tool/d/{i:02d}{'n' * 97}", b"")
    store.write(Caller(0, True), "/tool/d/z" + "z" * 94, b"")
    assert len(dom0.ok(XsType.DIRECTORY, b"/tool/d\0")) == w.XENSTORE_PAYLOAD_MAX
    store.write(Caller(0, True), "/tool/d/z" + "z" * 95, b"")
    assert dom0.error(XsType.DIRECTORY, b"/tool/d\0") == "E2BIG"
    assert caplog.records[-1].getMessage().endswith(
        f"E2BIG: the answer to DIRECTORY is {w.XENSTORE_PAYLOAD_MAX + 97} bytes, more than a payload")


def test_events_too_long_are_counted_each_time_and_logged(daemon, dom0, caplog):
    token = "t" * w.XENSTORE_PAYLOAD_MAX
    for _ in range(2):
        dom0.conn.fire("/tool", token)
    assert dom0.conn.stats["events_too_long"] == 2
    assert caplog.records[-1].getMessage() == (
        "xenstored: d0#1: a watch event for /tool is longer than a payload; dropped")


def test_a_new_connection_is_open_and_clean_and_domain_0_is_introduced(daemon):
    peer = Peer(daemon)
    assert (peer.conn.closed, peer.conn.error, peer.conn.reason) == (False, w.XENSTORE_ERROR_NONE, "")
    assert daemon.find(0).domid == 0
    peer.error(XsType.READ, b"/nope\0")
    peer.error(XsType.READ, b"/nope\0")
    assert peer.conn.stats["errors"] == 2


def test_receive_counts_what_it_handled_before_a_fatal_header(daemon):
    peer = Peer(daemon)
    good = w.encode(XsMessage(XsType.READ, 1, 0, b"/local/domain/0/name\0"))
    assert peer.conn.receive(good + w.HEADER.pack(XsType.READ, 2, 0, 5000)) == 1
    assert peer.conn.closed
