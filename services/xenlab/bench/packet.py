"""The kernel baseline's traffic: AF_PACKET sender, sink, echo responder and
pinger, each a short program run inside a network namespace
(``ip netns exec NS python -m xenlab.bench.packet ROLE ...``).

Standard library only, so that it starts fast. Each role prints one JSON
object on its last line; ``sink`` and ``echo`` first print ``ready`` once
their socket is bound, so the caller may start the traffic then. Frames are
the same as the xenlab generator's (xenlab.domain.traffic): Ethernet header,
a 32-bit sequence number, a byte pattern; times are CLOCK_MONOTONIC, one
clock for every namespace of the host.
"""
from __future__ import annotations

import argparse
import collections
import json
import resource
import select
import socket
import struct
import sys
import time

from xenlab.osutil import batch_scheduling

SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23     # Linux 4.20: our own transmissions are not looped back to us
ETH_HLEN = 14
SEQ = struct.Struct(">I")
STATS = struct.Struct("II")     # struct tpacket_stats: tp_packets (drops included), tp_drops
BROADCAST = b"\xff" * 6
RCVBUF = 64 * 1024 * 1024
SO_RCVBUFFORCE = 33          # asm-generic/socket.h; Python does not export it


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def frame(dst: bytes, src: bytes, ethertype: int, size: int) -> bytearray:
    pad = bytes(i & 0xFF for i in range(size - ETH_HLEN - SEQ.size))
    return bytearray(dst + src + ethertype.to_bytes(2, "big") + SEQ.pack(0) + pad)


def open_socket(iface: str, ethertype: int, receive: bool) -> socket.socket:
    """Bound to ``ethertype`` to receive it; protocol 0 (receives nothing) to send only."""
    proto = socket.htons(ethertype) if receive else 0
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, proto)
    sock.bind((iface, ethertype if receive else 0))   # bind() converts to network order itself
    if receive:
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    return sock


def own_mac(sock: socket.socket) -> bytes:
    return sock.getsockname()[4]


def packet_stats(sock: socket.socket) -> tuple[int, int]:
    return STATS.unpack(sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, STATS.size))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)


def send(args) -> dict:
    sock = open_socket(args.iface, args.ethertype, receive=False)
    buf = frame(mac_bytes(args.dst), own_mac(sock), args.ethertype, args.size)
    errors: collections.Counter = collections.Counter()
    out = sock.send
    pack = SEQ.pack_into
    started = time.monotonic()
    for seq in range(args.count):
        pack(buf, ETH_HLEN, seq)
        try:
            out(buf)
        except OSError as err:
            errors[err.strerror or str(err.errno)] += 1
    finished = time.monotonic()
    return {"sent": args.count - sum(errors.values()), "errors": dict(errors),
            "started": started, "finished": finished, "cpu": cpu_seconds()}


def sink(args) -> dict:
    sock = open_socket(args.iface, args.ethertype, receive=True)
    if args.announce:
        # One frame from us, so that the bridge learns where we are.
        hello = open_socket(args.iface, args.announce, receive=False)
        hello.send(bytes(frame(BROADCAST, own_mac(hello), args.announce, 60)))
        hello.close()
    packet_stats(sock)              # reading them resets them
    print("ready", flush=True)
    buf = bytearray(65536)
    received = nbytes = 0
    first = last = 0.0
    deadline = time.monotonic() + args.timeout
    sock.settimeout(args.timeout)
    recv = sock.recv_into
    clock = time.monotonic
    try:
        nbytes = recv(buf)
        first = last = clock()
        received = 1
        sock.settimeout(args.idle)
        while received < args.count or not args.count:
            nbytes += recv(buf)
            last = clock()
            received += 1
            if last > deadline:
                break
    except (socket.timeout, TimeoutError):
        pass
    packets, drops = packet_stats(sock)
    return {"received": received, "bytes": nbytes, "first": first, "last": last,
            "tp_packets": packets, "tp_drops": drops, "cpu": cpu_seconds()}


def echo(args) -> dict:
    sock = open_socket(args.iface, args.ethertype, receive=True)
    print("ready", flush=True)
    buf = bytearray(65536)
    view = memoryview(buf)
    echoed = 0
    sock.settimeout(args.timeout)
    try:
        while not args.count or echoed < args.count:
            n = sock.recv_into(buf)
            dst, src = bytes(view[0:6]), bytes(view[6:12])
            view[0:6], view[6:12] = src, dst
            sock.send(view[:n])
            echoed += 1
            sock.settimeout(args.idle)
    except (socket.timeout, TimeoutError):
        pass
    return {"echoed": echoed}


def ping(args) -> dict:
    sock = open_socket(args.iface, args.ethertype, receive=True)
    buf = frame(mac_bytes(args.dst), own_mac(sock), args.ethertype, args.size)
    reply = bytearray(65536)
    rtts: list[float] = []
    lost = 0
    start = time.monotonic()
    for seq in range(args.count):
        wait = start + seq * args.interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        SEQ.pack_into(buf, ETH_HLEN, seq)
        sent_at = time.monotonic()
        sock.send(buf)
        deadline = sent_at + args.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                lost += 1
                break
            n = sock.recv_into(reply)
            if n >= ETH_HLEN + SEQ.size and SEQ.unpack_from(reply, ETH_HLEN)[0] == seq:
                rtts.append(time.monotonic() - sent_at)
                break
    return {"transmitted": args.count, "received": len(rtts), "lost": lost, "rtt": rtts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xenlab.bench.packet", description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("send", "sink", "echo", "ping"))
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--dst", default="ff:ff:ff:ff:ff:ff")
    parser.add_argument("--ethertype", type=lambda s: int(s, 0), default=0x88B5)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--idle", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--announce", type=lambda s: int(s, 0), default=0,
                        help="sink: first send one broadcast frame of this ethertype")
    args = parser.parse_args(argv)
    batch_scheduling()          # as the lab's own processes run, for a like-for-like baseline
    emit({"send": send, "sink": sink, "echo": echo, "ping": ping}[args.role](args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
