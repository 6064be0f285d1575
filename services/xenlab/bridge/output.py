"""What brctl and bridge(8) print for a bridge, from the bridge.proto messages.
Pure functions: messages in, text out."""
from __future__ import annotations

from typing import Iterable

from xenlab.proto import bridge_pb2

# bridge-utils brctl show: one line per bridge with its first interface, the
# others alone on following lines, under the "interfaces" column.
BRCTL_SHOW_HEADER = "bridge name\tbridge id\t\tSTP enabled\tinterfaces"
_INTERFACES_COLUMN = "\t" * 7

BRCTL_SHOWMACS_HEADER = "port no\tmac addr\t\tis local?\tageing timer"


def format_brctl_show(bridges: Iterable[bridge_pb2.BridgeInfo]) -> str:
    lines = [BRCTL_SHOW_HEADER]
    for info in bridges:
        ports = [p.name for p in info.ports]
        stp = "yes" if info.stp else "no"
        lines.append(f"{info.name}\t\t{info.bridge_id}\t{stp}\t\t{ports[0] if ports else ''}".rstrip("\t"))
        lines.extend(_INTERFACES_COLUMN + name for name in ports[1:])
    return "\n".join(lines) + "\n"


def format_fdb_entry(entry: bridge_pb2.FdbRecord, stats: bool = False) -> str:
    """One `bridge fdb show` line; with `stats`, as `bridge -s fdb show`,
    which adds "used X/Y": whole seconds since last used / last updated."""
    words = [entry.mac, "dev", entry.port]
    if stats:
        words += ["used", f"{int(entry.used)}/{int(entry.updated)}"]
    words += ["master", entry.bridge]
    if entry.static:
        words.append("static")
    return " ".join(words)


def format_fdb_show(entries: Iterable[bridge_pb2.FdbRecord], stats: bool = False) -> str:
    lines = [format_fdb_entry(e, stats) for e in entries]
    return "".join(line + "\n" for line in lines)


def format_showmacs(entries: Iterable[bridge_pb2.FdbRecord]) -> str:
    """`brctl showmacs BRIDGE`: the ageing timer is the time since the entry
    was last refreshed, shown as seconds.hundredths. "is local?" is always
    "no": the bridge has no addresses of its own (no permanent entries)."""
    lines = [BRCTL_SHOWMACS_HEADER]
    for e in sorted(entries, key=lambda e: (e.port_no, e.mac)):
        lines.append(f"{e.port_no:3d}\t{e.mac}\tno\t\t{e.updated:7.2f}")
    return "\n".join(lines) + "\n"
