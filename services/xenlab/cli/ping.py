"""`xenlab ping DOMAIN DEST`: ping from inside a domain, through its guest
agent, printing what ping(8) prints."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc

from xenlab import argtypes
from xenlab.agent_client import NoAgentError, agent_for, format_ping, ping_header
from xenlab.client import HypervisorClient, Rundir
from xenlab.domain.netstack import PING_MAX_COUNT, PING_MAX_SIZE, PING_MIN_INTERVAL
from xenlab.proto import agent_pb2, common_pb2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The agent's API reads 0 as "the default" in each of these (agent.proto),
    # so 0 is refused here rather than silently turned into 4, 56 or 1 s.
    whole, seconds = argtypes.whole, argtypes.seconds
    parser.add_argument("domain", help="the domain to ping from (name or id)")
    parser.add_argument("dest", type=argtypes.ipv4, help="IPv4 address to ping")
    parser.add_argument("-c", "--count", type=whole(1, PING_MAX_COUNT), default=4,
                        help=f"echo requests to send, 1..{PING_MAX_COUNT} (default 4)")
    parser.add_argument("-s", "--size", type=whole(1, PING_MAX_SIZE), default=56,
                        help=f"payload bytes, 1..{PING_MAX_SIZE} (default 56)")
    parser.add_argument("-i", "--interval", type=seconds(PING_MIN_INTERVAL, 3600.0), default=1.0,
                        help=f"seconds between requests, at least {PING_MIN_INTERVAL:g} (default 1)")
    parser.add_argument("-W", "--timeout", type=seconds(0, 3600.0, above=True), default=2.0,
                        help="seconds to wait for the last reply after the last request (default 2); "
                             "ping ends after COUNT x INTERVAL + TIMEOUT seconds at most")
    parser.add_argument("-I", "--interface", default="", help="interface to ping from (default: the first with an address)")
    parser.add_argument("--rundir", type=Path, default=None, help="the lab's rundir")


async def _ping(args) -> int:
    rundir = Rundir(args.rundir)
    async with HypervisorClient.connect(rundir.read_address(), 0, rundir.read_dom0_secret()) as hv:
        ref = common_pb2.DomainRef(domid=int(args.domain)) if args.domain.isdigit() \
            else common_pb2.DomainRef(name=args.domain)
        info = await hv.domains.Info(ref)
        agent = await agent_for(hv, info.domid)
        # What it waits for, before it waits: the agent answers only at the end.
        print(ping_header(args.dest, args.size), flush=True)
        try:
            reply = await agent.Ping(agent_pb2.PingRequest(
                dst=args.dest, count=args.count, size=args.size, interval=args.interval,
                timeout=args.timeout, interface=args.interface),
                timeout=args.count * args.interval + args.timeout + 30)
        finally:
            await agent.close()
    print(format_ping(reply, args.dest, args.size, header=False))
    return 0 if reply.received else 1


def run(args) -> int:
    try:
        return asyncio.run(_ping(args))
    except grpc.aio.AioRpcError as err:
        print(f"xenlab ping: {err.details()} ({err.code().name})", file=sys.stderr)
    except (NoAgentError, FileNotFoundError, PermissionError) as err:
        print(f"xenlab ping: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2
