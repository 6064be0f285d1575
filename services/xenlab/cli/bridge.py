"""`xenlab bridge` and `xenlab brctl`: iproute2's bridge(8) and bridge-utils'
brctl(8) for the lab's bridges, with their syntax, output and errors.

    xenlab bridge [-s] [-d] [-j [-p]] fdb show [br BRIDGE] [brport|dev PORT] [vlan VID] [state STATE] [dynamic]
    xenlab bridge fdb {add|append|replace|del} MAC dev PORT [master] [permanent|local|static|dynamic] [sticky] [vlan VID]
    xenlab bridge [-d] [-j [-p]] link show [dev PORT]
    xenlab bridge link set dev PORT [learning|flood|mcast_flood|bcast_flood|hairpin|isolated|locked on|off]
                                    [state STATE] [priority PRIO] [cost COST]
    xenlab bridge [-j] vlan show [dev PORT]
    xenlab bridge vlan {add|del} vid VID[-VID] dev PORT [pvid] [untagged]
    xenlab bridge [-j] monitor [fdb] [link] [all]
    xenlab brctl show [BRIDGE] | showmacs BRIDGE

Objects and commands may be abbreviated as iproute2 allows (`bridge f sh`).
Every bridge the host runs is reached through xenstore
(/tool/xenlab/bridges/NAME/grpc), with the toolstack's credentials from the
rundir (--rundir, else $XENLAB_RUNDIR, else /tmp/xenlab-UID).

Where iproute2 would talk to a port's own driver (`self`), there is no such
thing: every port's FDB is its bridge's, so `self` is refused and `master`
is implied.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Mapping, Sequence

import grpc

from xenlab.bridge import output
from xenlab.bridge.client import BridgeClient
from xenlab.client import HypervisorClient, Rundir
from xenlab.proto import bridge_pb2
from xenlab.rpc import STATUS_ERRNO
from xenlab.rundir import default_rundir
from xenlab.xen import netconf
from xenlab.xen.errors import ConfigError, XenError
from xenlab.xen.netconf import format_mac

PROG = "bridge"
OBJECTS = ("link", "fdb", "mdb", "vlan", "monitor")   # iproute2's order: "m" is mdb
PORT_STATES = ("disabled", "listening", "learning", "forwarding", "blocking")
LINK_FLAGS = ("hairpin", "learning", "flood", "mcast_flood", "bcast_flood", "isolated", "locked")


class Usage(Exception):
    """A command-line mistake: one line on stderr, iproute2's words and exit status."""

    def __init__(self, message: str, status: int = 255):
        super().__init__(message)
        self.status = status


def matches(word: str, pattern: str) -> bool:
    """iproute2's matches(): `word` is a non-empty prefix of `pattern`."""
    return bool(word) and pattern.startswith(word)


def garbage(word: str, previous: str) -> Usage:
    return Usage(f'Error: either "{previous}" is duplicate, or "{word}" is a garbage.')


def invarg(what: str, value: str) -> Usage:
    return Usage(f'Error: argument "{value}" is wrong: {what}')


def parse_mac(text: str) -> str:
    # fdb.c: sscanf("%hhx:%hhx:%hhx:%hhx:%hhx:%hhx"), so 2:0:0:0:0:1 is fine too.
    try:
        return format_mac(netconf.parse_mac(text, short_octets=True))
    except ConfigError:
        raise Usage(f"Invalid mac address {text}") from None


