"""`xenlab perf SENDER RECEIVER`: a UDP test between two domains, as iperf -u
runs one: RECEIVER's guest agent listens, SENDER's offers datagrams at a
rate, and each interval shows the offered rate (what the sender sent), the
achieved rate (what arrived), loss and jitter; then the whole test."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import grpc

from xenlab import argtypes
from xenlab.agent_client import NoAgentError, ResolveError, agent_for, resolve_destination
from xenlab.client import HypervisorClient, Rundir
from xenlab.net import perf
from xenlab.proto import agent_pb2, common_pb2

GRACE = 30.0        # seconds a call may run past the test's own length


def add_arguments(parser: argparse.ArgumentParser) -> None:
    whole, seconds = argtypes.whole, argtypes.seconds
    parser.add_argument("sender", help="the domain that sends (name or id)")
    parser.add_argument("receiver", type=argtypes.destination,
                        help="the domain that receives (name or id); it is sent to at its "
                             "address on a subnet the sender is on, else its first interface's")
    parser.add_argument("-b", "--bandwidth", type=argtypes.bitrate, default=perf.DEFAULT_RATE,
                        metavar="RATE", help="offered bits per second of UDP payload, with k, M "
                                             "or G (default 1M, as iperf -u)")
    parser.add_argument("-l", "--length", type=whole(perf.MIN_LENGTH, 65507),
                        default=perf.DEFAULT_LENGTH,
                        help=f"UDP payload bytes per datagram, {perf.MIN_LENGTH}..65507 "
                             f"(default {perf.DEFAULT_LENGTH})")
    parser.add_argument("-t", "--time", type=seconds(0, 86400.0, above=True),
                        default=perf.DEFAULT_DURATION, help="seconds to send (default 10)")
    parser.add_argument("-i", "--interval", type=seconds(0.01, 3600.0),
                        default=perf.DEFAULT_INTERVAL, help="seconds between reports (default 1)")
    parser.add_argument("-p", "--port", type=whole(1, 65535), default=perf.DEFAULT_PORT,
                        help=f"the receiver's UDP port (default {perf.DEFAULT_PORT})")
    parser.add_argument("--json", action="store_true",
                        help="print the reports as one JSON object instead of a table")
    parser.add_argument("--rundir", type=Path, default=None, help="the lab's rundir")


def _ref(text: str) -> common_pb2.DomainRef:
    return common_pb2.DomainRef(domid=int(text)) if text.isascii() and text.isdigit() \
        else common_pb2.DomainRef(name=text)


def si(bits: float) -> str:
    """A rate as iperf prints it: bits/s with the largest decimal prefix under it."""
    rounded = float(f"{bits:.3g}")          # 999,960 is 1.00 Mbits/sec, not 1.00e+03 Kbits/sec
    for factor, unit in ((1e9, "Gbits/sec"), (1e6, "Mbits/sec"), (1e3, "Kbits/sec")):
        if rounded >= factor:
            return f"{_three(bits / factor)} {unit}"
    return f"{_three(bits)} bits/sec"


def _three(value: float) -> str:
    """Three significant digits, trailing zeros kept: 10.0, 9.96, 195."""
    return f"{value:#.3g}".rstrip(".")


def _rate(report) -> float:
    span = report.end - report.start
    return report.bytes * 8 / span if span > 0 else 0.0


def format_row(sent, got) -> str:
    """One line: the interval, offered and achieved rates, lost/total and jitter."""
    report = got or sent
    total = (got.datagrams - got.duplicates + got.lost) if got else 0
    loss = f"{got.lost}/{total} ({got.lost * 100.0 / total:.2g}%)" if got and total else "0/0"
    jitter = f"{got.jitter * 1000:.3f} ms" if got else "-"
    extra = []
    if got and got.out_of_order:
        extra.append(f"{got.out_of_order} out of order")
    if got and got.duplicates:
        extra.append(f"{got.duplicates} duplicated")
    if sent and sent.errors:
        extra.append(f"{sent.errors} not sent")
    return (f"{report.start:6.1f}-{report.end:5.1f} sec  {si(_rate(sent)) if sent else '-':>15}"
            f"  {si(_rate(got)) if got else '-':>15}  {loss:>20}  {jitter:>10}"
            + ("  " + ", ".join(extra) if extra else ""))


HEADER = (f"{'Interval':>16}  {'Offered':>15}  {'Achieved':>15}  {'Lost/Total':>20}  "
          f"{'Jitter':>10}")


def _as_dict(report) -> dict:
    return {"start": round(report.start, 6), "end": round(report.end, 6),
            "datagrams": report.datagrams, "bytes": report.bytes,
            "bits_per_second": _rate(report), "lost": report.lost,
            "jitter_ms": report.jitter * 1000, "out_of_order": report.out_of_order,
            "duplicates": report.duplicates, "errors": report.errors}


async def _perf(args) -> int:
    rundir = Rundir(args.rundir)
    async with HypervisorClient.connect(rundir.read_address(), 0, rundir.read_dom0_secret()) as hv:
        sender_info = await hv.domains.Info(_ref(args.sender))
        sender = await agent_for(hv, sender_info.domid)
        try:
            dst, name = await resolve_destination(hv, sender, args.receiver)
            if not name:
                raise ResolveError(f"the receiver is a domain, not an address: its guest agent "
                                   f"receives the test (xenlab xl list shows the domains)")
            receiver_info = await hv.domains.Info(_ref(args.receiver))
            receiver = await agent_for(hv, receiver_info.domid)
            try:
                return await _run(args, sender_info.name, sender, name, receiver, dst)
            finally:
                await receiver.close()
        finally:
            await sender.close()


async def _run(args, sender_name, sender, receiver_name, receiver, dst) -> int:
    limit = args.time + args.interval + GRACE
    serve = receiver.PerfServe(agent_pb2.PerfServeRequest(
        port=args.port, interval=args.interval, timeout=max(2.0, 2 * args.interval)),
        timeout=limit + GRACE)
    first = await serve.read()
    if first is grpc.aio.EOF or not first.ready:
        raise RuntimeError(f"{receiver_name} did not start receiving")
    if not args.json:
        print(f"{sender_name} -> {receiver_name} ({dst}) UDP port {args.port}: "
              f"{args.length}-byte datagrams at {si(args.bandwidth)} for {args.time:g} s",
              flush=True)
        print(HEADER, flush=True)
    send = sender.PerfSend(agent_pb2.PerfSendRequest(
        dst=dst, dport=args.port, rate=args.bandwidth, length=args.length, duration=args.time,
        interval=args.interval), timeout=limit)
    sent, got = {}, {}
    printed = set()
    totals = {}

    def show() -> None:
        """Each interval once both sides have it, in order."""
        for index in sorted(set(sent) & set(got) - printed):
            if not args.json:
                print(format_row(sent[index], got[index]), flush=True)
            printed.add(index)

    async def read(call, into, side):
        async for report in call:
            if report.total:
                totals[side] = report
            elif not report.ready:
                into[round(report.start / args.interval)] = report
                show()
    try:
        await asyncio.gather(read(send, sent, "sent"), read(serve, got, "got"))
    except BaseException:
        serve.cancel()
        send.cancel()
        raise
    for index in sorted((set(sent) | set(got)) - printed):     # one side only: say so
        if not args.json:
            print(format_row(sent.get(index), got.get(index)), flush=True)
    total_sent, total_got = totals.get("sent"), totals.get("got")
    if args.json:
        print(json.dumps({"sender": sender_name, "receiver": receiver_name, "dst": dst,
                          "port": args.port, "length": args.length, "rate": args.bandwidth,
                          "sent": [_as_dict(sent[i]) for i in sorted(sent)],
                          "received": [_as_dict(got[i]) for i in sorted(got)],
                          "total": {"sent": _as_dict(total_sent) if total_sent else None,
                                    "received": _as_dict(total_got) if total_got else None}},
                         indent=2))
    else:
        print(format_row(total_sent, total_got) + "  total")
    if total_got is None or not total_got.datagrams:
        print(f"xenlab perf: no datagram reached {receiver_name}", file=sys.stderr)
        return 1
    return 0


def run(args) -> int:
    try:
        return asyncio.run(_perf(args))
    except grpc.aio.AioRpcError as err:
        print(f"xenlab perf: {err.details()} ({err.code().name})", file=sys.stderr)
    except (NoAgentError, ResolveError, RuntimeError, FileNotFoundError, PermissionError) as err:
        print(f"xenlab perf: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2
