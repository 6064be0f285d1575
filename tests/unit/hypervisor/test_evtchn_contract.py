"""The EVTCHNOP_* error contract, as a caller sees it: each refusal's errno
(and the message xl and the guest print), each bound on both sides, and
EVTCHNOP_status field by field for every kind of port."""
from __future__ import annotations

import errno

import pytest

from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.evtchn import NR_PIRQS, EventChannels
from xenlab.xen import abi
from xenlab.xen.abi import EvtchnState
from xenlab.xen.errors import EvtchnError, PermissionError_, XenError
from xenlab.xen.shared_info import SharedInfo

DOM0 = Caller(0, privileged=True)
A = Caller(1)
B = Caller(2)
NOBODY = Caller(9)          # a domain the core does not know
MAX = abi.XEN_LEGACY_MAX_VCPUS


class Lab:
    def __init__(self, **kw):
        self.kicks: list[tuple[int, int]] = []
        self.ev = EventChannels(kick=lambda d, v: self.kicks.append((d, v)), **kw)
        self.shared: dict[int, SharedInfo] = {}

    def add(self, domid: int, nr_vcpus: int = 1, **kw) -> SharedInfo:
        si = SharedInfo(bytearray(abi.PAGE_SIZE), 0, nr_vcpus)
        self.ev.add_domain(domid, si, nr_vcpus, **kw)
        self.shared[domid] = si
        return si


@pytest.fixture
def lab() -> Lab:
    lab = Lab()
    lab.add(0, nr_vcpus=2)
    lab.add(1, nr_vcpus=2)
    lab.add(2)
    return lab


def refused(errno_: int, message: str | None = None, kind: type = EvtchnError):
    """pytest.raises for a refusal with this errno and exactly this message."""
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(kind)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            assert self.info.value.errno == errno_, (self.info.value.errno, self.info.value)
            if message is not None:
                assert self.info.value.message == message
            return handled
    return Check()


def status(lab: Lab, domid: int, port: int) -> dict:
    return lab.ev.status(DOM0, domid, port)


def closed_status() -> dict:
    return {"state": EvtchnState.closed, "vcpu": 0, "remote_dom": 0, "remote_port": 0,
            "pirq": 0, "virq": 0, "pending": False, "masked": False}


def local_status(state: EvtchnState, **fields) -> dict:
    """A VIRQ, IPI or PIRQ port: no peer, which status shows as DOMID_INVALID."""
    return {**closed_status(), "state": state, "remote_dom": abi.DOMID_INVALID, **fields}


# -- add_domain ------------------------------------------------------------------------
def test_a_domain_gets_event_channels_once(lab):
    with refused(errno.EEXIST, "d1 already has event channels"):
        lab.ev.add_domain(1, SharedInfo(bytearray(abi.PAGE_SIZE), 0, 1))
    assert lab.ev.nr_vcpus(1) == 2          # the first registration stands


@pytest.mark.parametrize("nr_vcpus", [0, MAX + 1, -1])
def test_nr_vcpus_outside_one_to_the_legacy_maximum_is_einval(nr_vcpus):
    lab = Lab()
    with refused(errno.EINVAL, f"nr_vcpus {nr_vcpus} outside 1..{MAX}"):
        lab.ev.add_domain(5, SharedInfo(bytearray(abi.PAGE_SIZE), 0, 1), nr_vcpus)
    assert not lab.ev.has_domain(5) and lab.ev.domains() == []


@pytest.mark.parametrize("nr_vcpus", [1, MAX])
def test_nr_vcpus_at_either_bound_is_accepted(nr_vcpus):
    lab = Lab()
    lab.add(5, nr_vcpus)
    assert lab.ev.nr_vcpus(5) == nr_vcpus
    port = lab.ev.bind_ipi(Caller(5), nr_vcpus - 1)
    assert status(lab, 5, port)["vcpu"] == nr_vcpus - 1


@pytest.mark.parametrize("max_ports", [1, 0, -4])
def test_a_port_table_with_no_usable_port_is_einval(max_ports):
    lab = Lab()
    with refused(errno.EINVAL, f"max_ports {max_ports} leaves no usable port"):
        lab.add(5, max_ports=max_ports)
    assert not lab.ev.has_domain(5)


