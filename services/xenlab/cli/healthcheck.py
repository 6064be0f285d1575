"""`xenlab healthcheck TARGET...`: exit 0 when every target is healthy, 1
when one is not (what a container's HEALTHCHECK runs).

A TARGET is one of:
  HOST:PORT or unix:PATH     a gRPC server whose health service answers SERVING
                             (every xenlab server has one; --service picks a service)
  mqtt://HOST:PORT           an MQTT broker that accepts a connection
  xenstore:PATH[=VALUE]      a xenstore node that exists and is not empty (or
                             equals VALUE), read as Domain-0 through the rundir
  vifs                       every vif of every domain is Connected on both ends
                             and hotplugged into its bridge
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from xenlab import eventloop

CHECK_TIMEOUT = 3.0             # seconds for one check of one target
RETRY_PERIOD = 0.5              # seconds between rounds with --wait


class Unhealthy(Exception):
    """A target is not (yet) healthy; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("targets", nargs="+", metavar="TARGET",
                        help="what to check; the forms are listed above")
    parser.add_argument("--service", default="", metavar="NAME",
                        help="the gRPC service whose health to ask (default: the server's)")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="retry until healthy or SECONDS have passed (default: check once)")
    parser.add_argument("--timeout", type=float, default=CHECK_TIMEOUT, metavar="SECONDS",
                        help=f"for one check of one target (default {CHECK_TIMEOUT:g})")
    parser.add_argument("--rundir", type=Path, default=None,
                        help="the hypervisor's rundir, for xenstore: and vifs "
                             "(default $XENLAB_RUNDIR, else $XDG_RUNTIME_DIR/xenlab, "
                             "else /tmp/xenlab-UID)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing when healthy")


async def check_grpc(address: str, service: str, timeout: float) -> str:
    import grpc  # lazy: load only what is checked
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # lazy: load only what is checked
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise Unhealthy(f"{address}: {err.code().name}: {err.details()}") from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise Unhealthy(f"{address}: {status}")
    return f"{address}: {status}"


async def check_mqtt(url: str, timeout: float) -> str:
    import aiomqtt  # lazy: load only what is checked
    from xenlab.events.config import BrokerAddress  # lazy: load only what is checked
    from xenlab.xen.errors import ConfigError  # lazy: load only what is checked
    try:
        broker = BrokerAddress.parse(url)
    except ConfigError as err:
        raise Unhealthy(err.message) from None
    try:
        async with aiomqtt.Client(broker.host, broker.port, timeout=timeout):
            pass
    except (aiomqtt.MqttError, OSError) as err:
        raise Unhealthy(f"{url}: {err}") from None
    return f"{url}: accepts connections"


def _dom0(rundir: Path):
    from xenlab.client import HypervisorClient, Rundir  # lazy: load only what is checked
    run = Rundir(rundir)
    try:
        return HypervisorClient.connect(run.read_address(), 0, run.read_dom0_secret())
    except (FileNotFoundError, PermissionError) as err:
        raise Unhealthy(str(err)) from None


async def check_xenstore(spec: str, rundir: Path, timeout: float) -> str:
    import grpc  # lazy: load only what is checked
    from xenlab.proto import xenstore_pb2  # lazy: load only what is checked
    path, sep, want = spec.partition("=")
    async with _dom0(rundir) as hv:
        try:
            reply = await hv.xenstore.Read(xenstore_pb2.PathRequest(path=path), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise Unhealthy(f"xenstore {path}: {err.code().name}: {err.details()}") from None
    value = reply.value.decode(errors="replace")
    if (sep and value != want) or (not sep and not value):
        raise Unhealthy(f"xenstore {path} is {value!r}" + (f", not {want!r}" if sep else ""))
    return f"xenstore {path} = {value!r}"


async def check_vifs(rundir: Path, timeout: float) -> str:
    import grpc  # lazy: load only what is checked
    from xenlab.proto import common_pb2  # lazy: load only what is checked
    from xenlab.xen import abi  # lazy: load only what is checked
    connected = int(abi.XenbusState.Connected)
    async with _dom0(rundir) as hv:
        try:
            domains = (await hv.domains.List(common_pb2.Empty(), timeout=timeout)).domains
            vifs = []
            for dom in domains:
                if dom.domid != 0:
                    vifs += (await hv.domains.NetworkList(common_pb2.DomainRef(domid=dom.domid),
                                                          timeout=timeout)).vifs
        except grpc.aio.AioRpcError as err:
            raise Unhealthy(f"vifs: {err.code().name}: {err.details()}") from None
    waiting = [f"{v.vifname} (front {v.state}, back {v.backend_state}, "
               f"hotplug {v.hotplug_status or '-'})"
               for v in vifs if not (v.state == v.backend_state == connected
                                     and v.hotplug_status == "connected")]
    if waiting:
        raise Unhealthy("vifs not connected: " + ", ".join(waiting))
    return f"vifs: {len(vifs)} connected"


async def check(target: str, args) -> str:
    if target == "vifs":
        return await check_vifs(args.rundir, args.timeout)
    if target.startswith("xenstore:"):
        return await check_xenstore(target[len("xenstore:"):], args.rundir, args.timeout)
    if target.startswith("mqtt://"):
        return await check_mqtt(target, args.timeout)
    return await check_grpc(target, args.service, args.timeout)


async def check_all(args) -> list[str]:
    deadline = time.monotonic() + args.wait
    while True:
        try:
            return [await eventloop.wait_for(check(t, args), args.timeout + 1) for t in args.targets]
        except (Unhealthy, asyncio.TimeoutError) as err:
            if time.monotonic() + RETRY_PERIOD > deadline:
                raise Unhealthy(str(err) or "timed out") from None
        await asyncio.sleep(RETRY_PERIOD)


def run(args) -> int:
    try:
        lines = asyncio.run(check_all(args))
    except Unhealthy as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        print("\n".join(lines))
    return 0
