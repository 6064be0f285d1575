"""Where ``tc qdisc ... dev NAME`` goes in a lab: to the process that owns
the device, as tc talks netlink to the kernel that owns it.

* ``vifD.N`` (egress: toward the guest) and ``vethD.N`` (egress: from the
  guest toward its bridge) are Domain-0's: its agent serves them, found
  through the toolstack's record as every other client of it finds it.
* ``BRIDGE:PORT``, or a name Domain-0 does not have (an uplink, a cable
  between bridges, ``to-PEER``), is a bridge port's link (egress: out of
  the bridge at that port): the bridge service serves it.
"""
from __future__ import annotations

import errno

from xenlab.agent_client import agent_for
from xenlab.bridge.client import bridge_for, registered_bridges
from xenlab.proto import qdisc_pb2, qdisc_pb2_grpc
from xenlab.xen.errors import XenError


def owner(dev: str) -> tuple[str, str, str]:
    """("dom0" | "bridge", bridge name or "", device name as its owner names it)."""
    if ":" in dev:
        bridge, _, port = dev.partition(":")
        return "bridge", bridge, port
    if dev.startswith(("vif", "veth")):
        return "dom0", "", dev
    return "bridge", "", dev


async def qdisc(hv, op: str, dev: str = "", args: list[str] | tuple[str, ...] = ()) -> qdisc_pb2.QdiscReply:
    """One ``tc qdisc`` command on the lab ``hv`` (a HypervisorClient acting
    as Domain-0) runs. ``show`` with no device: every qdisc of the lab."""
    if op == "show" and not dev:
        reply = await _dom0_call(hv, qdisc_pb2.QdiscRequest(op="show"))
        services: dict[str, str] = {}           # one service may run several bridges
        for name, address in sorted((await registered_bridges(hv)).items()):
            services.setdefault(address, name)
        for name in services.values():
            part = await _bridge_call(hv, name, qdisc_pb2.QdiscRequest(op="show"))
            reply.qdiscs.extend(part.qdiscs)    # named BRIDGE:PORT
        return reply
    where, bridge, name = owner(dev)
    request = qdisc_pb2.QdiscRequest(op=op, dev=name, args=list(args))
    if where == "dom0":
        return await _dom0_call(hv, request)
    if not bridge:
        bridges = sorted(await registered_bridges(hv))
        if not bridges:
            raise XenError(errno.ENOENT, "no bridge service has registered: is the lab running?")
        bridge = bridges[0]     # one service runs every bridge of a lab; it finds the port
    request.dev = f"{bridge}:{name}" if ":" in dev else name
    return await _bridge_call(hv, bridge, request)


async def _dom0_call(hv, request) -> qdisc_pb2.QdiscReply:
    async with await agent_for(hv, 0) as agent:
        return await qdisc_pb2_grpc.TrafficControlStub(agent.channel).Qdisc(request)


async def _bridge_call(hv, bridge: str, request) -> qdisc_pb2.QdiscReply:
    stub = await bridge_for(hv, bridge)
    try:
        return await qdisc_pb2_grpc.TrafficControlStub(stub.channel).Qdisc(request)
    finally:
        await stub.close()
