"""Event channels: the EVTCHNOP_* family of event_channel.h, as a pure core.

Each domain has a table of ports (port 0 reserved, as Xen reserves it) and a
shared_info page whose 2-level pending/mask bitmaps carry the events. The
hypervisor only ever *sets* pending bits; ``SharedInfo.set_pending`` says
when that is a 0->1 edge of an unmasked port that must reach the vCPU, and
only then is the injected ``kick(domid, vcpu)`` called. A masked or
already-pending port therefore never rings again, as in Xen's event_2l.c.

An interdomain channel between two domains may also get a direct path
(``ChannelLinks``, the doorbell's notification object per channel): the
core tells it when a channel is bound, moved to another vCPU and closed, and
stays the one authority on which channels there are.

No sockets, no asyncio: the hypervisor is single-threaded, so the tables
need no locks.
"""
from __future__ import annotations

import dataclasses
import errno
from dataclasses import dataclass, field
from typing import Callable, Protocol

from xenlab.hypervisor.caller import Caller
from xenlab.xen import abi
from xenlab.xen.abi import EvtchnState
from xenlab.xen.errors import EvtchnError, PermissionError_
from xenlab.xen.shared_info import SharedInfo

# Xen sizes d->nr_pirqs per domain from the platform's interrupts; xenlab has
# no physical interrupts, so a fixed bound keeps the pirq table small.
NR_PIRQS = 256


