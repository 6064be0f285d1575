"""The Domains calls a domain's kernel makes, typed (a DomainError when
refused): SCHEDOP_shutdown of itself, and for a privileged domain acting as
the toolstack (Domain-0's kernel, the hostile test peers' toolstack):
creating a domain, network-attach and -detach, clearing up after a backend
kernel that died."""
from __future__ import annotations

from dataclasses import dataclass

from xenlab.proto import common_pb2, domains_pb2, save_pb2
from xenlab.rpc import call
from xenlab.xen.errors import DomainError


@dataclass(frozen=True)
class CreatedDomain:
    domid: int
    secret: str            # the domain's credentials
    agent: str             # where its guest agent will listen
    agent_token: str


@dataclass(frozen=True)
class VifInfo:
    """A vif as the toolstack attached it."""

    domid: int
    devid: int
    backend_id: int
    mac: str
    bridge: str
    vifname: str
    backend_path: str
    frontend_path: str


@dataclass(frozen=True)
class BackendGone:
    closed: tuple[str, ...]      # backend directories marked Closed
    stuck: tuple[str, ...]       # frontends not Closed in time
    unmapped: int
    ports: int


class DomainOps:
    def __init__(self, stub, domid: int, save_stub=None):
        self._stub = stub
        self._save = save_stub
        self.domid = domid

    async def sched_suspend(self, record_gfn: int) -> int:
        """SCHEDOP_shutdown(SHUTDOWN_suspend), passing the gfn of this
        kernel's suspend record. Returns 1 when the suspend was cancelled
        (resumed in place: xl save -c, or a save that failed); a domain
        restored elsewhere never returns from it (its new kernel resumes)."""
        reply = await call(self._save.SchedSuspend(
            save_pb2.SchedSuspendRequest(record_gfn=record_gfn)), DomainError)
        return reply.cancelled

    async def sched_shutdown(self, reason: str) -> None:
        """SCHEDOP_shutdown: this domain stops, for ``reason``."""
        await call(self._stub.SchedShutdown(domains_pb2.SchedShutdownRequest(reason=reason)),
                   DomainError)

    async def create(self, name: str, memory_mb: int, launcher: str = "") -> CreatedDomain:
        reply = await call(self._stub.Create(domains_pb2.CreateDomainRequest(
            spec=domains_pb2.DomainSpec(name=name, memory_mb=memory_mb, launcher=launcher))),
            DomainError)
        return CreatedDomain(reply.info.domid, reply.secret, reply.agent, reply.agent_token)

    async def network_attach(self, domid: int, *, mac: str = "", bridge: str = "",
                             backend: str = "", ip: str = "") -> VifInfo:
        """xl network-attach: the toolstack picks the devid."""
        v = await call(self._stub.NetworkAttach(domains_pb2.NetworkAttachRequest(
            domain=common_pb2.DomainRef(domid=domid),
            vif=domains_pb2.VifSpec(mac=mac, bridge=bridge, backend=backend, ip=ip))),
            DomainError)
        return VifInfo(v.domid, v.devid, v.backend_id, v.mac, v.bridge, v.vifname,
                       v.backend_path, v.frontend_path)

    async def network_detach(self, domid: int, devid: int, *, force: bool = False,
                             timeout: float = 0.0) -> None:
        await call(self._stub.NetworkDetach(domains_pb2.NetworkDetachRequest(
            domain=common_pb2.DomainRef(domid=domid), device=str(devid), force=force,
            timeout=timeout)), DomainError)

    async def backend_gone(self, domid: int) -> BackendGone:
        """What a dead backend kernel of ``domid`` left: its backends marked
        Closed, its mappings and ports released."""
        reply = await call(self._stub.BackendGone(domains_pb2.BackendGoneRequest(
            domain=common_pb2.DomainRef(domid=domid))), DomainError)
        return BackendGone(tuple(reply.closed), tuple(reply.stuck), reply.unmapped, reply.ports)
