"""`xenlab events`: a lab's events as they arrive, from its MQTT broker or,
with --grpc (and for a lab that has no broker), from its services' gRPC
Events streams: the same topics and payloads either way (docs/EVENTS.md)."""
from __future__ import annotations

import argparse
import sys

from xenlab.client import HypervisorClient, Rundir
from xenlab.events import watch
from xenlab.lab.stream import StreamError, lab_events
from xenlab.xen.errors import XenError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    watch.add_arguments(parser)
    parser.add_argument("--grpc", action="store_true",
                        help="read the lab's gRPC Events streams instead of a broker (the "
                             "default for a lab without a broker)")


def _lab_without_broker(args) -> bool:
    try:
        state = Rundir(args.rundir).read_state()
    except (OSError, XenError):
        return False
    return state is not None and not state.get("mqtt")


async def run(args) -> int:
    if args.broker and args.grpc:
        print("xenlab events: --broker and --grpc exclude each other", file=sys.stderr)
        return 2
    if not args.grpc and (args.broker or not _lab_without_broker(args)):
        return await watch.run(args)
    try:
        run_dir = Rundir(args.rundir)
        address, secret = run_dir.read_address(), run_dir.read_dom0_secret()
    except (OSError, XenError) as err:
        print(f"xenlab events: no lab in {args.rundir}: {getattr(err, 'message', err)}",
              file=sys.stderr)
        return 1
    async with HypervisorClient.connect(address, 0, secret) as hv:
        async def messages():
            async for event in lab_events(hv, args.topic or [f"{args.prefix}/#"]):
                yield event.topic, event.payload, event.retained
        try:
            return await watch.relay(args, messages())
        except StreamError as err:
            print(f"xenlab events: {err.message}", file=sys.stderr)
            return 1
