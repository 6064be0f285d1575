"""EventChannels: the EVTCHNOP_* core, against real shared_info bitmaps."""
from __future__ import annotations

import errno

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from xenlab.hypervisor.evtchn import NR_PIRQS, EventChannels
from xenlab.hypervisor.caller import Caller
from xenlab.xen import abi
from xenlab.xen.abi import EvtchnState
from xenlab.xen.errors import PermissionError_, XenError
from xenlab.xen.shared_info import SharedInfo

DOM0 = Caller(0, privileged=True)
A = Caller(1)
B = Caller(2)


class Lab:
    def __init__(self, default_max_ports: int = 1024):
        self.kicks: list[tuple[int, int]] = []
        self.ev = EventChannels(kick=lambda d, v: self.kicks.append((d, v)),
                                default_max_ports=default_max_ports)
        self.shared: dict[int, SharedInfo] = {}

    def add(self, domid: int, nr_vcpus: int = 1, **kw) -> SharedInfo:
        si = SharedInfo(bytearray(abi.PAGE_SIZE), 0, nr_vcpus)
        self.shared[domid] = si
        self.ev.add_domain(domid, si, nr_vcpus, **kw)
        return si

    def take_kicks(self) -> list[tuple[int, int]]:
        out, self.kicks = self.kicks, []
        return out


@pytest.fixture
def lab() -> Lab:
    lab = Lab()
    lab.add(0, nr_vcpus=2)
    lab.add(1, nr_vcpus=2)
    lab.add(2)
    return lab


def connect(lab: Lab) -> tuple[int, int]:
    """A's port offered to B, B bound to it; the bind's conservative event drained."""
    pa = lab.ev.alloc_unbound(A, 1, 2)
    pb = lab.ev.bind_interdomain(B, 1, pa)
    lab.shared[2].scan(0)
    lab.take_kicks()
    return pa, pb


def err_of(excinfo) -> int:
    return excinfo.value.errno


# -- allocation ---------------------------------------------------------------
def test_ports_start_at_one_and_reuse_the_lowest_free(lab):
    p1 = lab.ev.alloc_unbound(A, 1, 2)
    p2 = lab.ev.alloc_unbound(A, 1, 2)
    p3 = lab.ev.alloc_unbound(A, 1, 2)
    assert (p1, p2, p3) == (1, 2, 3)
    lab.ev.close(1, 2)
    assert lab.ev.alloc_unbound(A, 1, 2) == 2
    assert lab.ev.ports(1) == [1, 2, 3]


