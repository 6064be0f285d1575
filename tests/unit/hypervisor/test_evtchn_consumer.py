"""Event channels whose other end is in the hypervisor (Xen's xen_consumer
channels): the store port xenstored binds."""
from __future__ import annotations

import errno

import pytest

from xenlab.hypervisor.evtchn import EventChannels
from xenlab.hypervisor.caller import Caller
from xenlab.xen import abi
from xenlab.xen.abi import EvtchnState
from xenlab.xen.errors import XenError
from xenlab.xen.shared_info import SharedInfo

DOM0 = Caller(0, privileged=True)


@pytest.fixture
def ev():
    kicks = []
    ev = EventChannels(kick=lambda d, v: kicks.append((d, v)))
    ev.kicks = kicks
    for domid in (0, 1, 2):
        ev.add_domain(domid, SharedInfo(bytearray(abi.PAGE_SIZE), 0, 1))
    return ev


def store_port(ev, domid=1):
    return ev.alloc_unbound(DOM0, domid, 0)


def test_a_send_reaches_the_consumer_and_no_domain(ev):
    port, calls = store_port(ev), []
    ev.bind_consumer(1, port, 0, lambda: calls.append("kick"))
    ch = ev.channel(1, port)
    assert (ch.state, ch.remote_dom) == (EvtchnState.interdomain, abi.DOMID_XEN)
    ev.send(1, port)
    ev.send(1, port)
    assert calls == ["kick", "kick"] and ev.kicks == []
    assert not any(ev.status(DOM0, 0, p)["pending"] for p in ev.ports(0))


def test_the_hypervisor_notifies_the_domain(ev):
    port = store_port(ev)
    ev.bind_consumer(1, port, 0, lambda: None)
    assert ev.notify_from_hypervisor(1, port)
    assert ev.status(DOM0, 1, port)["pending"] and ev.kicks == [(1, 0)]
    assert not ev.notify_from_hypervisor(1, port + 1)


@pytest.mark.parametrize("setup", ["not offered to the store domain", "already bound", "closed"])
def test_only_an_unbound_port_offered_to_the_store_domain_binds(ev, setup):
    if setup == "not offered to the store domain":
        port = ev.alloc_unbound(DOM0, 1, 2)
    elif setup == "already bound":
        port = store_port(ev)
        ev.bind_consumer(1, port, 0, lambda: None)
    else:
        port = 9
    with pytest.raises(XenError) as info:
        ev.bind_consumer(1, port, 0, lambda: None)
    assert info.value.errno == errno.EINVAL


def test_nobody_else_can_bind_to_it(ev):
    port = store_port(ev)
    ev.bind_consumer(1, port, 0, lambda: None)
    with pytest.raises(XenError):
        ev.bind_interdomain(DOM0, 1, port)


def test_unbinding_gives_the_port_back_unbound(ev):
    port, calls = store_port(ev), []
    ev.bind_consumer(1, port, 0, lambda: calls.append(1))
    ev.unbind_consumer(1, port, 0)
    ch = ev.channel(1, port)
    assert (ch.state, ch.remote_dom) == (EvtchnState.unbound, 0)
    ev.send(1, port)
    assert calls == [] and not ev.has_consumer(1, port)
    ev.bind_consumer(1, port, 0, lambda: calls.append(2))      # INTRODUCE again
    ev.send(1, port)
    assert calls == [2]


def test_the_domain_closing_or_dying_drops_the_consumer(ev):
    port = store_port(ev)
    ev.bind_consumer(1, port, 0, lambda: None)
    ev.close(1, port)
    assert not ev.has_consumer(1, port) and not ev.notify_from_hypervisor(1, port)
    port = store_port(ev, 2)
    ev.bind_consumer(2, port, 0, lambda: None)
    ev.reset(DOM0, 2)
    assert not ev.has_consumer(2, port)
    port = store_port(ev, 2)
    ev.bind_consumer(2, port, 0, lambda: None)
    ev.remove_domain(2)
    assert not ev.has_consumer(2, port)
    ev.unbind_consumer(2, port, 0)           # a domain already gone: nothing to do
