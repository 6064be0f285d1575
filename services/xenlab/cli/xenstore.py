"""`xenlab xenstore`: xenstore-ls, -read, -write, -rm, -mkdir, -list,
-chmod and -watch, acting as Domain-0."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Callable

import grpc

from xenlab.cli import output
from xenlab.cli.xl import RPC_TIMEOUT, CliError, Toolstack, run_command
from xenlab.client import HypervisorClient
from xenlab.proto import xenstore_pb2

_PERM = re.compile(r"([nrwb])([0-9]+)")


def parse_perm(text: str) -> xenstore_pb2.Perm:
    """xenstore-chmod's PERM: a letter n/r/w/b then a domain id, like r5."""
    m = _PERM.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"invalid permission {text!r}: n, r, w or b followed by a domain id, like r5")
    return xenstore_pb2.Perm(perm=m.group(1), domid=int(m.group(2)))


def child_path(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


async def _read(hv: HypervisorClient, path: str) -> bytes:
    return (await hv.xenstore.Read(xenstore_pb2.PathRequest(path=path), timeout=RPC_TIMEOUT)).value


async def _children(hv: HypervisorClient, path: str) -> list[str]:
    reply = await hv.xenstore.Directory(xenstore_pb2.PathRequest(path=path), timeout=RPC_TIMEOUT)
    return list(reply.names)


_UNREADABLE = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)


async def walk(hv: HypervisorClient, path: str, depth: int, perms: bool,
               full_path: bool) -> list[output.LsEntry]:
    """xenstore-ls's do_ls: depth first; below the top, a node that vanished
    or may not be listed is skipped instead of failing the walk."""
    try:
        names = await _children(hv, path)
    except grpc.aio.AioRpcError as err:
        if depth and err.code() in _UNREADABLE:
            return []
        raise
    entries = []
    for name in names:
        node = child_path(path, name)
        try:
            value = await _read(hv, node)
        except grpc.aio.AioRpcError as err:
            if err.code() not in _UNREADABLE:
                raise
            value = None
        node_perms = None
        if perms:
            reply = await hv.xenstore.GetPerms(xenstore_pb2.PathRequest(path=node), timeout=RPC_TIMEOUT)
            node_perms = tuple(reply.perms)
        entries.append(output.LsEntry(0 if full_path else depth, node if full_path else name,
                                      value, node_perms))
        entries += await walk(hv, node, depth + 1, perms, full_path)
    return entries


async def cmd_ls(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        entries = await walk(hv, args.path, 0, args.perms, args.full_path)
    sys.stdout.write(output.format_ls(entries))
    return 0


async def cmd_read(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        for path in args.paths:
            value = await _read(hv, path)
            prefix = f"{path}: " if args.prefix else ""
            if args.raw:
                sys.stdout.flush()
                sys.stdout.buffer.write(prefix.encode() + value + b"\n")
                sys.stdout.buffer.flush()
            else:
                print(prefix + output.sanitise_value(value))
    return 0


async def cmd_write(args, ts: Toolstack) -> int:
    if len(args.pairs) % 2:
        raise CliError("expected PATH VALUE pairs")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2]))
    async with ts.connect() as hv:
        for path, text in pairs:
            value = text.encode() if args.raw else output.unsanitise_value(text)
            await hv.xenstore.Write(xenstore_pb2.WriteRequest(path=path, value=value),
                                    timeout=RPC_TIMEOUT)
    return 0


