"""`xenlab tc qdisc add|change|replace|del|show dev NAME root netem ...`, as tc(8).

    xenlab tc qdisc add dev vif1.0 root netem delay 20ms 5ms distribution normal loss 1%
    xenlab tc qdisc change dev vif1.0 root netem rate 10mbit limit 1000
    xenlab tc -s qdisc show [dev vif1.0]
    xenlab tc qdisc del dev vif1.0 root

Where a qdisc goes is where tc would put it: on the device's egress. On
``vifD.N`` (Domain-0's netback interface) that is toward the guest; on
``vethD.N`` (Domain-0's end of the vif's veth pair) from the guest toward
the bridge; on a bridge port's link (``BRIDGE:PORT``, an uplink, a cable
``to-PEER``) out of the bridge. lab/shaping.py routes the command to the
process that owns the device. The netem options are net/netem.py's subset.
"""
from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import grpc

from xenlab.cli.bridge import take_rundir
from xenlab.client import HypervisorClient
from xenlab.net.netem import USAGE as NETEM_USAGE, NetemError, parse_netem
from xenlab.rundir import Rundir, default_rundir
from xenlab.xen.errors import XenError

USAGE = """\
Usage: xenlab tc [ -s ] [ --rundir DIR ] qdisc { add | change | replace | del | show } \
[ dev NAME ] [ root ] [ netem OPTIONS ]
  NAME: vifD.N (frames to the guest), vethD.N (frames from the guest), BRIDGE:PORT
        (frames out of the bridge at PORT)
""" + NETEM_USAGE
OPS = {"add": "add", "change": "change", "replace": "replace", "del": "del", "delete": "del",
       "show": "show", "list": "show", "ls": "show"}


class Usage(Exception):
    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


@dataclass
class TcCommand:
    op: str
    dev: str = ""
    args: list[str] = field(default_factory=list)
    stats: bool = False
    rundir: Path | None = None


def parse_tc(argv: Sequence[str]) -> TcCommand:
    """tc's command line for the qdisc subset; Usage (one line) for anything else."""
    argv = list(argv)
    stats, rundir = False, take_rundir(argv)
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        if opt in ("-h", "--help", "-help"):
            raise Usage(USAGE, 0)
        if opt in ("-s", "-stats", "-statistics"):
            stats = True
        else:
            raise Usage(f'xenlab tc: option "{opt}" is unknown, try "xenlab tc --help"')
    if not argv:
        raise Usage(USAGE)
    if argv[0] in ("help",):
        raise Usage(USAGE, 0)
    if argv[0] not in ("qdisc", "qd", "q"):
        raise Usage(f'xenlab tc: object "{argv[0]}" is not supported (only qdisc)')
    argv.pop(0)
    if not argv:
        argv = ["show"]
    word = argv.pop(0)
    if word == "help":
        raise Usage(USAGE, 0)
    if word not in OPS:
        raise Usage(f'xenlab tc: command "{word}" is unknown (add, change, replace, del, show)')
    cmd = TcCommand(OPS[word], stats=stats, rundir=rundir)
    while argv:
        word = argv.pop(0)
        if word == "dev":
            if not argv:
                raise Usage('xenlab tc: "dev" needs a device name')
            cmd.dev = argv.pop(0)
        elif word == "root":
            pass
        elif word in ("parent", "handle", "ingress", "clsact", "estimator", "stab"):
            raise Usage(f'xenlab tc: "{word}" is not supported: only the root qdisc of a device')
        elif word == "netem":
            if cmd.op == "show":
                raise Usage("xenlab tc: qdisc show takes no qdisc options")
            cmd.args = argv
            argv = []
            if cmd.op == "del" and cmd.args:
                raise Usage("xenlab tc: qdisc del takes no netem options")
        elif cmd.op in ("add", "change", "replace") and not cmd.args:
            raise Usage(f'xenlab tc: qdisc kind "{word}" is not supported (only netem)')
        else:
            raise Usage(f'xenlab tc: what is "{word}"?')
    if cmd.op in ("add", "change", "replace"):
        if not cmd.dev:
            raise Usage(f"xenlab tc: qdisc {cmd.op} needs a device: dev NAME")
        try:
            parse_netem(cmd.args)        # a mistake is reported before connecting
        except NetemError as err:
            raise Usage(f"xenlab tc: {err}", 0 if "Usage:" in str(err) else 1) from None
    if cmd.op == "del" and not cmd.dev:
        raise Usage("xenlab tc: qdisc del needs a device: dev NAME")
    return cmd


def format_qdisc(info, stats: bool = False, dev: bool = False) -> str:
    """``tc [-s] qdisc show``'s lines for one qdisc (naming its device, as
    tc does when it shows every device's)."""
    text = _with_dev(info.line, info.dev) if dev else info.line
    if stats and info.stats:
        s = dict(info.stats)
        text += (f"\n Sent {s.get('sent', 0)} pkt (dropped {s.get('loss', 0) + s.get('limit', 0)}, "
                 f"overlimits {s.get('limit', 0)} requeues 0)\n backlog {s.get('backlog', 0)}p"
                 f"\n duplicated {s.get('duplicated', 0)} corrupted {s.get('corrupted', 0)} "
                 f"reordered {s.get('reordered', 0)}")
    return text


def _with_dev(line: str, dev: str) -> str:
    """tc prints ``qdisc netem 8001: dev vif1.0 root refcnt 2 ...``."""
    kind, handle, rest = (line.split(" ", 3) + ["", ""])[1:4]
    return f"qdisc {kind} {handle} dev {dev} {rest}".rstrip()


async def run_command(hv, cmd: TcCommand, out=sys.stdout) -> int:
    from xenlab.lab import shaping        # lazy: --help and parse errors need no lab
    reply = await shaping.qdisc(hv, cmd.op, cmd.dev, cmd.args)
    if cmd.op == "show":
        for info in reply.qdiscs:
            print(format_qdisc(info, cmd.stats, dev=not cmd.dev), file=out)
    return 0


def tc_main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    try:
        cmd = parse_tc(argv)
    except Usage as err:
        print(str(err), file=sys.stderr if err.status else sys.stdout)
        return err.status

    async def work() -> int:
        rundir = Rundir(cmd.rundir or default_rundir(env))
        async with HypervisorClient.connect(rundir.read_address(), 0, rundir.read_dom0_secret()) as hv:
            return await run_command(hv, cmd)

    try:
        return asyncio.run(work())
    except grpc.aio.AioRpcError as err:
        hint = " (is the lab running?)" if err.code() is grpc.StatusCode.UNAVAILABLE else ""
        print(f"xenlab tc: {err.details()}{hint}", file=sys.stderr)
    except (XenError, LookupError) as err:
        print(f"xenlab tc: {getattr(err, 'message', err)}", file=sys.stderr)
    except (FileNotFoundError, PermissionError) as err:
        print(f"xenlab tc: {err}", file=sys.stderr)
    return 2
