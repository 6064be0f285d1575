"""`xenlab spin DOMAIN`: keep a domain's vCPUs busy for a while (the guest
agent's Spin: a CPU-bound guest workload), to watch the host schedule them
with `xenlab xl top`, `xl vcpu-list` and `xl sched-credit -c`."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc

from xenlab import argtypes
from xenlab.agent_client import NoAgentError, agent_for
from xenlab.cli.xl import domain_ref
from xenlab.client import HypervisorClient, Rundir
from xenlab.domain.agent import SPIN_MAX
from xenlab.proto import agent_pb2

RPC_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", type=domain_ref, metavar="DOMAIN", help="the domain (name or id)")
    parser.add_argument("-v", "--vcpu", dest="vcpus", type=argtypes.whole(0, 31), action="append",
                        metavar="N", help="a vCPU to keep busy (again for more; default: every online one)")
    parser.add_argument("-t", "--seconds", type=argtypes.seconds(0.001, SPIN_MAX), default=10.0,
                        help=f"for how long, up to {SPIN_MAX:g} (default 10); it returns at once")
    parser.add_argument("--rundir", type=Path, default=None, help="the lab's rundir")


async def _spin(args) -> int:
    rundir = Rundir(args.rundir)
    async with HypervisorClient.connect(rundir.read_address(), 0, rundir.read_dom0_secret()) as hv:
        info = await hv.domains.Info(args.domain, timeout=RPC_TIMEOUT)
        async with await agent_for(hv, info.domid) as agent:
            reply = await agent.Spin(agent_pb2.SpinRequest(vcpus=args.vcpus or [], seconds=args.seconds),
                                     timeout=RPC_TIMEOUT)
    busy = ", ".join(str(v) for v in reply.vcpus) or "none (every vCPU asked is offline)"
    print(f"{info.name}: vCPUs busy for {args.seconds:g} s: {busy}")
    return 0 if reply.vcpus else 1


def run(args) -> int:
    try:
        return asyncio.run(_spin(args))
    except grpc.aio.AioRpcError as err:
        print(f"xenlab spin: {err.details()} ({err.code().name})", file=sys.stderr)
    except (NoAgentError, FileNotFoundError, PermissionError) as err:
        print(f"xenlab spin: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1