def test_the_default_port_limit_with_no_usable_port_is_einval():
    lab = Lab(default_max_ports=1)
    with refused(errno.EINVAL, "max_ports 1 leaves no usable port"):
        lab.add(5)


def test_two_ports_leave_exactly_one_usable():
    lab = Lab()
    lab.add(5, max_ports=2)
    assert lab.ev.max_ports(5) == 2
    assert lab.ev.bind_ipi(Caller(5)) == 1
    with refused(errno.ENOSPC, "all 1 event channel ports are in use"):
        lab.ev.bind_ipi(Caller(5))


def test_the_port_limit_is_the_domain_s_own_else_the_default():
    lab = Lab(default_max_ports=16)
    lab.add(5)
    lab.add(6, max_ports=8)
    lab.add(7, max_ports=abi.EVTCHN_2L_NR_CHANNELS)
    assert (lab.ev.max_ports(5), lab.ev.max_ports(6), lab.ev.max_ports(7)) == \
        (16, 8, abi.EVTCHN_2L_NR_CHANNELS)
    with refused(errno.EINVAL, "port 8 outside d6's 0..7"):
        lab.ev.status(Caller(6), 6, 8)
    assert lab.ev.status(Caller(6), 6, 7) == closed_status()


def test_the_default_limit_is_1024():
    lab = Lab()
    lab.add(5)
    assert lab.ev.max_ports(5) == 1024


def test_remove_domain_forgets_its_consumers(lab):
    port = lab.ev.alloc_unbound(DOM0, 1, 0)
    lab.ev.bind_consumer(1, port, 0, lambda: None)
    lab.ev.remove_domain(1)
    assert not lab.ev.has_consumer(1, port)
    assert lab.ev.notify_from_hypervisor(1, port) is False
    assert lab.ev.domains() == [0, 2]


# -- unknown domains, ports and vCPUs --------------------------------------------------
@pytest.mark.parametrize("op", [
    lambda ev: ev.bind_interdomain(NOBODY, 1, 1),
    lambda ev: ev.bind_virq(NOBODY, abi.VIRQ_TIMER),
    lambda ev: ev.bind_ipi(NOBODY),
    lambda ev: ev.send(9, 1),
    lambda ev: ev.close(9, 1),
    lambda ev: ev.unmask(9, 1),
    lambda ev: ev.bind_vcpu(9, 1, 0),
    lambda ev: ev.reset(DOM0, 9),
    lambda ev: ev.status(DOM0, 9, 1),
    lambda ev: ev.ports(9),
    lambda ev: ev.channel(9, 1),
    lambda ev: ev.max_ports(9),
    lambda ev: ev.nr_vcpus(9),
    lambda ev: ev.bind_consumer(9, 1, 0, lambda: None),
], ids=["bind_interdomain", "bind_virq", "bind_ipi", "send", "close", "unmask", "bind_vcpu",
        "reset", "status", "ports", "channel", "max_ports", "nr_vcpus", "bind_consumer"])
def test_an_unknown_domain_is_esrch(lab, op):
    with refused(errno.ESRCH, "no domain d9"):
        op(lab.ev)


def test_binding_to_an_unknown_remote_domain_is_esrch(lab):
    with refused(errno.ESRCH, "no domain d9"):
        lab.ev.bind_interdomain(A, 9, 1)
    with refused(errno.ESRCH, "no domain d9"):
        lab.ev.alloc_unbound(A, 1, 9)
    assert lab.ev.ports(1) == []


@pytest.mark.parametrize("port", [-1, 1024])
def test_a_port_outside_the_table_is_einval(lab, port):
    message = f"port {port} outside d1's 0..1023"
    for op in (lambda: lab.ev.send(1, port), lambda: lab.ev.close(1, port),
               lambda: lab.ev.unmask(1, port), lambda: lab.ev.bind_vcpu(1, port, 0),
               lambda: lab.ev.status(A, 1, port), lambda: lab.ev.bind_interdomain(B, 1, port)):
        with refused(errno.EINVAL, message):
            op()


def test_the_last_port_of_the_table_is_addressable(lab):
    assert lab.ev.status(A, 1, 1023) == closed_status()
    lab.ev.unmask(1, 1023)
    assert lab.kicks == []


