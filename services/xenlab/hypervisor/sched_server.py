"""gRPC adapter for the Sched service: vCPUs, credit, cpupools, physinfo
and the console ring, all the control domain's (Xen's domctls and sysctls
of the same names are)."""
from __future__ import annotations

from xenlab.hypervisor.domains import RunState
from xenlab.hypervisor.physinfo import read_physinfo
from xenlab.proto import common_pb2, sched_pb2, sched_pb2_grpc
from xenlab.rpc import handles_xen_errors
from xenlab.xen.sched import SCHEDULER, parse_cpulist


def _pool(pool) -> sched_pb2.Cpupool:
    return sched_pb2.Cpupool(poolid=pool.poolid, name=pool.name, sched=pool.sched,
                             cpus=sorted(pool.cpus), domains=sorted(pool.domains))


class SchedServicer(sched_pb2_grpc.SchedServicer):
    def __init__(self, hv, toolstack):
        self.hv = hv
        self.toolstack = toolstack

    def _control(self, context, what: str) -> None:
        self.hv.identity.authenticate(context).require_privileged(what)

    def _dom(self, ref):
        return self.hv.domains.lookup(ref.domid, ref.name)

    def _live(self):
        return [d for d in self.hv.domains if d.state is not RunState.DYING]

    @handles_xen_errors
    async def ListVcpus(self, request, context):
        self._control(context, "listing vCPUs")
        doms = [self._dom(ref) for ref in request.domains] or self._live()
        rows = [sched_pb2.VcpuInfo(**row) for dom in doms for row in self.hv.sched.vcpus(dom)]
        return sched_pb2.VcpuList(vcpus=rows, nr_cpus=self.hv.sched.nr_cpus)

    @handles_xen_errors
    async def VcpuPin(self, request, context):
        self._control(context, "pinning vCPUs")
        self.hv.sched.pin(self._dom(request.domain), request.vcpu, request.hard, request.soft)
        return common_pb2.Empty()

    @handles_xen_errors
    async def SchedGet(self, request, context):
        self._control(context, "reading scheduler parameters")
        return sched_pb2.SchedParams(**self.hv.sched.get(self._dom(request)))

    @handles_xen_errors
    async def SchedList(self, request, context):
        self._control(context, "reading scheduler parameters")
        return sched_pb2.SchedParamsList(
            domains=[sched_pb2.SchedParams(**self.hv.sched.get(d)) for d in self._live()])

    @handles_xen_errors
    async def SchedSet(self, request, context):
        self._control(context, "setting scheduler parameters")
        dom = self._dom(request.domain)
        written = self.hv.sched.set(dom, request.weight if request.set_weight else None,
                                    request.cap if request.set_cap else None)
        return sched_pb2.SchedSetReply(params=sched_pb2.SchedParams(**self.hv.sched.get(dom)),
                                       written=written)

    @handles_xen_errors
    async def ListCpupools(self, request, context):
        self._control(context, "listing cpupools")
        pools = self.hv.sched.pools
        return sched_pb2.CpupoolList(pools=[_pool(p) for _, p in sorted(pools.pools.items())],
                                     free_cpus=sorted(pools.free_cpus()),
                                     nr_cpus=self.hv.sched.nr_cpus)

    @handles_xen_errors
    async def CpupoolCreate(self, request, context):
        self._control(context, "creating a cpupool")
        sched = self.hv.sched
        cpus = parse_cpulist(request.cpus, sched.nr_cpus) if request.cpus else ()
        return _pool(sched.pools.create(request.name, request.sched, cpus))

    @handles_xen_errors
    async def CpupoolDestroy(self, request, context):
        self._control(context, "destroying a cpupool")
        self.hv.sched.pools.destroy(request.pool)
        return common_pb2.Empty()

    @handles_xen_errors
    async def CpupoolCpuAdd(self, request, context):
        self._control(context, "adding CPUs to a cpupool")
        return _pool(self.hv.sched.cpu_add(request.pool, request.cpus, self._live()))

    @handles_xen_errors
    async def CpupoolCpuRemove(self, request, context):
        self._control(context, "removing CPUs from a cpupool")
        return _pool(self.hv.sched.cpu_remove(request.pool, request.cpus, self._live()))

    @handles_xen_errors
    async def CpupoolMigrate(self, request, context):
        self._control(context, "moving a domain between cpupools")
        self.hv.sched.migrate(self._dom(request.domain), request.pool)
        return common_pb2.Empty()

    @handles_xen_errors
    async def GetPhysInfo(self, request, context):
        self._control(context, "reading the host's information")
        info = read_physinfo()
        info.update(free_cpus=len(self.hv.sched.pools.free_cpus()), scheduler=SCHEDULER)
        return sched_pb2.PhysInfo(**info)

    @handles_xen_errors
    async def ReadConsole(self, request, context):
        self._control(context, "reading the hypervisor's console")
        return sched_pb2.ConsoleLines(lines=self.hv.conring.read(request.clear))

    @handles_xen_errors
    async def Rename(self, request, context):
        self._control(context, "renaming a domain")
        dom = self._dom(request.domain)
        self.toolstack.rename(dom, request.name)
        return common_pb2.Empty()