def parse_vid(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 4094:
        raise Usage(f'Invalid VLAN ID "{text}"')
    return int(text)


def parse_on_off(key: str, text: str) -> bool:
    if text not in ("on", "off"):
        raise Usage(f'Error: argument of "{key}" must be one of "off", "on", not "{text}"', 234)
    return text == "on"


def parse_state(text: str) -> str:
    if text.isdigit():
        number = int(text)
        if number < len(PORT_STATES):
            return PORT_STATES[number]
        raise Usage("RTNETLINK answers: Invalid argument")
    for state in PORT_STATES:
        if text == state:
            return state
    raise Usage("Error: invalid STP port state")


def rtnetlink(err: grpc.aio.AioRpcError) -> Usage:
    """A refusal from the bridge, as iproute2 reports the kernel's errno."""
    number = STATUS_ERRNO.get(err.code())
    if number is None:
        return Usage(f"{err.details()} ({err.code().name})")
    return Usage(f"RTNETLINK answers: {os.strerror(number)}")


class Options:
    def __init__(self) -> None:
        self.stats = self.details = self.json = self.pretty = False


def parse_options(argv: list[str]) -> tuple[Options, list[str]]:
    """bridge.c main(): options first, each a prefix of its long form."""
    opts = Options()
    while argv and argv[0].startswith("-") and argv[0] != "-":
        word = argv.pop(0)
        name = word.lstrip("-")
        if matches(name, "statistics") or matches(name, "stats") or name == "s":
            opts.stats = True
        elif matches(name, "details"):
            opts.details = True
        elif matches(name, "json"):
            opts.json = True
        elif matches(name, "pretty"):
            opts.pretty = True
        elif matches(name, "help"):
            raise Usage(USAGE, 0 if name else 255)
        else:
            raise Usage(f'Option "{word}" is unknown, try "{PROG} help".')
    return opts, argv


USAGE = ("Usage: bridge [ OPTIONS ] OBJECT { COMMAND | help }\n"
         "where  OBJECT := { link | fdb | vlan | monitor }\n"
         "       OPTIONS := { -s[tatistics] | -d[etails] | -j[son] | -p[retty] }")


def object_of(word: str) -> str:
    """The OBJECT a word names, as bridge.c's do_cmd matches it."""
    if matches(word, "help"):
        raise Usage(USAGE, 0)
    for name in OBJECTS:
        if matches(word, name):
            if name == "mdb":
                raise Usage(f'Object "{word}" is not supported here: xenbr0 does no multicast snooping')
            return name
    raise Usage(f'Object "{word}" is unknown, try "{PROG} help".')


# -- the commands ------------------------------------------------------------------------
class BridgeCommand:
    """One `bridge` invocation against the host's bridges."""

    def __init__(self, bridges: BridgeClient, opts: Options, out=sys.stdout):
        self.bridges = bridges
        self.opts = opts
        self.out = out

    async def run(self, argv: list[str]) -> int:
        if not argv:
            raise Usage(USAGE)
        return await getattr(self, object_of(argv.pop(0)))(argv)

    async def _port_bridge(self, port: str, bridge_word: str = "device") -> str:
        bridge = await self.bridges.port_bridge(port)
        if bridge is None:
            raise Usage(f'Cannot find {bridge_word} "{port}"')
        return bridge

    # -- fdb -------------------------------------------------------------------------------
    async def fdb(self, argv: list[str]) -> int:
        if not argv:
            return await self.fdb_show([])
        cmd = argv.pop(0)
        if cmd in ("add", "append"):
            return await self.fdb_modify(argv, replace=False)
        if matches(cmd, "replace"):
            return await self.fdb_modify(argv, replace=True)
        if matches(cmd, "delete"):
            return await self.fdb_delete(argv)
        if matches(cmd, "show") or matches(cmd, "lst") or matches(cmd, "list"):
            return await self.fdb_show(argv)
        raise Usage(f'Command "{cmd}" is unknown, try "{PROG} fdb help".')

    async def fdb_show(self, argv: list[str]) -> int:
        bridge = port = state = None
        vid = None
        dynamic = False
        while argv:
            word = argv.pop(0)
            if word in ("br", "brport", "dev", "vlan", "state"):
                if not argv:
                    raise Usage(f'Command line is not complete. Try option "help"')
                value = argv.pop(0)
                if word == "br":
                    if value not in self.bridges.names:
                        raise Usage(f'Cannot find bridge device "{value}"')
                    bridge = value
                elif word == "vlan":
                    vid = parse_vid(value)
                elif word == "state":
                    state = {"permanent": "permanent", "local": "permanent", "static": "static",
                             "dynamic": ""}.get(value)
                    if state is None:
                        raise Usage(f'Error: argument "{value}" is wrong: invalid state')
                else:
                    port = value
            elif word == "dynamic":
                dynamic = True
            else:
                raise garbage(word, "dev")
        if port is not None:
            owner = await self._port_bridge(port)
            if bridge is not None and owner != bridge:
                return 0
            bridge = owner
        entries = [e for e in await self.bridges.fdb(bridge)
                   if (port is None or e.port == port) and (vid is None or e.vlan == vid)
                   and (state is None or e.state == state) and not (dynamic and e.state)]
        show_dev = port is None
        if self.opts.json:
            self.out.write(output.fdb_json(entries, self.opts.stats, show_dev, self.opts.pretty))
        else:
            self.out.write(output.format_fdb_show(entries, self.opts.stats, show_dev))
        return 0

    def _fdb_entry_args(self, argv: list[str]) -> bridge_pb2.FdbEntryRequest:
        request = bridge_pb2.FdbEntryRequest()
        mac = None
        while argv:
            word = argv.pop(0)
            if word == "dev":
                if not argv:
                    raise Usage("Device and address are required arguments.")
                request.port = argv.pop(0)
            elif word == "vlan":
                if not argv:
                    raise Usage("Command line is not complete. Try option \"help\"")
                request.vlan = parse_vid(argv.pop(0))
            elif word == "master":
                pass
            elif word == "self":
                raise Usage("Error: a port has no FDB of its own here (\"self\"); its bridge's "
                            "(\"master\") is the only one")
            elif word in ("local", "permanent"):
                request.state = "permanent"
            elif word in ("static", "dynamic"):
                request.state = word
            elif word == "sticky":
                request.sticky = True
            elif word in ("router", "use", "extern_learn", "dst", "src_vni", "vni", "port", "via",
                          "nhid", "activity_notify", "norefresh"):
                raise Usage(f'Error: "{word}" is for VXLAN and offloading devices; xenbr0 does not have it')
            elif mac is None and not word.startswith("-"):
                mac = word
            else:
                raise garbage(word, "to")
        if mac is None or not request.port:
            raise Usage("Device and address are required arguments.")
        request.mac = parse_mac(mac)
        return request

    async def fdb_modify(self, argv: list[str], replace: bool) -> int:
        request = self._fdb_entry_args(argv)
        request.bridge = await self._port_bridge(request.port)
        request.replace = replace
        request.state = request.state or "permanent"     # iproute2's NUD_PERMANENT default
        await self._call(self.bridges.stub(request.bridge).FdbAdd(request))
        return 0

    async def fdb_delete(self, argv: list[str]) -> int:
        request = self._fdb_entry_args(argv)
        request.bridge = await self._port_bridge(request.port)
        request.state = ""
        await self._call(self.bridges.stub(request.bridge).FdbDelete(request))
        return 0

    @staticmethod
    async def _call(call):
        try:
            return await call
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                raise
            raise rtnetlink(err) from None

    # -- link ------------------------------------------------------------------------------
    async def link(self, argv: list[str]) -> int:
        if not argv:
            return await self.link_show([])
        cmd = argv.pop(0)
        if matches(cmd, "set") or matches(cmd, "change"):
            return await self.link_set(argv)
        if matches(cmd, "show") or matches(cmd, "lst") or matches(cmd, "list"):
            return await self.link_show(argv)
        raise Usage(f'Command "{cmd}" is unknown, try "{PROG} link help".')

    async def link_show(self, argv: list[str]) -> int:
        port = None
        while argv:
            word = argv.pop(0)
            if word == "dev" and argv:
                port = argv.pop(0)
            elif port is None and word != "dev":
                port = word
            else:
                raise garbage(word, "dev")
        bridges = await self.bridges.show()
        if port is not None and not any(p.name == port for b in bridges for p in b.ports):
            raise Usage(f'Cannot find device "{port}"')
        self.out.write(output.link_show(bridges, port, self.opts.details, self.opts.json,
                                        self.opts.pretty))
        return 0

    async def link_set(self, argv: list[str]) -> int:
        request = bridge_pb2.SetPortFlagsRequest()
        port = None
        while argv:
            word = argv.pop(0)
            if word in ("master", "self"):
                if word == "self":
                    raise Usage("Error: a port has no settings of its own here (\"self\"); "
                                "its bridge's (\"master\") are the only ones")
                continue
            if not argv:
                raise Usage(f'Command line is not complete. Try option "help"')
            value = argv.pop(0)
            if word == "dev":
                port = value
            elif word in LINK_FLAGS:
                setattr(request, word, parse_on_off(word, value))
            elif word == "state":
                request.state = parse_state(value)
            elif word in ("priority", "cost"):
                if not value.isdigit():
                    raise invarg(f'Invalid "{word}" value', value)
                setattr(request, word, int(value))
            else:
                raise Usage(LINK_SET_USAGE)
        if port is None:
            raise Usage("Device is a required argument.")
        request.port = port
        request.bridge = await self._port_bridge(port, "bridge device")
        await self._call(self.bridges.stub(request.bridge).SetPortFlags(request))
        return 0

    # -- vlan ------------------------------------------------------------------------------
    async def vlan(self, argv: list[str]) -> int:
        if not argv or matches(argv[0], "show") or matches(argv[0], "list"):
            port = None
            rest = argv[1:]
            while rest:
                word = rest.pop(0)
                if word == "dev" and rest:
                    port = rest.pop(0)
                else:
                    raise garbage(word, "dev")
            bridges = await self.bridges.show()
            if port is not None and not any(p.name == port for b in bridges for p in b.ports):
                raise Usage(f'Cannot find device "{port}"')
            ports = [(p.name, list(p.vlans)) for b in bridges for p in b.ports
                     if port is None or p.name == port]
            self.out.write(output.vlan_show(ports, self.opts.json, self.opts.pretty))
            return 0
        cmd = argv.pop(0)
        if cmd in ("add", "del", "delete"):
            return await self.vlan_modify(argv, add=cmd == "add")
        raise Usage(f'Command "{cmd}" is unknown, try "{PROG} vlan help".')

    async def vlan_modify(self, argv: list[str], add: bool) -> int:
        request = bridge_pb2.PortVlanRequest(add=add)
        vids = None
        while argv:
            word = argv.pop(0)
            if word in ("pvid", "untagged"):
                setattr(request, word, True)
                continue
            if word in ("master", "self"):
                continue
            if not argv:
                raise Usage('Command line is not complete. Try option "help"')
            value = argv.pop(0)
            if word == "dev":
                request.port = value
            elif word == "vid":
                low, _, high = value.partition("-")
                vids = (parse_vid(low), parse_vid(high) if high else parse_vid(low))
                if vids[1] < vids[0]:
                    raise Usage(f'Invalid VLAN range "{value}"')
            else:
                raise garbage(word, "dev")
        if not request.port or vids is None:
            raise Usage("Device and VLAN ID are required arguments.")
        if request.pvid and vids[0] != vids[1]:
            raise Usage("RTNETLINK answers: Invalid argument")
        request.vid, request.vid_end = vids
        request.bridge = await self._port_bridge(request.port)
        await self._call(self.bridges.stub(request.bridge).SetPortVlan(request))
        return 0

    # -- monitor ---------------------------------------------------------------------------
    async def monitor(self, argv: list[str]) -> int:
        fdb = link = False
        for word in argv:
            if matches(word, "fdb"):
                fdb = True
            elif matches(word, "link"):
                link = True
            elif matches(word, "all"):
                fdb = link = True
            else:
                raise Usage(f'Argument "{word}" is unknown, try "{PROG} monitor help".')
        if not (fdb or link):
            fdb = link = True
        prefix = fdb and link
        streams = [self._monitor_one(name, fdb, link, prefix) for name in self.bridges.names]
        if not streams:
            raise Usage("no bridge is registered in xenstore (/tool/xenlab/bridges); is a lab running?", 1)
        await asyncio.gather(*streams)
        return 0

    async def _monitor_one(self, bridge: str, fdb: bool, link: bool, prefix: bool) -> None:
        stream = self.bridges.stub(bridge).Monitor(bridge_pb2.MonitorRequest(bridge=bridge, fdb=fdb, link=link))
        async for event in stream:
            which = event.WhichOneof("event")
            if which == "fdb":
                if event.fdb.kind == "sync":
                    continue
                fields, banner = output.fdb_event_fields(event.fdb), "[NEIGH]"
            else:
                fields, banner = output.link_event_fields(event.link), "[LINK]"
            if self.opts.json:
                self.out.write(output.dumps(fields.data) + "\n")
            else:
                self.out.write((banner if prefix else "") + fields.line() + "\n")
            self.out.flush()


LINK_SET_USAGE = (
    "Usage: bridge link set dev DEV [ cost COST ] [ priority PRIO ] [ state STATE ]\n"
    "                               [ hairpin {on | off} ]\n"
    "                               [ learning {on | off} ]\n"
    "                               [ flood {on | off} ]\n"
    "                               [ mcast_flood {on | off} ]\n"
    "                               [ bcast_flood {on | off} ]\n"
    "                               [ isolated {on | off} ]\n"
    "                               [ locked {on | off} ]\n"
    "                               [ master ]\n"
    "       bridge link show [dev DEV]")


# -- brctl -----------------------------------------------------------------------------------
BRCTL_USAGE = "Usage: brctl [commands]\ncommands:\n\tshow [ <bridge> ]\n\tshowmacs <bridge>"


async def brctl(bridges: BridgeClient, argv: list[str], out=sys.stdout) -> int:
    if not argv:
        raise Usage(BRCTL_USAGE, 1)
    cmd, rest = argv[0], argv[1:]
    if cmd == "show":
        names = rest or bridges.names
        for name in rest:
            if name not in bridges.names:
                raise Usage(f"bridge {name} does not exist!", 1)
        infos = [info for name in names for info in await bridges.show(name)]
        out.write(output.format_brctl_show(infos))
        return 0
    if cmd == "showmacs":
        if len(rest) != 1:
            raise Usage("Incorrect number of arguments for command", 1)
        if rest[0] not in bridges.names:
            raise Usage(f"read of forward table failed: No such device", 1)
        out.write(output.format_showmacs(await bridges.fdb(rest[0])))
        return 0
    raise Usage(f"never heard of command [{cmd}]", 1)


# -- entry points ------------------------------------------------------------------------------
def take_rundir(argv: list[str]) -> Path | None:
    """Take `--rundir DIR` or `--rundir=DIR` out of ``argv``, from anywhere
    in it (the commands that parse their own command line take it so)."""
    for i, word in enumerate(argv):
        if word == "--rundir" and i + 1 < len(argv):
            rundir = Path(argv[i + 1])
            del argv[i:i + 2]
            return rundir
        if word.startswith("--rundir="):
            del argv[i]
            return Path(word.split("=", 1)[1])
    return None


def _split_rundir(argv: Sequence[str], env: Mapping[str, str]) -> tuple[Path, list[str]]:
    argv = list(argv)
    return take_rundir(argv) or default_rundir(env), argv


async def _with_bridges(rundir: Path, work):
    rundir_ = Rundir(rundir)
    async with HypervisorClient.connect(rundir_.read_address(), 0, rundir_.read_dom0_secret()) as hv:
        bridges = await BridgeClient.connect(hv)
    async with bridges:
        return await work(bridges)


# Seconds `bridge monitor` gives its streams to close after Ctrl-C before it
# leaves anyway: a watcher's Ctrl-C must end it, whatever a stream does.
STOP_GRACE = 2.0


async def _until_interrupted(work) -> int:
    """Run ``work`` until it ends or SIGINT comes; then give it STOP_GRACE
    to wind down, and leave at once (exit 0) if it has not."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    interrupted = loop.create_future()
    loop.add_signal_handler(signal.SIGINT, lambda: interrupted.done() or interrupted.set_result(None))
    try:
        await asyncio.wait({task, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_GRACE)
        if not task.done():
            print(f"xenlab bridge: its streams did not close within {STOP_GRACE:g} s of Ctrl-C; "
                  "leaving anyway", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        return 0
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _main(prog: str, argv: Sequence[str], env: Mapping[str, str], work) -> int:
    rundir, argv = _split_rundir(argv, env)
    watching = any(matches(word, "monitor") for word in argv)     # before work() consumes argv
    try:
        if watching:
            return asyncio.run(_until_interrupted(work(rundir, argv))) or 0
        return asyncio.run(work(rundir, argv)) or 0
    except Usage as err:
        print(str(err), file=sys.stderr if err.status else sys.stdout)
        return err.status
    except grpc.aio.AioRpcError as err:
        hint = " (is the lab running?)" if err.code() is grpc.StatusCode.UNAVAILABLE else ""
        print(f"xenlab {prog}: {err.details()} ({err.code().name}){hint}", file=sys.stderr)
    except XenError as err:
        print(f"xenlab {prog}: {err.message}", file=sys.stderr)
    except (FileNotFoundError, PermissionError) as err:
        print(f"xenlab {prog}: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        # Ctrl-C is how `bridge monitor` is meant to end (as tcpdump's and
        # `xenlab events`'): not a failure there; anywhere else it is.
        return 0 if watching else 130
    return 1


def bridge_main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    async def work(rundir: Path, args: list[str]) -> int:
        opts, rest = parse_options(args)
        if not rest:
            raise Usage(USAGE)
        object_of(rest[0])              # a mistake is reported before connecting
        return await _with_bridges(rundir, lambda bridges: BridgeCommand(bridges, opts).run(rest))
    return _main("bridge", argv, env, work)


def brctl_main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    async def work(rundir: Path, args: list[str]) -> int:
        if not args or args[0] in ("-h", "--help", "help"):
            raise Usage(BRCTL_USAGE, 0 if args else 1)     # no lab needed to say how
        return await _with_bridges(rundir, lambda bridges: brctl(bridges, args))
    return _main("brctl", argv, env, work)


async def fdb_show_text(hv: HypervisorClient, bridge: str | None = None, stats: bool = False,
                        as_json: bool = False) -> str:
    """`bridge fdb show` of a running lab, as text (or -j JSON): for `xenlab
    status` and anything else that reports on a lab."""
    async with await BridgeClient.connect(hv) as bridges:
        entries = await bridges.fdb(bridge)
    if as_json:
        return output.fdb_json(entries, stats)
    return output.format_fdb_show(entries, stats)


def parse_json_fdb(text: str) -> list[dict]:
    """`bridge -j fdb show` output -> its entries, the bridge's own (master)
    ones only: what the tests parse iproute2's and xenlab's output with."""
    return [e for e in json.loads(text) if "master" in e]