@pytest.mark.parametrize("port", [0, 7])
def test_a_closed_port_is_einval(lab, port):
    message = f"d1 port {port} is closed"
    for op in (lambda: lab.ev.send(1, port), lambda: lab.ev.close(1, port),
               lambda: lab.ev.bind_vcpu(1, port, 0), lambda: lab.ev.bind_interdomain(B, 1, port)):
        with refused(errno.EINVAL, message):
            op()


@pytest.mark.parametrize("vcpu", [-1, 2])
def test_a_vcpu_the_domain_does_not_have_is_einval(lab, vcpu):
    port = lab.ev.alloc_unbound(A, 1, 2)
    message = f"vcpu {vcpu} outside 0..1"
    for op in (lambda: lab.ev.bind_ipi(A, vcpu), lambda: lab.ev.bind_virq(A, abi.VIRQ_TIMER, vcpu),
               lambda: lab.ev.bind_vcpu(1, port, vcpu),
               # checked before the port: even a closed one gets the vCPU's error
               lambda: lab.ev.bind_vcpu(1, 99, vcpu)):
        with refused(errno.EINVAL, message):
            op()
    assert lab.ev.ports(1) == [port] and status(lab, 1, port)["vcpu"] == 0


# -- alloc_unbound and bind_interdomain ----------------------------------------------------
def test_allocating_for_another_domain_needs_privilege(lab):
    with refused(errno.EPERM, "d1 may not allocate event channels for d2", PermissionError_):
        lab.ev.alloc_unbound(A, 2, 1)
    assert lab.ev.ports(2) == []


def test_an_unbound_port_shows_whom_it_is_offered_to(lab):
    port = lab.ev.alloc_unbound(DOM0, 1, 2)
    assert status(lab, 1, port) == {**closed_status(), "state": EvtchnState.unbound,
                                     "remote_dom": 2}


def test_both_ends_of_a_bound_channel_field_by_field(lab):
    pa = lab.ev.alloc_unbound(A, 1, 2)
    lab.ev.bind_vcpu(1, pa, 1)
    pb = lab.ev.bind_interdomain(B, 1, pa)
    assert status(lab, 1, pa) == {**closed_status(), "state": EvtchnState.interdomain,
                                  "vcpu": 1, "remote_dom": 2, "remote_port": pb}
    # The new end starts pending (an event sent before the bind is not lost).
    assert status(lab, 2, pb) == {**closed_status(), "state": EvtchnState.interdomain,
                                  "remote_dom": 1, "remote_port": pa, "pending": True}
    assert lab.kicks == [(2, 0)]


def test_binding_with_domid_self_names_the_caller(lab):
    p1 = lab.ev.alloc_unbound(A, abi.DOMID_SELF, abi.DOMID_SELF)
    p2 = lab.ev.bind_interdomain(A, abi.DOMID_SELF, p1)
    assert status(lab, 1, p2)["remote_dom"] == 1 and status(lab, 1, p1)["remote_port"] == p2


def test_binding_a_bound_port_names_its_state(lab):
    pa = lab.ev.alloc_unbound(A, 1, 2)
    lab.ev.bind_interdomain(B, 1, pa)
    with refused(errno.EINVAL, f"d1 port {pa} is interdomain, not unbound"):
        lab.ev.bind_interdomain(B, 1, pa)
    ipi = lab.ev.bind_ipi(A)
    with refused(errno.EINVAL, f"d1 port {ipi} is ipi, not unbound"):
        lab.ev.bind_interdomain(B, 1, ipi)
    assert lab.ev.ports(2) == [1]


def test_binding_a_port_offered_to_another_is_eperm(lab):
    pa = lab.ev.alloc_unbound(A, 1, 0)
    with refused(errno.EPERM, f"d1 port {pa} is not offered to d2", PermissionError_):
        lab.ev.bind_interdomain(B, 1, pa)
    assert status(lab, 1, pa)["state"] == EvtchnState.unbound and lab.ev.ports(2) == []


# -- VIRQs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("virq", [-1, abi.NR_VIRQS])
def test_a_virq_outside_the_table_is_einval(lab, virq):
    # The range is checked before privilege: DOM0 and a domU get the same answer.
    for caller in (A, DOM0):
        with refused(errno.EINVAL, f"virq {virq} outside 0..{abi.NR_VIRQS - 1}"):
            lab.ev.bind_virq(caller, virq)


