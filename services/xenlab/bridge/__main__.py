"""`xenlab bridge-service`: run bridges (xenbr0 by default) in the foreground.

One veth listener serves every bridge of the process: a vif's veth end names
its bridge in its hello. Each bridge registers that address in xenstore
(/tool/xenlab/bridges/NAME/address) unless --no-register. An uplink
(--uplink xenbr0=tap:xltap0) adds a real TAP device as a port of its bridge;
creating one needs CAP_NET_ADMIN. A VXLAN uplink (--uplink
xenbr0=vxlan:vni=42,remote=192.0.2.2) joins the bridge to other hosts'.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from xenlab import eventloop
from xenlab.bridge.fdb import DEFAULT_AGEING, DEFAULT_MAX_LEARNED, POLICIES, POLICY_LINUX
from xenlab.bridge.uplink import parse_uplink
from xenlab.events import config as events_config
from xenlab.osutil import die_with_parent, raise_fd_limit
from xenlab.rundir import Rundir, default_rundir
from xenlab.xen.errors import XenError
from xenlab.xen.names import DEFAULT_BRIDGE
from xenlab.bridge.server import BridgeService, serve
from xenlab.bridge.events import BridgeSource
from xenlab.events.sources import service_events


DEFAULT_FLOOD_LIMIT = "1000"    # flooded frames per second per port (storm control)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bridge", action="append", metavar="NAME",
                        help=f"a bridge to serve; repeat for several; the first is the default "
                             f"for requests naming none (default {DEFAULT_BRIDGE})")
    parser.add_argument("--listen", metavar="ADDR",
                        help="veth address for vif links, unix:PATH or tcp:HOST:PORT "
                             "(default unix:RUNDIR/bridge-FIRSTBRIDGE.sock)")
    parser.add_argument("--grpc", metavar="ADDR",
                        help="gRPC address, unix:PATH or HOST:PORT; no authentication, so keep it "
                             "on a unix socket or loopback (default unix:RUNDIR/bridge.sock)")
    parser.add_argument("--rundir", type=Path, default=None,
                        help="the hypervisor's rundir: sockets go here, and the hypervisor's "
                             "address and Domain-0's secret are read from it to register in "
                             "xenstore (default $XENLAB_RUNDIR, else $XDG_RUNTIME_DIR/xenlab, "
                             "else /tmp/xenlab-UID)")
    parser.add_argument("--ageing", type=float, default=DEFAULT_AGEING, metavar="SECONDS",
                        help=f"FDB ageing time; 0 keeps no learned entry, so every unicast floods "
                             f"(default {DEFAULT_AGEING:.0f}, as Linux)")
    parser.add_argument("--fdb-max", type=int, default=DEFAULT_MAX_LEARNED, metavar="N",
                        help=f"learned FDB entries per bridge at most, as Linux's fdb_max_learned; "
                             f"static ones do not count (default {DEFAULT_MAX_LEARNED})")
    parser.add_argument("--fdb-policy", choices=tuple(POLICIES), default=POLICY_LINUX,
                        help="what a full FDB does: " + "; ".join(f"{k}: {v}" for k, v in POLICIES.items())
                             + f" (default {POLICY_LINUX})")
    parser.add_argument("--flood-limit", type=_flood_limit, default=_flood_limit(DEFAULT_FLOOD_LIMIT),
                        metavar="RATE[/BURST]",
                        help="storm control: each port may flood (broadcast, multicast, unknown "
                             "unicast) at most RATE frames per second, BURST at once (default "
                             f"{DEFAULT_FLOOD_LIMIT}, a burst of one second's worth); past it frames "
                             "are dropped as storm_control; 0 turns it off")
    parser.add_argument("--vlan-filtering", action="append", default=[], metavar="BRIDGE",
                        help="turn on 802.1Q VLAN filtering on BRIDGE (Linux's vlan_filtering 1): "
                             "each port forwards only its VLANs (a vif's vlan=); repeat for several")
    parser.add_argument("--stp", action="append", default=[], metavar="BRIDGE",
                        help="run 802.1D spanning tree on BRIDGE, as Linux's kernel STP (stp_state 1); "
                             "repeat for several")
    parser.add_argument("--priority", action="append", type=_priority, default=[],
                        metavar="BRIDGE=PRIO", help="a bridge's priority, 0..65535 (default 32768): "
                                                    "the lowest bridge id is the root")
    for name, default, (low, high) in (("hello-time", 2, (1, 10)), ("forward-delay", 15, (2, 30)),
                                        ("max-age", 20, (6, 40))):
        parser.add_argument(f"--{name}", type=float, default=float(default), metavar="SECONDS",
                            help=f"STP {name.replace('-', ' ')} of every bridge here, {low}..{high} s "
                                 f"(default {default}, as Linux)")
    parser.add_argument("--link", action="append", type=_link, default=[], metavar="BRIDGE=BRIDGE",
                        help="a cable between two bridges of this service (a port on each, "
                             "to-OTHER); repeat for several")
    parser.add_argument("--uplink", action="append", type=_uplink, default=[],
                        metavar="BRIDGE=tap:NAME|BRIDGE=vxlan:vni=N,remote=HOST[:PORT]",
                        help="tap:NAME adds TAP device NAME (created if missing, gone when the "
                             "service stops) as a port of BRIDGE, so host tools reach the domains "
                             "(needs CAP_NET_ADMIN); vxlan:vni=N,remote=HOST[:PORT][,remote=...]"
                             "[,local=ADDR[:PORT]][,mtu=N][,name=IF] adds a VXLAN tunnel port "
                             "(RFC 7348, UDP 4789 by default) to other hosts' bridges or Linux "
                             "vxlan devices, flooding to every remote, MTU 1450 by default; "
                             "repeat for several bridges")
    parser.add_argument("--no-register", action="store_true",
                        help="do not register the bridges in the hypervisor's xenstore")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="how much the bridge service logs (default INFO)")
    parser.add_argument("--die-with-parent", action="store_true",
                        help="exit when the process that started it exits (used by `xenlab up`)")
    events_config.add_arguments(parser)


def _flood_limit(text: str) -> tuple[float, float | None]:
    rate, _, burst = text.partition("/")
    try:
        values = float(rate), float(burst) if burst else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected RATE or RATE/BURST "
                                         f"(frames per second, frames)") from None
    if values[0] < 0 or (values[1] is not None and values[1] < 1):
        raise argparse.ArgumentTypeError(f"{text!r}: the rate is 0 or more, the burst 1 or more")
    return values


def _priority(text: str) -> tuple[str, int]:
    bridge, sep, value = text.partition("=")
    if not sep or not bridge or not value.isdigit() or int(value) > 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BRIDGE=PRIORITY, a priority of 0..65535")
    return bridge, int(value)


def _link(text: str) -> tuple[str, str]:
    a, sep, b = text.partition("=")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BRIDGE=BRIDGE, e.g. xenbr0=xenbr1")
    return a, b


def _uplink(text: str) -> tuple[str, str]:
    try:
        return parse_uplink(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _uplinks(pairs: list[tuple[str, str]], bridges: list[str]) -> dict[str, str]:
    uplinks: dict[str, str] = {}
    for bridge, spec in pairs:
        if bridge not in bridges:
            raise ValueError(f"--uplink {bridge}={spec}: {bridge} is not served here "
                             f"(bridges: {', '.join(bridges)})")
        if bridge in uplinks:
            raise ValueError(f"--uplink: {bridge} has two uplinks ({uplinks[bridge]}, {spec})")
        uplinks[bridge] = spec
    return uplinks


def service_from_args(args, env=None):

    bridges = args.bridge or [DEFAULT_BRIDGE]
    rundir = Rundir(args.rundir or default_rundir(env))
    listen = args.listen or f"unix:{rundir.socket(f'bridge-{bridges[0]}.sock')}"
    grpc = args.grpc or f"unix:{rundir.socket('bridge.sock')}"
    return BridgeService(bridges, listen, grpc, None if args.no_register else rundir.path,
                         ageing=args.ageing, fdb_max=args.fdb_max, fdb_policy=args.fdb_policy,
                         flood_rate=args.flood_limit[0], flood_burst=args.flood_limit[1],
                         uplinks=_uplinks(args.uplink, bridges), vlan_filtering=args.vlan_filtering,
                         stp_bridges=args.stp, priorities=dict(args.priority), links=args.link,
                         stp_timers={"hello_time": args.hello_time, "forward_delay": args.forward_delay,
                                     "max_age": args.max_age})


def run(args) -> int:

    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s bridge %(levelname)s %(name)s: %(message)s")
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    raise_fd_limit()
    if args.die_with_parent:
        die_with_parent()

    async def main() -> None:
        events = events_config.config_from_args(args)
        service = service_from_args(args)
        Rundir(args.rundir or default_rundir()).create()
        async with service_events(events, "bridge") as ev:
            def ready(s) -> None:
                print(f"xenlab bridge-service: {', '.join(s.bridges)}; veth links on "
                      f"{s.veth_address}; gRPC on {s.grpc_address}", flush=True)
                if ev is not None:
                    ev.add(BridgeSource(s, ev.publisher, events.interval))
            await serve(service, ready=ready, events=ev.hub if ev is not None else None)

    try:
        eventloop.run(main())
    except XenError as err:
        print(f"xenlab bridge-service: {err.message}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"xenlab bridge-service: {err}; or run with --no-register", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        print(f"xenlab bridge-service: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xenlab bridge-service", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