class ChannelLinks(Protocol):
    """The direct notification path of interdomain channels
    (hypervisor.doorbell.UpcallRouter)."""

    def link(self, a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
        """Ends ``(domid, port, vcpu)`` a and b are bound to each other."""

    def unlink(self, domid: int, port: int) -> list[tuple[int, int]]:
        """Revoke the channel with end (domid, port) at once; the ends
        (domid, port) that had signals in flight, not yet read."""


@dataclass
class Channel:
    """One bound port (struct evtchn)."""
    port: int
    state: EvtchnState
    vcpu: int = 0                        # notify_vcpu_id
    remote_dom: int = abi.DOMID_INVALID  # unbound: the allowed peer; interdomain: the peer
    remote_port: int = 0
    pirq: int = 0
    virq: int = 0


@dataclass
class _DomainPorts:
    shared_info: SharedInfo
    nr_vcpus: int
    max_ports: int
    channels: dict[int, Channel] = field(default_factory=dict)
    virqs: dict[tuple[int, int], int] = field(default_factory=dict)   # (virq, vcpu) -> port
    pirqs: dict[int, int] = field(default_factory=dict)               # pirq -> port


def _virq_key(virq: int, vcpu: int) -> tuple[int, int]:
    # Global VIRQs live in vCPU 0's virq_to_evtchn table (Xen: virq_is_global).
    return (virq, vcpu if virq in abi.VIRQ_PER_VCPU else 0)


class EventChannels:
    def __init__(self, kick: Callable[[int, int], None], default_max_ports: int = 1024,
                 links: ChannelLinks | None = None):
        self._kick = kick
        self._links = links
        self._default_max_ports = default_max_ports
        self._domains: dict[int, _DomainPorts] = {}
        # (domid, port) -> the hypervisor-side consumer of that domain's port
        # (Xen's xen_consumer channels): see bind_consumer.
        self._consumers: dict[tuple[int, int], Callable[[], None]] = {}

    # -- domain lifecycle -------------------------------------------------
    def add_domain(self, domid: int, shared_info: SharedInfo, nr_vcpus: int = 1,
                   max_ports: int | None = None) -> None:
        if domid in self._domains:
            raise EvtchnError(errno.EEXIST, f"d{domid} already has event channels")
        if not 1 <= nr_vcpus <= abi.XEN_LEGACY_MAX_VCPUS:
            raise EvtchnError(errno.EINVAL, f"nr_vcpus {nr_vcpus} outside 1..{abi.XEN_LEGACY_MAX_VCPUS}")
        limit = self._default_max_ports if max_ports is None else max_ports
        # The 2-level ABI cannot address more ports than its bitmaps hold.
        limit = min(limit, abi.EVTCHN_2L_NR_CHANNELS)
        if limit < 2:
            raise EvtchnError(errno.EINVAL, f"max_ports {limit} leaves no usable port")
        self._domains[domid] = _DomainPorts(shared_info, nr_vcpus, limit)

    def remove_domain(self, domid: int) -> None:
        """Close every port of a dying domain; its interdomain peers become
        unbound (Xen's evtchn_destroy). Its shared_info is not touched: the
        memory is going away. Unknown domains are ignored so that a
        half-built domain can be torn down."""
        d = self._domains.pop(domid, None)
        if d is None:
            return
        for ch in list(d.channels.values()):
            self._consumers.pop((domid, ch.port), None)
            self._release_peer(domid, ch)

    # -- binding ----------------------------------------------------------
    def alloc_unbound(self, caller: Caller, dom: int, remote_dom: int) -> int:
        domid, d = self._target(caller, dom, "allocate event channels for")
        remote = self._resolve_self(caller, remote_dom)
        self._domain(remote)
        return self._new(d, EvtchnState.unbound, remote_dom=remote)

    def bind_interdomain(self, caller: Caller, remote_dom: int, remote_port: int) -> int:
        d = self._domain(caller.domid)
        remote = self._resolve_self(caller, remote_dom)
        rch = self._bound(self._domain(remote), remote, remote_port)
        if rch.state != EvtchnState.unbound:
            raise EvtchnError(errno.EINVAL, f"d{remote} port {remote_port} is {rch.state.name}, not unbound")
        if rch.remote_dom != caller.domid:
            # Xen answers -EINVAL here; xenlab reports it as the access
            # refusal it is, so that a hijack attempt reads as one.
            raise PermissionError_(f"d{remote} port {remote_port} is not offered to d{caller.domid}")
        port = self._new(d, EvtchnState.interdomain, remote_dom=remote, remote_port=remote_port)
        rch.state = EvtchnState.interdomain
        rch.remote_port = port
        # Xen's evtchn_bind_interdomain: an event sent before the bind must
        # not be lost, so the new local end starts pending.
        self._set_pending(caller.domid, port)
        if self._links is not None and remote != caller.domid:
            self._links.link((caller.domid, port, d.channels[port].vcpu),
                             (remote, remote_port, rch.vcpu))
        return port

    def bind_virq(self, caller: Caller, virq: int, vcpu: int = 0) -> int:
        d = self._domain(caller.domid)
        if not 0 <= virq < abi.NR_VIRQS:
            raise EvtchnError(errno.EINVAL, f"virq {virq} outside 0..{abi.NR_VIRQS - 1}")
        if virq in abi.VIRQ_PRIVILEGED:
            caller.require_privileged(f"binding VIRQ {virq}")
        self._check_vcpu(d, vcpu)
        if virq not in abi.VIRQ_PER_VCPU and vcpu != 0:
            raise EvtchnError(errno.EINVAL, f"VIRQ {virq} is global: bind it on vcpu 0, then bind_vcpu")
        key = _virq_key(virq, vcpu)
        if key in d.virqs:
            raise EvtchnError(errno.EEXIST,
                              f"VIRQ {virq} already bound to port {d.virqs[key]} on vcpu {vcpu}")
        port = self._new(d, EvtchnState.virq, vcpu=vcpu, virq=virq)
        d.virqs[key] = port
        return port

    def bind_ipi(self, caller: Caller, vcpu: int = 0) -> int:
        d = self._domain(caller.domid)
        self._check_vcpu(d, vcpu)
        return self._new(d, EvtchnState.ipi, vcpu=vcpu)

    def bind_pirq(self, caller: Caller, pirq: int) -> int:
        caller.require_privileged("binding a physical IRQ")
        d = self._domain(caller.domid)
        if not 0 <= pirq < NR_PIRQS:
            raise EvtchnError(errno.EINVAL, f"pirq {pirq} outside 0..{NR_PIRQS - 1}")
        if pirq in d.pirqs:
            raise EvtchnError(errno.EEXIST, f"pirq {pirq} already bound to port {d.pirqs[pirq]}")
        port = self._new(d, EvtchnState.pirq, pirq=pirq)
        d.pirqs[pirq] = port
        return port

    # -- channels whose other end is in the hypervisor ------------------------
    def bind_consumer(self, domid: int, port: int, offered_to: int,
                      consumer: Callable[[], None]) -> None:
        """Bind the hypervisor's end of a domain's unbound port, which must be
        offered to ``offered_to``: a send on the port then calls
        ``consumer`` instead of raising an event in a domain, as Xen's
        xen_consumer channels (alloc_unbound_xen_event_channel) call their
        notification function. The hypervisor's xenstored binds each
        domain's store port this way, where C xenstored (a process in the
        store domain) would bind_interdomain. The port shows as
        interdomain to DOMID_XEN."""
        d = self._domain(domid)
        ch = self._bound(d, domid, port)
        if ch.state != EvtchnState.unbound or ch.remote_dom != offered_to:
            raise EvtchnError(errno.EINVAL, f"d{domid} port {port} is not an unbound port "
                                            f"offered to d{offered_to}")
        ch.state = EvtchnState.interdomain
        ch.remote_dom = abi.DOMID_XEN
        ch.remote_port = 0
        self._consumers[(domid, port)] = consumer

    def unbind_consumer(self, domid: int, port: int, offered_to: int) -> None:
        """The hypervisor lets go of its end: the port is unbound again,
        offered to ``offered_to``, as the other end of a closed channel."""
        if self._consumers.pop((domid, port), None) is None:
            return
        # A consumer goes with its port (close, reset) and its domain
        # (remove_domain): while there is one, both are there.
        ch = self._domains[domid].channels[port]
        ch.state = EvtchnState.unbound
        ch.remote_dom = offered_to

    def notify_from_hypervisor(self, domid: int, port: int) -> bool:
        """notify_via_xen_event_channel: raise a consumer port's event in
        its domain. False when the domain closed the port meanwhile."""
        if (domid, port) not in self._consumers:
            return False
        self._set_pending(domid, port)
        return True

    def has_consumer(self, domid: int, port: int) -> bool:
        return (domid, port) in self._consumers

    # -- operations on a domain's own ports ------------------------------
    def send(self, domid: int, port: int) -> None:
        d = self._domain(domid)
        ch = self._bound(d, domid, port)
        if ch.state == EvtchnState.interdomain and ch.remote_dom == abi.DOMID_XEN:
            consumer = self._consumers.get((domid, port))
            if consumer is not None:
                consumer()
            return
        if ch.state == EvtchnState.interdomain:
            self._set_pending(ch.remote_dom, ch.remote_port)
        elif ch.state == EvtchnState.ipi:
            self._set_pending(domid, port)
        elif ch.state == EvtchnState.unbound:
            return                  # Xen's evtchn_send: nobody to tell yet, not an error
        else:
            raise EvtchnError(errno.EINVAL,
                              f"d{domid} port {port} is a {ch.state.name} port: nothing to send on")

    def close(self, domid: int, port: int) -> None:
        d = self._domain(domid)
        ch = self._bound(d, domid, port)
        self._release(domid, d, ch)

    def unmask(self, domid: int, port: int) -> None:
        d = self._domain(domid)
        self._check_port(d, domid, port)
        ch = d.channels.get(port)
        vcpu = ch.vcpu if ch else 0
        if d.shared_info.unmask(port, vcpu):
            self._kick(domid, vcpu)

    def bind_vcpu(self, domid: int, port: int, vcpu: int) -> None:
        d = self._domain(domid)
        self._check_vcpu(d, vcpu)
        ch = self._bound(d, domid, port)
        # Xen's evtchn_bind_vcpu: IPIs and per-vCPU VIRQs are tied to theirs.
        movable = ch.state in (EvtchnState.unbound, EvtchnState.interdomain, EvtchnState.pirq) or (
            ch.state == EvtchnState.virq and ch.virq not in abi.VIRQ_PER_VCPU)
        if not movable:
            kind = f"per-vCPU VIRQ {ch.virq}" if ch.state == EvtchnState.virq else ch.state.name
            raise EvtchnError(errno.EINVAL, f"d{domid} port {port} ({kind}) cannot move to another vcpu")
        if ch.vcpu == vcpu:
            return
        ch.vcpu = vcpu
        linked = (self._links is not None and ch.state == EvtchnState.interdomain
                  and ch.remote_dom not in (abi.DOMID_XEN, domid))
        if linked:
            # Each end was told which vCPU its events go to: new objects for both.
            self._unlink(domid, port)
            peer = self._domains[ch.remote_dom].channels[ch.remote_port]
            self._links.link((domid, port, vcpu), (ch.remote_dom, ch.remote_port, peer.vcpu))

    def reset(self, caller: Caller, dom: int) -> None:
        """EVTCHNOP_reset: close every port of `dom`."""
        domid, d = self._target(caller, dom, "reset event channels of")
        for ch in list(d.channels.values()):
            self._release(domid, d, ch)

    def status(self, caller: Caller, dom: int, port: int) -> dict:
        domid, d = self._target(caller, dom, "query event channels of")
        self._check_port(d, domid, port)
        ch = d.channels.get(port) or Channel(port, EvtchnState.closed, remote_dom=0)
        return {
            "state": ch.state, "vcpu": ch.vcpu, "remote_dom": ch.remote_dom,
            "remote_port": ch.remote_port, "pirq": ch.pirq, "virq": ch.virq,
            "pending": d.shared_info.is_pending(port), "masked": d.shared_info.is_masked(port),
        }

    # -- hypervisor-originated events --------------------------------------
    def raise_virq(self, domid: int, virq: int, vcpu: int = 0) -> bool:
        """send_guest_vcpu_virq / send_guest_global_virq: False when the
        domain is gone or has not bound that VIRQ (the event is dropped, as
        Xen drops an unbound VIRQ)."""
        d = self._domains.get(domid)
        port = d.virqs.get(_virq_key(virq, vcpu)) if d else None
        if port is None:
            return False
        self._set_pending(domid, port)
        return True

    def raise_pirq(self, domid: int, pirq: int) -> bool:
        d = self._domains.get(domid)
        port = d.pirqs.get(pirq) if d else None
        if port is None:
            return False
        self._set_pending(domid, port)
        return True

    # -- introspection ------------------------------------------------------
    def ports(self, domid: int) -> list[int]:
        return sorted(self._domain(domid).channels)

    def channel(self, domid: int, port: int) -> Channel | None:
        """A copy of the bound channel at `port`, or None when it is closed."""
        ch = self._domain(domid).channels.get(port)
        return dataclasses.replace(ch) if ch else None

    def max_ports(self, domid: int) -> int:
        return self._domain(domid).max_ports

    def nr_vcpus(self, domid: int) -> int:
        return self._domain(domid).nr_vcpus

    def has_domain(self, domid: int) -> bool:
        return domid in self._domains

    def domains(self) -> list[int]:
        return sorted(self._domains)

    # -- helpers ------------------------------------------------------------
    def _domain(self, domid: int) -> _DomainPorts:
        d = self._domains.get(domid)
        if d is None:
            raise EvtchnError(errno.ESRCH, f"no domain d{domid}")
        return d

    @staticmethod
    def _resolve_self(caller: Caller, dom: int) -> int:
        return caller.domid if dom == abi.DOMID_SELF else dom

    def _target(self, caller: Caller, dom: int, what: str) -> tuple[int, _DomainPorts]:
        domid = self._resolve_self(caller, dom)
        caller.require_self_or_privileged(domid, what)
        return domid, self._domain(domid)

    @staticmethod
    def _check_port(d: _DomainPorts, domid: int, port: int) -> None:
        if not 0 <= port < d.max_ports:
            raise EvtchnError(errno.EINVAL, f"port {port} outside d{domid}'s 0..{d.max_ports - 1}")

    def _bound(self, d: _DomainPorts, domid: int, port: int) -> Channel:
        self._check_port(d, domid, port)
        ch = d.channels.get(port)
        if ch is None:
            raise EvtchnError(errno.EINVAL, f"d{domid} port {port} is closed")
        return ch

    @staticmethod
    def _check_vcpu(d: _DomainPorts, vcpu: int) -> None:
        if not 0 <= vcpu < d.nr_vcpus:
            raise EvtchnError(errno.EINVAL, f"vcpu {vcpu} outside 0..{d.nr_vcpus - 1}")

    @staticmethod
    def _new(d: _DomainPorts, state: EvtchnState, **fields) -> int:
        """Bind the lowest free port (get_free_port; port 0 is never handed out)."""
        for port in range(1, d.max_ports):
            if port not in d.channels:
                d.channels[port] = Channel(port, state, **fields)
                return port
        raise EvtchnError(errno.ENOSPC, f"all {d.max_ports - 1} event channel ports are in use")

    def _set_pending(self, domid: int, port: int) -> None:
        d = self._domains.get(domid)
        ch = d.channels.get(port) if d else None
        if ch is None:
            return
        if d.shared_info.set_pending(port, ch.vcpu):
            self._kick(domid, ch.vcpu)

    def _release(self, domid: int, d: _DomainPorts, ch: Channel) -> None:
        del d.channels[ch.port]
        self._consumers.pop((domid, ch.port), None)
        # A VIRQ or PIRQ port is in its table from its bind to its release.
        if ch.state == EvtchnState.virq:
            del d.virqs[_virq_key(ch.virq, ch.vcpu)]
        elif ch.state == EvtchnState.pirq:
            del d.pirqs[ch.pirq]
        self._release_peer(domid, ch)
        # evtchn_free: a reused port must not start with a stale event.
        d.shared_info.clear_port(ch.port)

    def _unlink(self, domid: int, port: int) -> None:
        """Revoke the channel's direct path. A signal the peer sent before
        and nobody read yet is delivered as the hypervisor would have, to
        whichever end is still bound."""
        if self._links is None:
            return
        for end in self._links.unlink(domid, port):
            self._set_pending(*end)

    def _release_peer(self, domid: int, ch: Channel) -> None:
        """The other end of a closed interdomain channel goes back to unbound,
        offered to the closer (Xen's evtchn_close)."""
        if ch.state != EvtchnState.interdomain:
            return
        if ch.remote_dom != abi.DOMID_XEN:
            self._unlink(domid, ch.port)
        peer = self._domains.get(ch.remote_dom)
        pch = peer.channels.get(ch.remote_port) if peer else None
        if pch is not None and pch.state == EvtchnState.interdomain:
            pch.state = EvtchnState.unbound
            pch.remote_dom = domid
            pch.remote_port = 0