def test_the_last_virq_binds(lab):
    port = lab.ev.bind_virq(A, abi.NR_VIRQS - 1)
    assert status(lab, 1, port) == local_status(EvtchnState.virq, virq=abi.NR_VIRQS - 1)


def test_a_privileged_virq_is_eperm_for_a_domu(lab):
    with refused(errno.EPERM, f"binding VIRQ {abi.VIRQ_DOM_EXC} needs a privileged domain; "
                              f"d1 is not", PermissionError_):
        lab.ev.bind_virq(A, abi.VIRQ_DOM_EXC)
    assert lab.ev.ports(1) == []
    assert lab.ev.raise_virq(1, abi.VIRQ_DOM_EXC) is False


def test_a_global_virq_bound_on_another_vcpu_is_einval(lab):
    with refused(errno.EINVAL, f"VIRQ {abi.VIRQ_CONSOLE} is global: bind it on vcpu 0, "
                               f"then bind_vcpu"):
        lab.ev.bind_virq(DOM0, abi.VIRQ_CONSOLE, 1)
    assert lab.ev.ports(0) == []


def test_a_virq_bound_twice_is_eexist_naming_its_port(lab):
    p0 = lab.ev.bind_virq(A, abi.VIRQ_TIMER, 0)
    p1 = lab.ev.bind_virq(A, abi.VIRQ_TIMER, 1)
    with refused(errno.EEXIST, f"VIRQ {abi.VIRQ_TIMER} already bound to port {p1} on vcpu 1"):
        lab.ev.bind_virq(A, abi.VIRQ_TIMER, 1)
    with refused(errno.EEXIST, f"VIRQ {abi.VIRQ_TIMER} already bound to port {p0} on vcpu 0"):
        lab.ev.bind_virq(A, abi.VIRQ_TIMER, 0)
    assert status(lab, 1, p1) == local_status(EvtchnState.virq, vcpu=1,
                                               virq=abi.VIRQ_TIMER)


def test_a_global_virq_moved_to_another_vcpu_is_still_bound_once(lab):
    port = lab.ev.bind_virq(DOM0, abi.VIRQ_CONSOLE)
    lab.ev.bind_vcpu(0, port, 1)
    with refused(errno.EINVAL):
        lab.ev.bind_virq(DOM0, abi.VIRQ_CONSOLE, 1)
    with refused(errno.EEXIST, f"VIRQ {abi.VIRQ_CONSOLE} already bound to port {port} on vcpu 0"):
        lab.ev.bind_virq(DOM0, abi.VIRQ_CONSOLE, 0)
    # Raised for any vCPU, it reaches the one it was moved to.
    assert lab.ev.raise_virq(0, abi.VIRQ_CONSOLE, 1)
    assert lab.kicks == [(0, 1)]
    lab.ev.close(0, port)
    assert lab.ev.raise_virq(0, abi.VIRQ_CONSOLE) is False
    assert lab.ev.bind_virq(DOM0, abi.VIRQ_CONSOLE) == port


def test_a_per_vcpu_virq_closed_on_one_vcpu_stays_bound_on_the_other(lab):
    p0 = lab.ev.bind_virq(A, abi.VIRQ_TIMER, 0)
    p1 = lab.ev.bind_virq(A, abi.VIRQ_TIMER, 1)
    lab.ev.close(1, p1)
    assert lab.ev.raise_virq(1, abi.VIRQ_TIMER, 1) is False
    assert lab.ev.raise_virq(1, abi.VIRQ_TIMER, 0) is True
    assert lab.kicks == [(1, 0)] and lab.shared[1].scan(0) == [p0]
    assert lab.ev.bind_virq(A, abi.VIRQ_TIMER, 1) == p1


def test_sending_on_a_virq_port_is_einval_naming_its_kind(lab):
    port = lab.ev.bind_virq(A, abi.VIRQ_TIMER)
    with refused(errno.EINVAL, f"d1 port {port} is a virq port: nothing to send on"):
        lab.ev.send(1, port)
    pirq = lab.ev.bind_pirq(DOM0, 3)
    with refused(errno.EINVAL, f"d0 port {pirq} is a pirq port: nothing to send on"):
        lab.ev.send(0, pirq)
    assert lab.kicks == []


