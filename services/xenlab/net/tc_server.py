"""The TrafficControl gRPC service (qdisc.proto): ``tc qdisc`` on the
devices of this process, for Domain-0's agent and the bridge service alike.

It is handed how to find a device by name and how to list them; the tc
operations are ``net/qdisc.py``'s and the syntax ``net/netem.py``'s, so
that a bad option is the parser's one-line error (EINVAL), an existing
qdisc EEXIST and a missing one ENOENT, mapped once by the rpc layer.
"""
from __future__ import annotations

import errno
from typing import Callable, Iterable

from xenlab.net.device import NetDevice
from xenlab.net.netem import NetemError, parse_netem
from xenlab.net.qdisc import qdisc_add, qdisc_change, qdisc_delete, qdisc_replace, qdisc_show
from xenlab.proto import qdisc_pb2, qdisc_pb2_grpc
from xenlab.rpc import handles_xen_errors
from xenlab.xen.errors import XenError

SERVICE_NAME = qdisc_pb2.DESCRIPTOR.services_by_name["TrafficControl"].full_name
OPS = ("add", "change", "replace", "del", "show")


class TrafficControlServicer(qdisc_pb2_grpc.TrafficControlServicer):
    def __init__(self, device: Callable[[str], NetDevice],
                 devices: Callable[[], Iterable[tuple[str, NetDevice]]]):
        self._device = device          # raises XenError(ENOENT) for an unknown name
        self._devices = devices        # (name as a client names it, device) for show

    @handles_xen_errors
    async def Qdisc(self, request, context):
        op = request.op
        if op not in OPS:
            raise XenError(errno.EINVAL, f"unknown tc qdisc command {op!r} ({', '.join(OPS)})")
        if op == "show":
            if request.dev:
                devices = [(request.dev, self._device(request.dev))]
            else:
                devices = [(name, d) for name, d in self._devices() if d.qdisc is not None]
            return qdisc_pb2.QdiscReply(qdiscs=[qdisc_info(name, d) for name, d in devices])
        if not request.dev:
            raise XenError(errno.EINVAL, f"tc qdisc {op} needs a device (dev NAME)")
        dev = self._device(request.dev)
        if op == "del":
            if request.args:
                raise XenError(errno.EINVAL, "tc qdisc del takes no netem options")
            qdisc_delete(dev)
            return qdisc_pb2.QdiscReply()
        try:
            # tc change sends a whole set of options, as add does (netem_change
            # takes them all): what is not given is netem's default again.
            config = parse_netem(request.args)
        except NetemError as err:
            raise XenError(errno.EINVAL, str(err)) from None
        {"add": qdisc_add, "change": qdisc_change, "replace": qdisc_replace}[op](dev, config)
        return qdisc_pb2.QdiscReply(qdiscs=[qdisc_info(request.dev, dev)])


def qdisc_info(name: str, dev: NetDevice) -> qdisc_pb2.QdiscInfo:
    stats = dev.qdisc.stats() if dev.qdisc is not None else {}
    options = dev.qdisc.config.format() if dev.qdisc is not None else ""
    return qdisc_pb2.QdiscInfo(dev=name, line=qdisc_show(dev), stats=stats, options=options)


def register(servicer: TrafficControlServicer):
    """For rpc.start_server's ``register``."""
    return lambda server: qdisc_pb2_grpc.add_TrafficControlServicer_to_server(servicer, server)