def test_port_limit_is_enospc():
    lab = Lab(default_max_ports=4)
    lab.add(1)
    lab.add(2)
    assert [lab.ev.alloc_unbound(A, 1, 2) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(XenError) as exc:
        lab.ev.alloc_unbound(A, 1, 2)
    assert err_of(exc) == errno.ENOSPC


def test_max_ports_never_exceeds_the_2l_abi():
    lab = Lab()
    lab.add(1, max_ports=1 << 20)
    assert lab.ev.max_ports(1) == abi.EVTCHN_2L_NR_CHANNELS


def test_unknown_domain_is_esrch(lab):
    with pytest.raises(XenError) as exc:
        lab.ev.send(9, 1)
    assert err_of(exc) == errno.ESRCH
    with pytest.raises(XenError) as exc:
        lab.ev.alloc_unbound(DOM0, 9, 1)
    assert err_of(exc) == errno.ESRCH
    with pytest.raises(XenError) as exc:
        lab.ev.alloc_unbound(A, 1, 9)
    assert err_of(exc) == errno.ESRCH


def test_add_domain_twice_is_eexist(lab):
    with pytest.raises(XenError) as exc:
        lab.add(1)
    assert err_of(exc) == errno.EEXIST


def test_unprivileged_may_not_allocate_for_another_domain(lab):
    with pytest.raises(PermissionError_):
        lab.ev.alloc_unbound(A, 2, 1)
    port = lab.ev.alloc_unbound(DOM0, 2, 1)
    assert lab.ev.status(DOM0, 2, port)["remote_dom"] == 1


def test_domid_self_names_the_caller(lab):
    port = lab.ev.alloc_unbound(A, abi.DOMID_SELF, abi.DOMID_SELF)
    assert lab.ev.status(A, 1, port)["remote_dom"] == 1


# -- interdomain ----------------------------------------------------------------
def test_bind_interdomain_links_both_ends(lab):
    pa = lab.ev.alloc_unbound(A, 1, 2)
    pb = lab.ev.bind_interdomain(B, 1, pa)
    sa, sb = lab.ev.status(A, 1, pa), lab.ev.status(B, 2, pb)
    assert (sa["state"], sa["remote_dom"], sa["remote_port"]) == (EvtchnState.interdomain, 2, pb)
    assert (sb["state"], sb["remote_dom"], sb["remote_port"]) == (EvtchnState.interdomain, 1, pa)


def test_bind_interdomain_raises_the_local_end_once(lab):
    # Xen sets the new local port pending: events sent while unbound are not lost.
    pa = lab.ev.alloc_unbound(A, 1, 2)
    pb = lab.ev.bind_interdomain(B, 1, pa)
    assert lab.take_kicks() == [(2, 0)]
    assert lab.shared[2].scan(0) == [pb]


def test_send_sets_pending_on_the_peer_and_kicks(lab):
    pa, pb = connect(lab)
    lab.ev.send(2, pb)
    assert lab.take_kicks() == [(1, 0)]
    assert lab.shared[1].scan(0) == [pa]
    lab.ev.send(1, pa)
    assert lab.take_kicks() == [(2, 0)]
    assert lab.shared[2].scan(0) == [pb]


def test_pending_port_does_not_kick_twice(lab):
    pa, pb = connect(lab)
    lab.ev.send(2, pb)
    lab.ev.send(2, pb)
    lab.ev.send(2, pb)
    assert lab.take_kicks() == [(1, 0)]
    assert lab.shared[1].scan(0) == [pa]
    lab.ev.send(2, pb)
    assert lab.take_kicks() == [(1, 0)]


def test_masked_port_does_not_kick_until_unmask(lab):
    pa, pb = connect(lab)
    lab.shared[1].mask(pa)
    lab.ev.send(2, pb)
    assert lab.take_kicks() == []
    assert lab.ev.status(A, 1, pa)["pending"] and lab.ev.status(A, 1, pa)["masked"]
    lab.ev.unmask(1, pa)
    assert lab.take_kicks() == [(1, 0)]
    assert lab.shared[1].scan(0) == [pa]


def test_unmask_of_a_quiet_port_does_not_kick(lab):
    pa, _ = connect(lab)
    lab.shared[1].mask(pa)
    lab.ev.unmask(1, pa)
    assert lab.take_kicks() == []


def test_binding_a_port_not_offered_to_you_is_refused(lab):
    lab.add(3)
    pa = lab.ev.alloc_unbound(A, 1, 3)
    with pytest.raises(PermissionError_):
        lab.ev.bind_interdomain(B, 1, pa)
    # Privilege does not help either: the port names its peer.
    with pytest.raises(PermissionError_):
        lab.ev.bind_interdomain(DOM0, 1, pa)
    assert lab.ev.status(A, 1, pa)["state"] == EvtchnState.unbound
    assert lab.ev.ports(2) == []


def test_binding_a_bound_or_closed_port_is_einval(lab):
    pa, _ = connect(lab)
    with pytest.raises(XenError) as exc:
        lab.ev.bind_interdomain(B, 1, pa)
    assert err_of(exc) == errno.EINVAL
    with pytest.raises(XenError) as exc:
        lab.ev.bind_interdomain(B, 1, 77)
    assert err_of(exc) == errno.EINVAL
    with pytest.raises(XenError) as exc:
        lab.ev.bind_interdomain(B, 1, 5000)
    assert err_of(exc) == errno.EINVAL


def test_close_returns_the_peer_to_unbound(lab):
    pa, pb = connect(lab)
    lab.ev.close(2, pb)
    st = lab.ev.status(A, 1, pa)
    assert (st["state"], st["remote_dom"], st["remote_port"]) == (EvtchnState.unbound, 2, 0)
    assert lab.ev.status(B, 2, pb)["state"] == EvtchnState.closed
    # The closer may bind again: the port is offered back to it.
    pb2 = lab.ev.bind_interdomain(B, 1, pa)
    assert lab.ev.status(A, 1, pa)["remote_port"] == pb2


def test_send_on_unbound_is_a_quiet_success_and_on_closed_einval(lab):
    pa = lab.ev.alloc_unbound(A, 1, 2)
    lab.ev.send(1, pa)
    assert lab.take_kicks() == []
    lab.ev.close(1, pa)
    with pytest.raises(XenError) as exc:
        lab.ev.send(1, pa)
    assert err_of(exc) == errno.EINVAL
    with pytest.raises(XenError) as exc:
        lab.ev.send(1, 0)
    assert err_of(exc) == errno.EINVAL
    with pytest.raises(XenError) as exc:
        lab.ev.close(1, pa)
    assert err_of(exc) == errno.EINVAL


def test_close_forgets_pending_and_mask(lab):
    pa, pb = connect(lab)
    lab.shared[1].mask(pa)
    lab.ev.send(2, pb)
    lab.ev.close(1, pa)
    st = lab.ev.status(A, 1, pa)
    assert (st["state"], st["pending"], st["masked"]) == (EvtchnState.closed, False, False)


def test_loopback_channel_within_one_domain(lab):
    p1 = lab.ev.alloc_unbound(A, 1, 1)
    p2 = lab.ev.bind_interdomain(A, 1, p1)
    lab.shared[1].scan(0)
    lab.take_kicks()
    lab.ev.send(1, p2)
    assert lab.take_kicks() == [(1, 0)]
    assert lab.shared[1].scan(0) == [p1]
    lab.ev.close(1, p1)
    assert lab.ev.status(A, 1, p2)["state"] == EvtchnState.unbound


def test_remove_domain_unbinds_its_peers(lab):
    pa, pb = connect(lab)
    lab.ev.remove_domain(1)
    assert not lab.ev.has_domain(1)
    st = lab.ev.status(B, 2, pb)
    assert (st["state"], st["remote_dom"]) == (EvtchnState.unbound, 1)
    lab.ev.send(2, pb)                 # the peer is gone: nothing to tell, no error
    assert lab.take_kicks() == []
    lab.ev.remove_domain(1)            # idempotent


# -- VIRQs, IPIs, PIRQs -------------------------------------------------------------
def test_timer_virq_is_per_vcpu(lab):
    p0 = lab.ev.bind_virq(A, abi.VIRQ_TIMER, 0)
    p1 = lab.ev.bind_virq(A, abi.VIRQ_TIMER, 1)
    assert p0 != p1
    assert lab.ev.raise_virq(1, abi.VIRQ_TIMER, 1)
    assert lab.take_kicks() == [(1, 1)]
    assert lab.shared[1].scan(1) == [p1]
    assert lab.shared[1].scan(0) == []
    with pytest.raises(XenError) as exc:
        lab.ev.bind_virq(A, abi.VIRQ_TIMER, 1)
    assert err_of(exc) == errno.EEXIST
    with pytest.raises(XenError) as exc:
        lab.ev.bind_vcpu(1, p1, 0)
    assert err_of(exc) == errno.EINVAL


def test_raise_virq_unbound_returns_false(lab):
    assert lab.ev.raise_virq(1, abi.VIRQ_TIMER, 0) is False
    assert lab.ev.raise_virq(9, abi.VIRQ_TIMER, 0) is False
    assert lab.take_kicks() == []


def test_global_virq_binds_on_vcpu0_and_can_move(lab):
    with pytest.raises(XenError) as exc:
        lab.ev.bind_virq(DOM0, abi.VIRQ_CONSOLE, 1)
    assert err_of(exc) == errno.EINVAL
    port = lab.ev.bind_virq(DOM0, abi.VIRQ_CONSOLE, 0)
    lab.ev.bind_vcpu(0, port, 1)
    assert lab.ev.raise_virq(0, abi.VIRQ_CONSOLE)
    assert lab.take_kicks() == [(0, 1)]
    lab.ev.close(0, port)
    assert lab.ev.bind_virq(DOM0, abi.VIRQ_CONSOLE, 0) == port


def test_privileged_virq_needs_privilege(lab):
    with pytest.raises(PermissionError_):
        lab.ev.bind_virq(A, abi.VIRQ_DOM_EXC)


def test_virq_argument_checks(lab):
    for virq, vcpu in ((abi.NR_VIRQS, 0), (abi.VIRQ_TIMER, 2), (abi.VIRQ_TIMER, -1)):
        with pytest.raises(XenError) as exc:
            lab.ev.bind_virq(A, virq, vcpu)
        assert err_of(exc) == errno.EINVAL


def test_send_on_a_virq_port_is_einval(lab):
    port = lab.ev.bind_virq(A, abi.VIRQ_TIMER)
    with pytest.raises(XenError) as exc:
        lab.ev.send(1, port)
    assert err_of(exc) == errno.EINVAL


def test_ipi_raises_on_its_own_vcpu(lab):
    port = lab.ev.bind_ipi(A, 1)
    lab.ev.send(1, port)
    assert lab.take_kicks() == [(1, 1)]
    assert lab.shared[1].scan(1) == [port]
    with pytest.raises(XenError) as exc:
        lab.ev.bind_vcpu(1, port, 0)
    assert err_of(exc) == errno.EINVAL
    with pytest.raises(XenError) as exc:
        lab.ev.bind_ipi(A, 2)
    assert err_of(exc) == errno.EINVAL


def test_bind_pirq_is_privileged(lab):
    with pytest.raises(PermissionError_):
        lab.ev.bind_pirq(A, 5)
    port = lab.ev.bind_pirq(DOM0, 5)
    assert lab.ev.status(DOM0, 0, port)["pirq"] == 5
    with pytest.raises(XenError) as exc:
        lab.ev.bind_pirq(DOM0, 5)
    assert err_of(exc) == errno.EEXIST
    with pytest.raises(XenError) as exc:
        lab.ev.bind_pirq(DOM0, NR_PIRQS)
    assert err_of(exc) == errno.EINVAL
    assert lab.ev.raise_pirq(0, 5)
    assert lab.take_kicks() == [(0, 0)]


# -- bind_vcpu, status, reset ---------------------------------------------------------
def test_bind_vcpu_moves_delivery(lab):
    pa, pb = connect(lab)
    lab.ev.bind_vcpu(1, pa, 1)
    lab.ev.send(2, pb)
    assert lab.take_kicks() == [(1, 1)]
    assert lab.shared[1].scan(1) == [pa]
    with pytest.raises(XenError) as exc:
        lab.ev.bind_vcpu(1, pa, 2)
    assert err_of(exc) == errno.EINVAL


def test_status_of_another_domain_needs_privilege(lab):
    pa, _ = connect(lab)
    with pytest.raises(PermissionError_):
        lab.ev.status(B, 1, pa)
    assert lab.ev.status(DOM0, 1, pa)["state"] == EvtchnState.interdomain
    assert lab.ev.status(A, 1, 0)["state"] == EvtchnState.closed
    with pytest.raises(XenError) as exc:
        lab.ev.status(A, 1, 1024)
    assert err_of(exc) == errno.EINVAL


def test_reset_closes_everything_and_unbinds_peers(lab):
    pa, pb = connect(lab)
    lab.ev.bind_virq(A, abi.VIRQ_TIMER)
    with pytest.raises(PermissionError_):
        lab.ev.reset(B, 1)
    lab.ev.reset(A, 1)
    assert lab.ev.ports(1) == []
    assert lab.ev.status(B, 2, pb)["state"] == EvtchnState.unbound
    # The VIRQ can be bound again after the reset.
    lab.ev.bind_virq(A, abi.VIRQ_TIMER)
    lab.ev.reset(DOM0, 2)
    assert lab.ev.ports(2) == []


def test_channel_view_is_a_copy(lab):
    pa, _ = connect(lab)
    ch = lab.ev.channel(1, pa)
    ch.state = EvtchnState.closed
    assert lab.ev.channel(1, pa).state == EvtchnState.interdomain
    assert lab.ev.channel(1, 99) is None


# -- invariants under random operation sequences ------------------------------------

DOMS = st.sampled_from([0, 1, 2])
PORTS = st.integers(0, 9)


class EvtchnMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.lab = Lab(default_max_ports=8)
        for domid in (0, 1, 2):
            self.lab.add(domid, nr_vcpus=2)

    def caller(self, domid: int) -> Caller:
        return Caller(domid, privileged=domid == 0)

    def attempt(self, op, *args):
        try:
            op(*args)
        except XenError:
            pass

    @rule(d=DOMS, dom=DOMS, remote=DOMS)
    def alloc(self, d, dom, remote):
        self.attempt(self.lab.ev.alloc_unbound, self.caller(d), dom, remote)

    @rule(d=DOMS, remote=DOMS, port=PORTS)
    def bind(self, d, remote, port):
        self.attempt(self.lab.ev.bind_interdomain, self.caller(d), remote, port)

    @rule(d=DOMS, virq=st.sampled_from([abi.VIRQ_TIMER, abi.VIRQ_CONSOLE, abi.VIRQ_DEBUG]),
          vcpu=st.integers(0, 2))
    def virq(self, d, virq, vcpu):
        self.attempt(self.lab.ev.bind_virq, self.caller(d), virq, vcpu)

    @rule(d=DOMS, vcpu=st.integers(0, 1))
    def ipi(self, d, vcpu):
        self.attempt(self.lab.ev.bind_ipi, self.caller(d), vcpu)

    @rule(d=DOMS, port=PORTS)
    def send(self, d, port):
        self.attempt(self.lab.ev.send, d, port)

    @rule(d=DOMS, port=PORTS)
    def close(self, d, port):
        self.attempt(self.lab.ev.close, d, port)

    @rule(d=DOMS, port=PORTS, vcpu=st.integers(0, 2))
    def move(self, d, port, vcpu):
        self.attempt(self.lab.ev.bind_vcpu, d, port, vcpu)

    @rule(d=DOMS, port=PORTS)
    def mask_toggle(self, d, port):
        si = self.lab.shared[d]
        if si.is_masked(port):
            self.attempt(self.lab.ev.unmask, d, port)
        else:
            si.mask(port)

    @rule(d=DOMS, vcpu=st.integers(0, 1))
    def scan(self, d, vcpu):
        self.lab.shared[d].scan(vcpu)

    @rule(d=DOMS, by=DOMS)
    def reset(self, d, by):
        self.attempt(self.lab.ev.reset, self.caller(by), d)

    @invariant()
    def tables_are_consistent(self):
        ev = self.lab.ev
        virqs = set()
        for d in (0, 1, 2):
            for port in ev.ports(d):
                ch = ev.channel(d, port)
                assert 0 < port < ev.max_ports(d) and ch.port == port
                assert 0 <= ch.vcpu < ev.nr_vcpus(d)
                if ch.state == EvtchnState.interdomain:
                    peer = ev.channel(ch.remote_dom, ch.remote_port)
                    assert peer is not None and peer.state == EvtchnState.interdomain
                    assert (peer.remote_dom, peer.remote_port) == (d, port)
                if ch.state == EvtchnState.virq:
                    key = (d, ch.virq, ch.vcpu if ch.virq in abi.VIRQ_PER_VCPU else 0)
                    assert key not in virqs
                    virqs.add(key)
        for domid, vcpu in self.lab.take_kicks():
            assert self.lab.shared[domid].upcall_pending(vcpu)


EvtchnMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_evtchn_invariants = EvtchnMachine.TestCase


# -- the direct path of interdomain channels ----------------------------------------
class Links:
    """ChannelLinks as the core sees it: which channels have a direct path,
    and the ends whose peer's signals were still unread when revoked."""

    def __init__(self):
        self.linked: dict[tuple[int, int], tuple] = {}
        self.unread: set[tuple[int, int]] = set()
        self.calls: list = []

    def link(self, a, b):
        self.calls.append(("link", a, b))
        self.linked[a[:2]] = self.linked[b[:2]] = (a, b)

    def unlink(self, domid, port):
        self.calls.append(("unlink", domid, port))
        pair = self.linked.pop((domid, port), None)
        if pair is None:
            return []
        other = next(end[:2] for end in pair if end[:2] != (domid, port))
        self.linked.pop(other, None)
        return [end[:2] for end in pair if end[:2] in self.unread]


@pytest.fixture
def linked_lab(lab) -> tuple[Lab, Links]:
    links = Links()
    lab.ev._links = links
    return lab, links


def test_a_bound_interdomain_channel_is_linked_end_to_end_with_its_vcpus(linked_lab):
    lab, links = linked_lab
    pa = lab.ev.alloc_unbound(A, 1, 2)
    lab.ev.bind_vcpu(1, pa, 1)
    pb = lab.ev.bind_interdomain(B, 1, pa)
    assert links.calls == [("link", (2, pb, 0), (1, pa, 1))]


def test_closing_either_end_revokes_the_link(linked_lab):
    lab, links = linked_lab
    pa, pb = connect(lab)
    lab.ev.close(2, pb)
    assert links.linked == {} and ("unlink", 2, pb) in links.calls
    pb = lab.ev.bind_interdomain(B, 1, pa)
    lab.ev.reset(DOM0, 1)
    assert links.linked == {}


def test_a_signal_unread_at_revocation_stays_pending_on_the_surviving_end(linked_lab):
    lab, links = linked_lab
    pa, pb = connect(lab)
    links.unread = {(1, pa), (2, pb)}
    lab.ev.close(2, pb)
    # B's send reached A's end before the close: A's port, unbound now, keeps
    # it pending as Xen's would; B's closed port is clear.
    assert lab.shared[1].is_pending(pa) and lab.take_kicks() == [(1, 0)]
    assert not lab.shared[2].is_pending(pb)


def test_a_dying_domain_revokes_its_links(linked_lab):
    lab, links = linked_lab
    connect(lab)
    lab.ev.remove_domain(2)
    assert links.linked == {}


def test_moving_an_end_to_another_vcpu_relinks_it(linked_lab):
    lab, links = linked_lab
    pa, pb = connect(lab)
    lab.ev.bind_vcpu(1, pa, 1)
    assert links.calls[-2:] == [("unlink", 1, pa), ("link", (1, pa, 1), (2, pb, 0))]
    lab.ev.bind_vcpu(1, pa, 1)          # no move, no new objects
    assert len(links.calls) == 3


def test_loopback_and_hypervisor_consumer_channels_get_no_link(linked_lab):
    lab, links = linked_lab
    p = lab.ev.alloc_unbound(A, 1, 1)
    lab.ev.bind_interdomain(A, 1, p)
    q = lab.ev.alloc_unbound(A, 1, 0)
    lab.ev.bind_consumer(1, q, 0, lambda: None)
    assert not [c for c in links.calls if c[0] == "link"]