# -- PIRQs ----------------------------------------------------------------------------------
def test_binding_a_pirq_needs_privilege_before_anything_else(lab):
    for caller in (A, NOBODY):
        with refused(errno.EPERM, f"binding a physical IRQ needs a privileged domain; "
                                  f"d{caller.domid} is not", PermissionError_):
            lab.ev.bind_pirq(caller, NR_PIRQS)
    with refused(errno.ESRCH, "no domain d9"):
        lab.ev.bind_pirq(Caller(9, privileged=True), 1)


@pytest.mark.parametrize("pirq", [-1, NR_PIRQS])
def test_a_pirq_outside_the_table_is_einval(lab, pirq):
    with refused(errno.EINVAL, f"pirq {pirq} outside 0..{NR_PIRQS - 1}"):
        lab.ev.bind_pirq(DOM0, pirq)
    assert lab.ev.ports(0) == []


@pytest.mark.parametrize("pirq", [0, NR_PIRQS - 1])
def test_a_pirq_at_either_bound_binds_and_is_raised(lab, pirq):
    port = lab.ev.bind_pirq(DOM0, pirq)
    assert status(lab, 0, port) == local_status(EvtchnState.pirq, pirq=pirq)
    assert lab.ev.raise_pirq(0, pirq) is True
    assert lab.kicks == [(0, 0)] and lab.shared[0].scan(0) == [port]


def test_a_pirq_bound_twice_is_eexist_naming_its_port(lab):
    port = lab.ev.bind_pirq(DOM0, 5)
    with refused(errno.EEXIST, f"pirq 5 already bound to port {port}"):
        lab.ev.bind_pirq(DOM0, 5)
    assert lab.ev.ports(0) == [port]


def test_a_closed_pirq_is_no_longer_raised_and_binds_again(lab):
    port = lab.ev.bind_pirq(DOM0, 5)
    lab.ev.close(0, port)
    assert lab.ev.raise_pirq(0, 5) is False and lab.kicks == []
    assert lab.ev.bind_pirq(DOM0, 5) == port


def test_raising_a_pirq_nobody_bound_is_dropped(lab):
    assert lab.ev.raise_pirq(0, 5) is False
    assert lab.ev.raise_pirq(9, 5) is False
    assert lab.kicks == []


def test_a_pirq_moves_to_another_vcpu(lab):
    port = lab.ev.bind_pirq(DOM0, 5)
    lab.ev.bind_vcpu(0, port, 1)
    assert status(lab, 0, port)["vcpu"] == 1
    assert lab.ev.raise_pirq(0, 5) and lab.kicks == [(0, 1)]


# -- bind_vcpu ------------------------------------------------------------------------------
def test_a_per_vcpu_virq_cannot_move(lab):
    port = lab.ev.bind_virq(A, abi.VIRQ_DEBUG, 1)
    with refused(errno.EINVAL, f"d1 port {port} (per-vCPU VIRQ {abi.VIRQ_DEBUG}) cannot move "
                               f"to another vcpu"):
        lab.ev.bind_vcpu(1, port, 0)
    assert status(lab, 1, port)["vcpu"] == 1


def test_an_ipi_cannot_move(lab):
    port = lab.ev.bind_ipi(A, 1)
    with refused(errno.EINVAL, f"d1 port {port} (ipi) cannot move to another vcpu"):
        lab.ev.bind_vcpu(1, port, 0)
    with refused(errno.EINVAL, f"d1 port {port} (ipi) cannot move to another vcpu"):
        lab.ev.bind_vcpu(1, port, 1)     # not even to where it is
    assert status(lab, 1, port)["vcpu"] == 1


def test_an_unbound_port_moves_and_its_bound_end_delivers_there(lab):
    pa = lab.ev.alloc_unbound(A, 1, 2)
    lab.ev.bind_vcpu(1, pa, 1)
    assert status(lab, 1, pa)["vcpu"] == 1
    pb = lab.ev.bind_interdomain(B, 1, pa)
    lab.kicks.clear()
    lab.ev.send(2, pb)
    assert lab.kicks == [(1, 1)] and lab.shared[1].scan(1) == [pa]


