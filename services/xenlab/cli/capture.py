"""`xenlab capture POINT -w FILE.pcap` and `xenlab inject POINT ...`.

POINT is where frames are seen or put:
  DOMAIN:IFACE    a domain's interface (web:eth0), through its guest agent
  vifD.N          a vif in its driver domain (Domain-0), through dom0's agent
  vethD.N         the driver domain's end of that vif's veth pair
  BRIDGE:PORT     a bridge port (xenbr0:vif1.0), through the bridge service
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from xenlab.agent_client import NoAgentError, agent_for
from xenlab.cli import argtypes
from xenlab.client import HypervisorClient, Rundir
from xenlab.net.capture import PcapWriter, read_pcap
from xenlab.net.ethernet import parse_mac
from xenlab.proto import agent_pb2, bridge_pb2, bridge_pb2_grpc, common_pb2, xenstore_pb2
from xenlab.rpc import CHANNEL_OPTIONS


class PointError(Exception):
    pass


@dataclass
class Point:
    kind: str            # "agent" | "bridge"
    target: str          # domain name/id, or bridge name
    interface: str       # interface, or port


async def _bridge_grpc(hv: HypervisorClient, bridge: str) -> str | None:
    try:
        reply = await hv.xenstore.Read(xenstore_pb2.PathRequest(path=f"/tool/xenlab/bridges/{bridge}/grpc"))
    except grpc.aio.AioRpcError:
        return None
    return reply.value.decode() or None


async def resolve(hv: HypervisorClient, text: str) -> Point:
    if ":" in text:
        left, _, right = text.partition(":")
        if not left or not right:
            raise PointError(f"bad capture point {text!r}: expected DOMAIN:IFACE, BRIDGE:PORT, vifD.N or vethD.N")
        if await _bridge_grpc(hv, left):
            return Point("bridge", left, right)
        return Point("agent", left, right)
    if text.startswith(("vif", "veth")):
        return Point("agent", "0", text)
    raise PointError(f"bad capture point {text!r}: expected DOMAIN:IFACE (web:eth0), BRIDGE:PORT "
                     f"(xenbr0:vif1.0), vifD.N or vethD.N")


async def _agent(hv: HypervisorClient, domain: str):
    ref = common_pb2.DomainRef(domid=int(domain)) if domain.isdigit() else common_pb2.DomainRef(name=domain)
    info = await hv.domains.Info(ref)
    return await agent_for(hv, info.domid)


async def _bridge_stub(hv: HypervisorClient, bridge: str):
    address = await _bridge_grpc(hv, bridge)
    channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return bridge_pb2_grpc.BridgeStub(channel), channel


def _connect(args) -> HypervisorClient:
    rundir = Rundir(args.rundir)
    return HypervisorClient.connect(rundir.read_address(), 0, rundir.read_dom0_secret())


# -- capture -------------------------------------------------------------------------
def capture_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("point", help="DOMAIN:IFACE, BRIDGE:PORT, vifD.N or vethD.N")
    parser.add_argument("-w", "--write", type=Path, required=True, metavar="FILE.pcap",
                        help="the pcap file to write (link type Ethernet; '-' for standard output)")
    parser.add_argument("-c", "--count", type=argtypes.whole(1), default=0,
                        help="stop after this many frames (default: no limit)")
    parser.add_argument("--direction", choices=("both", "tx", "rx"), default="both")
    parser.add_argument("--duration", type=argtypes.seconds(0, above=True), default=0.0,
                        help="stop after this many seconds (default: no limit)")
    parser.add_argument("--rundir", type=Path, default=None, help="the lab's rundir")


async def _capture(args) -> int:
    out = sys.stdout.buffer if str(args.write) == "-" else open(args.write, "wb")
    writer = PcapWriter(out)
    async with _connect(args) as hv:
        point = await resolve(hv, args.point)
        if point.kind == "bridge":
            stub, channel = await _bridge_stub(hv, point.target)
            call = stub.Capture(bridge_pb2.BridgeCaptureRequest(
                bridge=point.target, port=point.interface, count=args.count, direction=args.direction))
        else:
            stub = channel = await _agent(hv, point.target)
            call = stub.Capture(agent_pb2.CaptureRequest(
                interface=point.interface, count=args.count, direction=args.direction))
        print(f"capturing on {args.point} -> {args.write} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        try:
            async with asyncio.timeout(args.duration or None):
                async for frame in call:
                    writer.write(frame.data, frame.timestamp)
                    out.flush()
        except TimeoutError:
            call.cancel()
        finally:
            await channel.close()
            if out is not sys.stdout.buffer:
                out.close()
    print(f"{writer.count} frames captured", file=sys.stderr)
    return 0


def capture(args) -> int:
    return _run("capture", _capture(args))


# -- inject ---------------------------------------------------------------------------
def inject_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("point", help="DOMAIN:IFACE (into the domain's stack, out of its interface) "
                                      "or BRIDGE:PORT (into the bridge at that port)")
    parser.add_argument("-r", "--read", type=Path, metavar="FILE.pcap", help="frames from a pcap file")
    parser.add_argument("--count", type=argtypes.whole(1), default=100, help="generated frames (default 100)")
    parser.add_argument("--size", type=int, default=64, help="generated frame size in bytes (default 64)")
    parser.add_argument("--rate", type=argtypes.rate, default=0.0,
                        help="frames per second (default: as fast as possible)")
    parser.add_argument("--src", default="00:16:3e:7f:ff:fe", help="source MAC of generated frames")
    parser.add_argument("--dst", default="ff:ff:ff:ff:ff:ff", help="destination MAC of generated frames")
    parser.add_argument("--rundir", type=Path, default=None, help="the lab's rundir")


ETH_P_EXPERIMENTAL = 0x88B5     # IEEE 802 local experimental ethertype


def generated_frames(count: int, size: int, src: str, dst: str) -> list[bytes]:
    if not 14 <= size <= 65535:
        raise PointError(f"--size {size}: a frame has 14..65535 bytes")
    header = parse_mac(dst) + parse_mac(src) + ETH_P_EXPERIMENTAL.to_bytes(2, "big")
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


async def _inject(args) -> int:
    if args.read:
        try:
            frames = [frame for _, frame in read_pcap(args.read.read_bytes())]
        except (OSError, ValueError) as err:
            raise PointError(f"{args.read}: {err}") from None
    else:
        frames = generated_frames(args.count, args.size, args.src, args.dst)
    async with _connect(args) as hv:
        point = await resolve(hv, args.point)
        if point.kind == "bridge":
            stub, channel = await _bridge_stub(hv, point.target)
            summary = await stub.Inject(_paced(frames, args.rate, {"bridge": point.target, "port": point.interface},
                                               lambda data, **kw: bridge_pb2.BridgeInjectFrame(data=data, **kw)))
        else:
            stub = channel = await _agent(hv, point.target)
            summary = await stub.InjectFrames(_paced(frames, args.rate, {"interface": point.interface},
                                                     lambda data, **kw: agent_pb2.Frame(data=data, **kw)))
        await channel.close()
    drops = ", ".join(f"{k}={v}" for k, v in sorted(summary.drops.items()))
    print(f"{len(frames)} frames: {summary.accepted} accepted, {summary.dropped} dropped"
          + (f" ({drops})" if drops else ""))
    refused = summary.drops.get("bad_length", 0)
    if refused:
        # Drops the path counts (a full queue, a down link) are traffic;
        # a frame that could never be sent is the caller's mistake.
        print(f"xenlab inject: {refused} frame(s) refused at {args.point}: a frame must be at least "
              f"an Ethernet header (14 bytes) and at most the interface's MTU plus that header "
              f"(1514 bytes for MTU 1500)", file=sys.stderr)
        return 1
    return 0


def inject(args) -> int:
    return _run("inject", _inject(args))


def _run(name: str, coro) -> int:
    try:
        return asyncio.run(coro)
    except grpc.aio.AioRpcError as err:
        print(f"xenlab {name}: {err.details()} ({err.code().name})", file=sys.stderr)
    except (PointError, NoAgentError, FileNotFoundError, PermissionError) as err:
        print(f"xenlab {name}: {err}", file=sys.stderr)
    except (ValueError) as err:
        print(f"xenlab {name}: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1