async def cmd_rm(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        for path in args.paths:
            await hv.xenstore.Rm(xenstore_pb2.PathRequest(path=path), timeout=RPC_TIMEOUT)
    return 0


async def cmd_mkdir(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        for path in args.paths:
            await hv.xenstore.Mkdir(xenstore_pb2.PathRequest(path=path), timeout=RPC_TIMEOUT)
    return 0


async def cmd_list(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        for path in args.paths:
            for name in await _children(hv, path):
                print(f"{path}: {name}" if args.prefix else name)
    return 0


async def _chmod(hv: HypervisorClient, path: str, perms: list, recurse: bool) -> None:
    await hv.xenstore.SetPerms(xenstore_pb2.SetPermsRequest(path=path, perms=perms),
                               timeout=RPC_TIMEOUT)
    if recurse:
        for name in await _children(hv, path):
            await _chmod(hv, child_path(path, name), perms, recurse)


async def cmd_chmod(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        await _chmod(hv, args.path, args.perms, args.recursive)
    return 0


async def cmd_watch(args, ts: Toolstack) -> int:
    async with ts.connect() as hv:
        call = hv.xenstore.WatchStream()
        try:
            for path in args.paths:
                await call.write(xenstore_pb2.WatchControl(
                    op=xenstore_pb2.WatchControl.WATCH, path=path, token=args.token))
            await _print_events(call, args.count)
        finally:
            call.cancel()
    return 0


async def _print_events(call, count: int) -> None:
    seen = 0
    while not count or seen < count:
        event = await call.read()
        if event is grpc.aio.EOF:
            return
        if event.ack:
            if event.error:
                raise CliError(f"{event.path}: {event.error}")
            continue
        print(f"{event.path} {event.token}", flush=True)
        seen += 1


# --------------------------------------------------------------------------
# The parser.

def _ls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--perms", action="store_true", help="show each node's permissions")
    p.add_argument("-f", "--full-path", action="store_true", help="print full paths, not a tree")
    p.add_argument("path", nargs="?", default="/", metavar="PATH",
                   help="the node to list below (default /)")


def _read_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--prefix", action="store_true", help="prefix each value with its path")
    p.add_argument("-R", "--raw", action="store_true", help="print values without escaping")
    p.add_argument("paths", nargs="+", metavar="PATH", help="the nodes to read")


def _write_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-R", "--raw", action="store_true",
                   help="write values as given, without reading \\n, \\t, \\ooo escapes")
    p.add_argument("pairs", nargs="+", metavar="PATH VALUE",
                   help="nodes and the values to write, in pairs")


def _paths_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="the nodes")


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--prefix", action="store_true", help="prefix each name with the path")
    _paths_args(p)


def _chmod_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-r", "--recursive", action="store_true", help="apply to every node below too")
    p.add_argument("path", metavar="PATH", help="the node")
    p.add_argument("perms", nargs="+", type=parse_perm, metavar="PERM",
                   help="n, r, w or b then a domain id; the first names the owner and "
                        "everyone else's access")


def _watch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--count", type=int, default=0, metavar="N",
                   help="exit after N events (the first fires when the watch is set)")
    p.add_argument("-t", "--token", default="xenstore-watch", help="the watch token")
    p.add_argument("paths", nargs="+", metavar="PATH", help="the nodes to watch (and all below them)")


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "ls": ("print a subtree as name = \"value\" lines", _ls_args, cmd_ls),
    "read": ("print the values of nodes", _read_args, cmd_read),
    "write": ("write values to nodes", _write_args, cmd_write),
    "rm": ("remove nodes and everything below them", _paths_args, cmd_rm),
    "mkdir": ("create nodes with empty values", _paths_args, cmd_mkdir),
    "list": ("print the children of nodes", _list_args, cmd_list),
    "chmod": ("set a node's permissions", _chmod_args, cmd_chmod),
    "watch": ("print 'PATH TOKEN' each time a watch fires", _watch_args, cmd_watch),
}


def add_arguments(parser: argparse.ArgumentParser, parents: tuple = ()) -> None:
    sub = parser.add_subparsers(dest="xs_command", metavar="COMMAND", required=True)
    for name, (help_text, add, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                           parents=list(parents))
        add(p)
        p.set_defaults(xs_handler=handler)


def run(args, toolstack: Toolstack) -> int:
    return run_command("xenlab xenstore", args.xs_command, lambda: args.xs_handler(args, toolstack))