# -- status and reset ---------------------------------------------------------------------
def test_status_of_another_domain_is_eperm_for_a_domu(lab):
    with refused(errno.EPERM, "d2 may not query event channels of d1", PermissionError_):
        lab.ev.status(B, 1, 0)


def test_status_of_port_zero_and_of_a_closed_port(lab):
    assert lab.ev.status(A, 1, 0) == closed_status()
    port = lab.ev.bind_ipi(A, 1)
    lab.shared[1].mask(port)
    lab.ev.send(1, port)
    assert lab.ev.status(A, abi.DOMID_SELF, port) == \
        local_status(EvtchnState.ipi, vcpu=1, pending=True, masked=True)
    lab.ev.close(1, port)
    assert lab.ev.status(A, 1, port) == closed_status()


def test_reset_of_another_domain_is_eperm_for_a_domu(lab):
    port = lab.ev.bind_ipi(A)
    with refused(errno.EPERM, "d2 may not reset event channels of d1", PermissionError_):
        lab.ev.reset(B, 1)
    assert lab.ev.ports(1) == [port]


def test_reset_frees_virqs_pirqs_and_pending_bits(lab):
    virq = lab.ev.bind_virq(DOM0, abi.VIRQ_TIMER, 1)
    pirq = lab.ev.bind_pirq(DOM0, 7)
    ipi = lab.ev.bind_ipi(DOM0)
    lab.shared[0].mask(ipi)
    lab.ev.send(0, ipi)
    lab.ev.reset(DOM0, abi.DOMID_SELF)
    assert lab.ev.ports(0) == []
    assert status(lab, 0, ipi) == closed_status()
    assert lab.ev.raise_virq(0, abi.VIRQ_TIMER, 1) is False
    assert lab.ev.raise_pirq(0, 7) is False
    assert lab.ev.bind_virq(DOM0, abi.VIRQ_TIMER, 1) == virq
    assert lab.ev.bind_pirq(DOM0, 7) == pirq


# -- unmask ---------------------------------------------------------------------------------
def test_unmask_raises_a_pending_port_on_its_own_vcpu(lab):
    port = lab.ev.bind_ipi(A, 1)
    lab.shared[1].mask(port)
    lab.ev.send(1, port)
    assert lab.kicks == []
    lab.ev.unmask(1, port)
    assert lab.kicks == [(1, 1)] and lab.shared[1].scan(1) == [port]


def test_unmask_of_a_pending_closed_port_goes_to_vcpu_zero(lab):
    # A port with no channel (the guest set its bit itself) is vCPU 0's, as
    # Xen's evtchn_2l_unmask takes the port's notify_vcpu_id, 0 when free.
    lab.shared[1].mask(9)
    lab.shared[1]._pending.test_and_set_bit(9)
    lab.ev.unmask(1, 9)
    assert lab.kicks == [(1, 0)]


# -- the hypervisor's end -------------------------------------------------------------------
def test_a_consumer_binds_only_an_unbound_port_offered_to_it(lab):
    other = lab.ev.alloc_unbound(DOM0, 1, 2)
    with refused(errno.EINVAL, f"d1 port {other} is not an unbound port offered to d0"):
        lab.ev.bind_consumer(1, other, 0, lambda: None)
    ipi = lab.ev.bind_ipi(A)
    with refused(errno.EINVAL, f"d1 port {ipi} is not an unbound port offered to d0"):
        lab.ev.bind_consumer(1, ipi, 0, lambda: None)
    assert not lab.ev.has_consumer(1, other) and not lab.ev.has_consumer(1, ipi)


def test_a_consumer_port_shows_as_interdomain_to_domid_xen(lab):
    port = lab.ev.alloc_unbound(DOM0, 1, 0)
    lab.ev.bind_consumer(1, port, 0, lambda: None)
    assert status(lab, 1, port) == {**closed_status(), "state": EvtchnState.interdomain,
                                    "remote_dom": abi.DOMID_XEN}
    lab.ev.unbind_consumer(1, port, 0)
    assert status(lab, 1, port) == {**closed_status(), "state": EvtchnState.unbound,
                                    "remote_dom": 0}
    assert not lab.ev.has_consumer(1, port)
    assert lab.ev.notify_from_hypervisor(1, port) is False


