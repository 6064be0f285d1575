"""`xenlab capture POINT -w FILE.pcap` and `xenlab inject POINT ...`.

POINT is where frames are seen or put:
  DOMAIN:IFACE    a domain's interface (web:eth0), through its guest agent
  vifD.N          a vif in its driver domain (Domain-0), through dom0's agent
  vethD.N         the driver domain's end of that vif's veth pair
  BRIDGE:PORT     a bridge port (xenbr0:vif1.0), through the bridge service

`inject` then follows its frames one hop (xenlab.cli.firsthop) and says
what became of them there.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from xenlab import argtypes
from xenlab.agent_client import NoAgentError, agent_for
from xenlab.bridge.client import NoBridgeError, bridge_address, bridge_for
from xenlab.cli import firsthop
from xenlab.client import HypervisorClient, Rundir
from xenlab.drivers.hotplug import veth_name
from xenlab.osutil import on_stop_signal
from xenlab.net.capture import PcapWriter, read_pcap
from xenlab.net.ethernet import format_mac, parse_mac
from xenlab.proto import agent_pb2, bridge_pb2, common_pb2
from xenlab.xen.errors import ConfigError
from xenlab.xen.names import VIF_MAC

POINTS = "DOMAIN:IFACE (web:eth0), BRIDGE:PORT (xenbr0:vif1.0), vifD.N or vethD.N"
# The address Linux netback gives every vif (xenvif_alloc's dummy_addr): the
# guest's MAC is the frontend's, not the vif's.
DEFAULT_HOP_TIMEOUT = 5.0


class PointError(Exception):
    pass


@dataclass
class Point:
    kind: str            # "agent" | "bridge"
    target: str          # domain name/id, or bridge name
    interface: str       # interface, or port
    text: str = ""       # as the user wrote it


async def resolve(hv: HypervisorClient, text: str) -> Point:
    if ":" in text:
        left, _, right = text.partition(":")
        if not left or not right:
            raise PointError(f"bad point {text!r}: expected {POINTS}")
        if await bridge_address(hv, left):
            return Point("bridge", left, right, text)
        return Point("agent", left, right, text)
    if text.startswith(("vif", "veth")):
        return Point("agent", "0", text, text)
    raise PointError(f"bad point {text!r}: expected {POINTS}")


async def _domid(hv: HypervisorClient, domain: str) -> int:
    ref = common_pb2.DomainRef(domid=int(domain)) if domain.isdigit() else common_pb2.DomainRef(name=domain)
    return (await hv.domains.Info(ref)).domid


async def _agent(hv: HypervisorClient, domain: str):
    return await agent_for(hv, await _domid(hv, domain))


def _connect(args) -> HypervisorClient:
    rundir = Rundir(args.rundir)
    return HypervisorClient.connect(rundir.read_address(), 0, rundir.read_dom0_secret())


# -- capture -------------------------------------------------------------------------
def capture_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("point", help=POINTS)
    parser.add_argument("-w", "--write", type=Path, required=True, metavar="FILE.pcap",
                        help="the pcap file to write (link type Ethernet; '-' for standard output)")
    parser.add_argument("-c", "--count", type=argtypes.whole(1), default=0,
                        help="stop after this many frames (default: no limit)")
    parser.add_argument("--direction", choices=("both", "tx", "rx"), default="both",
                        help="which frames: tx, those the point sends (out of a domain's interface, "
                             "out of the bridge at a port); rx, those it receives; both (default)")
    parser.add_argument("--duration", type=argtypes.seconds(0, above=True), default=0.0,
                        help="stop after this many seconds, with what came (default: no limit)")
    parser.add_argument("--timeout", type=argtypes.seconds(0, above=True), default=0.0,
                        help="with -c: give up after this many seconds if fewer frames came, "
                             "exit status 1 (default: wait until Ctrl-C)")
    parser.add_argument("--rundir", type=Path, default=None, help="the lab's rundir")


def _waiting_for(args) -> str:
    which = {"both": "", "tx": " sent", "rx": " received"}[args.direction]
    what = f"{args.count}{which} frame{'s' if args.count != 1 else ''}" if args.count \
        else f"every{which} frame"
    limits = []
    if args.duration:
        limits.append(f"for {args.duration:g} s")
    if args.count and args.timeout:
        limits.append(f"giving up after {args.timeout:g} s")
    return (f"capturing on {args.point} into {args.write}: waiting for {what}"
            + "".join(f", {limit}" for limit in limits) + " (Ctrl-C to stop)")


async def _capture(args, writer: PcapWriter, out) -> str:
    """Frames into ``writer`` until the count, the duration, the timeout or
    Ctrl-C; how it ended: "count", "duration", "timeout" or "interrupted"."""
    async with _connect(args) as hv:
        point = await resolve(hv, args.point)
        if point.kind == "bridge":
            stub = await bridge_for(hv, point.target)
            call = stub.Capture(bridge_pb2.BridgeCaptureRequest(
                bridge=point.target, port=point.interface, count=args.count, direction=args.direction))
        else:
            stub = await _agent(hv, point.target)
            call = stub.Capture(agent_pb2.CaptureRequest(
                interface=point.interface, count=args.count, direction=args.direction))
        stopped = asyncio.Event()
        on_stop_signal(stopped.set)              # Ctrl-C ends a capture, as tcpdump's, with exit 0

        async def read() -> None:
            async for frame in call:
                writer.write(frame.data, frame.timestamp)
                out.flush()

        try:
            await call.initial_metadata()         # the tap is in place (or the call failed)
            print(_waiting_for(args), file=sys.stderr, flush=True)
            limit = args.duration or (args.timeout if args.count else 0) or None
            reader = asyncio.create_task(read())
            stop = asyncio.create_task(stopped.wait())
            done, _ = await asyncio.wait({reader, stop}, timeout=limit,
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, stop):
                task.cancel()
            if reader in done:
                reader.result()
                return "count" if args.count and writer.count >= args.count else "ended"
            await asyncio.gather(reader, return_exceptions=True)
            if stop in done:
                return "interrupted"
            return "duration" if args.duration else "timeout"
        finally:
            call.cancel()
            await stub.close()


def capture(args) -> int:
    if args.timeout and not args.count:
        print("xenlab capture: --timeout gives up waiting for -c frames: give -c N "
              "(or --duration to capture for a while)", file=sys.stderr)
        return 2
    try:
        out = sys.stdout.buffer if str(args.write) == "-" else open(args.write, "wb")
    except OSError as err:
        print(f"xenlab capture: {args.write}: {err.strerror}", file=sys.stderr)
        return 1
    writer = PcapWriter(out)
    try:
        how = _run("capture", _capture(args, writer, out))
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    if not isinstance(how, str):
        return how
    frames = f"{writer.count} frame{'s' if writer.count != 1 else ''} captured"
    if how == "timeout":
        print(f"xenlab capture: timed out after {args.timeout:g} s: {frames} of the {args.count} "
              f"waited for at {args.point}", file=sys.stderr)
        return 1
    if how == "ended":
        print(f"{frames}; the capture ended early: {args.point} went away", file=sys.stderr)
        return 1
    print(frames, file=sys.stderr)
    return 0


# -- inject ---------------------------------------------------------------------------
def inject_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("point", help="DOMAIN:IFACE (out of the domain's interface, as if its stack "
                                      "sent them), BRIDGE:PORT (into the bridge at that port), vifD.N "
                                      "(from the driver domain to the guest) or vethD.N (from the "
                                      "vif's veth end into the bridge)")
    parser.add_argument("-r", "--read", type=Path, metavar="FILE.pcap",
                        help="frames from a pcap file, as they are")
    parser.add_argument("--count", type=argtypes.whole(1), default=100, help="generated frames (default 100)")
    parser.add_argument("--size", type=int, default=64, help="generated frame size in bytes (default 64)")
    parser.add_argument("--rate", type=argtypes.rate, default=0.0,
                        help="frames per second (default: as fast as possible)")
    parser.add_argument("--src", default=None, metavar="MAC",
                        help="source MAC of generated frames (default: the point's own: a domain "
                             "interface's or veth end's MAC, a bridge port's (the guest's for a "
                             f"vif's port), {VIF_MAC} for a vif, as Linux netback's)")
    parser.add_argument("--dst", default="ff:ff:ff:ff:ff:ff", metavar="MAC",
                        help="destination MAC of generated frames (default broadcast)")
    parser.add_argument("--timeout", type=argtypes.seconds(0, 3600.0, above=True),
                        default=DEFAULT_HOP_TIMEOUT,
                        help="seconds to wait for the next hop to account for the frames "
                             f"(default {DEFAULT_HOP_TIMEOUT:g})")
    parser.add_argument("--rundir", type=Path, default=None, help="the lab's rundir")


ETH_P_EXPERIMENTAL = 0x88B5     # IEEE 802 local experimental ethertype


def generated_frames(count: int, size: int, src: str, dst: str) -> list[bytes]:
    if not 14 <= size <= 65535:
        raise PointError(f"--size {size}: a frame has 14..65535 bytes")
    try:
        header = parse_mac(dst) + parse_mac(src) + ETH_P_EXPERIMENTAL.to_bytes(2, "big")
    except ConfigError as err:
        raise PointError(f"{err}") from None
    return [header + i.to_bytes(4, "big")[: max(0, size - 14)] + bytes(max(0, size - 18))
            for i in range(count)]


async def _paced(frames: list[bytes], rate: float, interface_fields: dict, make):
    start = time.monotonic()
    for i, data in enumerate(frames):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield make(data, **(interface_fields if i == 0 else {}))


@dataclass
class Injection:
    """An injection point, opened: how to send to it, its own address and
    the hop its frames reach first."""
    send: object                        # frames, rate -> InjectSummary (awaitable)
    own_mac: str | None                 # None: it has none (an uplink port)
    mac_is: str                         # whose address that is, for the user
    hop: firsthop.Hop | None
    clients: list


async def _vifs(hv: HypervisorClient) -> list:
    """Every vif of every domain (xl network-list)."""
    out = []
    for dom in (await hv.domains.List(common_pb2.Empty())).domains:
        out += (await hv.domains.NetworkList(common_pb2.DomainRef(domid=dom.domid))).vifs
    return out


async def _name(hv: HypervisorClient, domid: int) -> str:
    return (await hv.domains.Info(common_pb2.DomainRef(domid=domid))).name


async def _open_agent_point(hv: HypervisorClient, point: Point) -> Injection:
    domid = await _domid(hv, point.target)
    agent = await agent_for(hv, domid)
    clients = [agent]
    iface = point.interface
    (stats,) = (await agent.InterfaceStats(agent_pb2.StatsRequest(interface=iface))).interfaces

    def send(frames, rate):
        return agent.InjectFrames(_paced(frames, rate, {"interface": iface},
                                         lambda data, **kw: agent_pb2.Frame(data=data, **kw)))

    vifs = await _vifs(hv)
    hop = None
    mac, mac_is = stats.mac, f"{point.text}'s own MAC"
    backend = next((v for v in vifs if v.backend_id == domid and v.vifname == iface), None)
    via_veth = next((v for v in vifs if v.backend_id == domid and veth_name(v.vifname) == iface), None)
    frontend = next((v for v in vifs if v.domid == domid and f"eth{v.devid}" == iface), None)
    if backend is not None:
        # Frames out of a vif go to its guest: the first hop is the guest's netfront.
        mac, mac_is = VIF_MAC, "a vif's own MAC, as Linux netback gives every vif"
        guest = await agent_for(hv, backend.domid)
        clients.append(guest)
        hop = firsthop.interface_hop(f"eth{backend.devid} of {await _name(hv, backend.domid)} (netfront)",
                                     guest, f"eth{backend.devid}")
    elif via_veth is not None:
        bridge = await bridge_for(hv, via_veth.bridge)
        clients.append(bridge)
        hop = firsthop.bridge_port_hop(f"{via_veth.bridge} (the bridge, port {via_veth.vifname})",
                                       bridge, via_veth.bridge, via_veth.vifname)
    elif frontend is not None:
        # Out of a guest's netfront: the first hop is netback's vif in the backend domain.
        back = await agent_for(hv, frontend.backend_id)
        clients.append(back)
        hop = firsthop.interface_hop(
            f"{frontend.vifname} (netback in {await _name(hv, frontend.backend_id)})",
            back, frontend.vifname)
    return Injection(send, mac, mac_is, hop, clients)


async def _open_bridge_point(hv: HypervisorClient, point: Point) -> Injection:
    bridge = await bridge_for(hv, point.target)
    shown = await bridge.ShowBridges(bridge_pb2.ShowBridgesRequest(bridge=point.target))
    port = next((p for p in shown.bridges[0].ports if p.name == point.interface), None) \
        if shown.bridges else None
    if port is None:
        await bridge.close()
        raise PointError(f"{point.target} has no port {point.interface!r}")
    mac = port.mac if parse_mac(port.mac) != bytes(6) else None

    def send(frames, rate):
        return bridge.Inject(_paced(frames, rate, {"bridge": point.target, "port": point.interface},
                                    lambda data, **kw: bridge_pb2.BridgeInjectFrame(data=data, **kw)))

    hop = firsthop.bridge_port_hop(f"{point.target} (the bridge, frames in at {point.interface})",
                                   bridge, point.target, point.interface)
    return Injection(send, mac, f"port {point.interface}'s MAC: the station behind it", hop, [bridge])


async def _inject(args) -> int:
    if args.read:
        try:
            frames = [frame for _, frame in read_pcap(args.read.read_bytes())]
        except (OSError, ValueError) as err:
            raise PointError(f"{args.read}: {err}") from None
    async with _connect(args) as hv:
        point = await resolve(hv, args.point)
        opened = await (_open_bridge_point if point.kind == "bridge" else _open_agent_point)(hv, point)
        try:
            if not args.read:
                src = args.src or opened.own_mac
                if src is None:
                    raise PointError(f"{args.point} has no MAC address of its own (an uplink port): "
                                     f"give --src")
                frames = generated_frames(args.count, args.size, src, args.dst)
                print(f"{len(frames)} frames of {args.size} bytes from {format_mac(parse_mac(src))}"
                      + ("" if args.src else f" ({opened.mac_is})") + f" to {args.dst}")
            before = await opened.hop.sample() if opened.hop else None
            summary = await opened.send(frames, args.rate)
            report = None
            if opened.hop and summary.accepted:
                report = await firsthop.follow(opened.hop, summary.accepted, before, args.timeout)
        finally:
            for client in opened.clients:
                await client.close()
    return _inject_verdict(args, len(frames), summary, report)


def _inject_verdict(args, count: int, summary, report: firsthop.HopReport | None) -> int:
    drops = ", ".join(f"{k}={v}" for k, v in sorted(summary.drops.items()))
    print(f"{count} frames: {summary.accepted} accepted, {summary.dropped} dropped"
          + (f" ({drops})" if drops else ""))
    if report is not None:
        print(report.summary())
    refused = summary.drops.get("bad_length", 0)
    if refused:
        # Drops the path counts (a full queue, a down link) are traffic;
        # a frame that could never be sent is the caller's mistake.
        print(f"xenlab inject: {refused} frame(s) refused at {args.point}: a frame must be at least "
              f"an Ethernet header (14 bytes) and at most the interface's MTU plus that header "
              f"(1514 bytes for MTU 1500)", file=sys.stderr)
        return 1
    if not summary.accepted:
        print(f"xenlab inject: {args.point} took none of the {count} frames", file=sys.stderr)
        return 1
    if report is not None and not report.passed:
        why = f"dropped {', '.join(f'{k}={v}' for k, v in sorted(report.drops.items()))}" \
            if report.drops else f"none seen there within {args.timeout:g} s"
        print(f"xenlab inject: none of the {summary.accepted} frames got past {report.hop}: {why}",
              file=sys.stderr)
        for hint in report.hints():
            print(f"  {hint}", file=sys.stderr)
        return 1
    return 0


def inject(args) -> int:
    return _run("inject", _inject(args))


def _run(name: str, coro):
    try:
        return asyncio.run(coro)
    except grpc.aio.AioRpcError as err:
        print(f"xenlab {name}: {err.details()} ({err.code().name})", file=sys.stderr)
    except (PointError, NoAgentError, NoBridgeError, FileNotFoundError, PermissionError) as err:
        print(f"xenlab {name}: {err}", file=sys.stderr)
    except (ValueError) as err:
        print(f"xenlab {name}: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1