def test_a_consumer_port_closed_by_its_domain_stops_notifying(lab):
    calls = []
    port = lab.ev.alloc_unbound(DOM0, 1, 0)
    lab.ev.bind_consumer(1, port, 0, lambda: calls.append(1))
    lab.ev.close(1, port)
    assert not lab.ev.has_consumer(1, port)
    assert lab.ev.notify_from_hypervisor(1, port) is False and lab.kicks == []
    # Letting go of a port the domain closed is harmless.
    lab.ev.unbind_consumer(1, port, 0)
    assert status(lab, 1, port) == closed_status()


# -- defaults a caller relies on ------------------------------------------------------------
def test_a_domain_has_one_vcpu_unless_told():
    lab = Lab()
    lab.ev.add_domain(5, SharedInfo(bytearray(abi.PAGE_SIZE), 0, 2))
    assert lab.ev.nr_vcpus(5) == 1
    with refused(errno.EINVAL, "vcpu 1 outside 0..0"):
        lab.ev.bind_ipi(Caller(5), 1)


def test_ipis_and_virqs_bind_on_vcpu_zero_unless_told(lab):
    ipi = lab.ev.bind_ipi(A)
    timer = lab.ev.bind_virq(A, abi.VIRQ_TIMER)
    lab.ev.bind_virq(A, abi.VIRQ_TIMER, 1)
    assert status(lab, 1, ipi)["vcpu"] == 0 and status(lab, 1, timer)["vcpu"] == 0
    # raise_virq without a vCPU raises vCPU 0's.
    assert lab.ev.raise_virq(1, abi.VIRQ_TIMER)
    assert lab.kicks == [(1, 0)] and lab.shared[1].scan(0) == [timer]


def test_closing_another_kind_of_port_leaves_pirq_zero_bound(lab):
    port = lab.ev.bind_pirq(DOM0, 0)
    lab.ev.close(0, lab.ev.bind_ipi(DOM0))
    lab.ev.close(0, lab.ev.alloc_unbound(DOM0, 0, 1))
    assert lab.ev.raise_pirq(0, 0) and lab.shared[0].scan(0) == [port]
    with refused(errno.EEXIST, f"pirq 0 already bound to port {port}"):
        lab.ev.bind_pirq(DOM0, 0)


# -- the direct path, given at construction ---------------------------------------------------
class Links:
    def __init__(self, unread=()):
        self.calls: list = []
        self.unread = set(unread)

    def link(self, a, b):
        self.calls.append(("link", a, b))

    def unlink(self, domid, port):
        self.calls.append(("unlink", domid, port))
        return sorted(self.unread)


def test_links_given_at_construction_are_told_of_each_bind():
    links = Links()
    lab = Lab(links=links)
    lab.add(1)
    lab.add(2)
    pa = lab.ev.alloc_unbound(A, 1, 2)
    pb = lab.ev.bind_interdomain(B, 1, pa)
    assert links.calls == [("link", (2, pb, 0), (1, pa, 0))]


def test_a_dying_domain_s_unread_signal_reaches_only_the_surviving_end():
    lab = Lab()
    lab.add(1)
    lab.add(2)
    pa = lab.ev.alloc_unbound(A, 1, 2)
    pb = lab.ev.bind_interdomain(B, 1, pa)
    lab.shared[2].scan(0)
    lab.kicks.clear()
    lab.ev._links = Links(unread={(1, pa), (2, pb)})
    lab.ev.remove_domain(1)
    # d1 is gone: its end's signal goes nowhere; d2's end, unbound now, keeps its own.
    assert lab.kicks == [(2, 0)] and lab.shared[2].scan(0) == [pb]
    assert status(lab, 2, pb) == {**closed_status(), "state": EvtchnState.unbound, "remote_dom": 1}


def test_a_consumer_cannot_bind_a_closed_port(lab):
    with refused(errno.EINVAL, "d1 port 9 is closed"):
        lab.ev.bind_consumer(1, 9, 0, lambda: None)
    with refused(errno.EINVAL, "port 1024 outside d1's 0..1023"):
        lab.ev.bind_consumer(1, 1024, 0, lambda: None)
