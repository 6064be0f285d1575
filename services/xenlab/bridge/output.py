"""What brctl and iproute2's bridge(8) print for a bridge, from the
bridge.proto messages. Pure functions: messages in, text out.

iproute2 prints every field once, through print_string/print_uint(PRINT_ANY,
key, format, value), which writes either the text format or a JSON member:
``Fields`` does the same here, so that the text and the JSON (``-j``) of one
record can never disagree. ``dumps`` writes JSON as iproute2's json_writer
does, compact (``-j``) or pretty (``-j -p``), byte for byte.
"""
from __future__ import annotations

import json
from typing import Iterable

from xenlab.proto import bridge_pb2
from xenlab.xen.names import IFNAMSIZ

# bridge-utils brctl show: one line per bridge with its first interface, the
# others alone on following lines, under the "interfaces" column.
BRCTL_SHOW_HEADER = "bridge name\tbridge id\t\tSTP enabled\tinterfaces"
_INTERFACES_COLUMN = "\t" * 7

BRCTL_SHOWMACS_HEADER = "port no\tmac addr\t\tis local?\tageing timer"

# linux/if_bridge.h BR_STATE_*, the numbers `bridge link set state` takes.
PORT_STATE_NUMBERS = {"disabled": 0, "listening": 1, "learning": 2, "forwarding": 3, "blocking": 4}
VLAN_ID_LEN = 9
USER_HZ = 100                   # iproute2 prints bridge times in centiseconds


class Fields:
    """One record as iproute2 prints it: ``any`` is PRINT_ANY (text and
    JSON), ``text`` PRINT_FP, ``json`` PRINT_JSON."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.data: dict = {}

    def any(self, key: str, fmt: str, value) -> "Fields":
        self.parts.append(fmt % value)
        self.data[key] = value
        return self

    def text(self, text: str) -> "Fields":
        self.parts.append(text)
        return self

    def json(self, key: str, value) -> "Fields":
        self.data[key] = value
        return self

    def line(self) -> str:
        return "".join(self.parts)


def dumps(value, pretty: bool = False) -> str:
    """JSON as iproute2's json_writer.c writes it (jsonw_*): compact, or with
    -p four-space indents, "[ ... ]" around arrays and "},{" between objects."""
    out: list[str] = []
    _jsonw(value, out, 0, pretty)
    return "".join(out)


def _jsonw(value, out: list[str], depth: int, pretty: bool) -> None:
    if isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                out.append(",")
            if pretty:
                out.append("\n" + "    " * (depth + 1))
            out.append(json.dumps(key) + (": " if pretty else ":"))
            _jsonw(item, out, depth + 1, pretty)
        if value and pretty:
            out.append("\n" + "    " * depth)
        out.append("}")
    elif isinstance(value, list):
        out.append("[ " if pretty else "[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _jsonw(item, out, depth + 1, pretty)
        out.append(" ]" if pretty and value else "]")
    else:
        out.append(json.dumps(value))


# -- bridge fdb ---------------------------------------------------------------------
def fdb_fields(entry: bridge_pb2.FdbRecord, show_dev: bool = True, stats: bool = False) -> Fields:
    """One `bridge fdb show` record (fdb.c print_fdb): MAC, dev (unless the
    listing is of one port), vlan, used/updated with -s, flags, master, state."""
    f = Fields().any("mac", "%s ", entry.mac)
    if show_dev:
        f.any("ifname", "dev %s ", entry.port)
    if entry.vlan:
        f.any("vlan", "vlan %d ", entry.vlan)
    if stats:
        f.any("used", "used %d/", int(entry.used)).any("updated", "%d ", int(entry.updated))
    flags = ["sticky"] if entry.sticky else []
    f.json("flags", flags).text("".join(flag + " " for flag in flags))
    f.any("master", "master %s ", entry.bridge)
    return f.any("state", "%s", entry.state)


def format_fdb_entry(entry: bridge_pb2.FdbRecord, stats: bool = False, show_dev: bool = True) -> str:
    return fdb_fields(entry, show_dev, stats).line()


def format_fdb_show(entries: Iterable[bridge_pb2.FdbRecord], stats: bool = False,
                    show_dev: bool = True) -> str:
    return "".join(format_fdb_entry(e, stats, show_dev) + "\n" for e in entries)


def fdb_json(entries: Iterable[bridge_pb2.FdbRecord], stats: bool = False, show_dev: bool = True,
             pretty: bool = False) -> str:
    return dumps([fdb_fields(e, show_dev, stats).data for e in entries], pretty) + "\n"


def fdb_event_fields(event: bridge_pb2.FdbEvent) -> Fields:
    """A `bridge monitor fdb` line: the entry, "Deleted " first when it went."""
    record = bridge_pb2.FdbRecord(mac=event.mac, port=event.port, bridge=event.bridge,
                                  vlan=event.vlan, sticky=event.sticky,
                                  state="permanent" if event.permanent else
                                  "static" if event.static else "")
    f = Fields()
    if event.kind in ("age", "evict", "flush", "delete"):
        f.any("deleted", "%s", "Deleted ")
        f.data["deleted"] = True
    g = fdb_fields(record)
    f.parts += g.parts
    f.data.update(g.data)
    return f


# -- bridge link ---------------------------------------------------------------------
def link_flags(port: bridge_pb2.BridgePortInfo) -> list[str]:
    """The interface flags ip prints: a port without carrier is NO-CARRIER."""
    if port.carrier:
        return ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"]
    return ["NO-CARRIER", "BROADCAST", "MULTICAST", "UP"]


def on_off(value: bool) -> str:
    return "on" if value else "off"


def link_fields(port: bridge_pb2.BridgePortInfo, bridge: str, details: bool = False) -> Fields:
    """One `bridge link show` record (link.c print_linkinfo); the port number
    stands for the ifindex. With -d the port's flags follow on a second
    line, as iproute2's print_protinfo, those xenbr0 has."""
    f = Fields().any("ifindex", "%d: ", port.port_no).any("ifname", "%s: ", port.name)
    flags = link_flags(port)
    f.json("flags", flags).text("<" + ",".join(flags) + "> ")
    f.any("mtu", "mtu %d ", port.mtu or 1500).any("master", "master %s ", bridge)
    f.any("state", "state %s ", port.state)
    f.any("priority", "priority %d ", port.priority).any("cost", "cost %d ", port.cost)
    if details:
        f.text("\n    ")
        for key in ("hairpin", "learning", "flood", "mcast_flood", "bcast_flood", "isolated", "locked"):
            value = getattr(port, key)
            f.json(key, value).text(f"{key} {on_off(value)} ")
    return f


def bridge_fields(info: bridge_pb2.BridgeInfo) -> Fields:
    """A bridge's own settings, as `ip -d link show BRIDGE` prints its
    "bridge ..." line, in its order (times in centiseconds, ids as ip writes
    them); the STP timers and root only while STP runs. xenlab adds
    fdb_policy: what a full FDB does."""
    f = Fields().any("ifname", "%s: ", info.name).text("bridge ")
    rows = []
    if info.stp:
        rows += [("forward_delay", round(info.forward_delay * USER_HZ)),
                 ("hello_time", round(info.hello_time * USER_HZ)),
                 ("max_age", round(info.max_age * USER_HZ))]
    rows += [("ageing_time", round(info.ageing * USER_HZ)), ("stp_state", int(info.stp)),
             ("priority", info.priority), ("vlan_filtering", int(info.vlan_filtering)),
             ("bridge_id", ip_bridge_id(info.bridge_id))]
    if info.stp:
        rows += [("designated_root", ip_bridge_id(info.root_id)), ("root_port", info.root_port),
                 ("root_path_cost", info.root_path_cost), ("topology_change", int(info.topology_change))]
    rows += [("group_fwd_mask", info.group_fwd_mask), ("fdb_n_learned", info.fdb_learned),
             ("fdb_max_learned", info.fdb_max), ("fdb_policy", info.fdb_policy)]
    data = {}
    for key, value in rows:
        f.text(f"{key} {_c_hex(value) if key == 'group_fwd_mask' else value} ")
        data[key] = value
    return f.json("linkinfo", {"info_kind": "bridge", "info_data": data})


def ip_bridge_id(text: str) -> str:
    """"8000.00163e000001" (brctl's) -> "8000.0:16:3e:0:0:1" (ip's)."""
    prio, _, mac = text.partition(".")
    if len(mac) != 12:
        return text
    return prio + "." + ":".join(f"{int(mac[i:i + 2], 16):x}" for i in range(0, 12, 2))


def link_show(bridges: Iterable[bridge_pb2.BridgeInfo], port: str | None = None,
              details: bool = False, as_json: bool = False, pretty: bool = False) -> str:
    """`bridge [-d] [-j] link show [dev PORT]`. With -d each bridge's own
    settings come first (they name its FDB policy)."""
    records: list[Fields] = []
    for info in bridges:
        ports = [p for p in info.ports if port is None or p.name == port]
        if details and port is None:
            records.append(bridge_fields(info))
        records += [link_fields(p, info.name, details) for p in ports]
    if as_json:
        return dumps([r.data for r in records], pretty) + "\n"
    return "".join(r.line() + "\n" for r in records)


def link_event_fields(event: bridge_pb2.PortEvent) -> Fields:
    f = link_fields(event.port, event.bridge)
    if event.kind == "deleted":
        f.parts.insert(0, "Deleted ")
        f.data = {"deleted": True, **f.data}
    return f


# -- bridge vlan ---------------------------------------------------------------------
VLAN_HEADER = f"{'port':<{IFNAMSIZ}}  {'vlan-id':<{VLAN_ID_LEN}}"


def vlan_show(ports: Iterable[tuple[str, list]], as_json: bool = False, pretty: bool = False) -> str:
    """`bridge vlan show` (vlan.c): a header, then per port its name and one
    VLAN a line ("PVID", "Egress Untagged"), and a blank line. `ports`:
    (name, [PortVlan]) pairs."""
    if as_json:
        data = []
        for name, vlans in ports:
            if not vlans:
                continue
            data.append({"ifname": name, "vlans": [_vlan_json(v) for v in vlans]})
        return dumps(data, pretty) + "\n"
    lines = [VLAN_HEADER]
    for name, vlans in ports:
        if not vlans:
            continue
        for i, v in enumerate(vlans):
            lead = f"{name if i == 0 else '':<{IFNAMSIZ}}  "
            flags = (" PVID" if v.pvid else "") + (" Egress Untagged" if v.untagged else "")
            lines.append(f"{lead}{v.vid}{flags}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _vlan_json(v) -> dict:
    flags = (["PVID"] if v.pvid else []) + (["Egress Untagged"] if v.untagged else [])
    out = {"vlan": v.vid}
    if flags:
        out["flags"] = flags
    return out


# -- brctl -----------------------------------------------------------------------------
def format_brctl_show(bridges: Iterable[bridge_pb2.BridgeInfo]) -> str:
    lines = [BRCTL_SHOW_HEADER]
    for info in bridges:
        ports = [p.name for p in info.ports]
        stp = "yes" if info.stp else "no"
        lines.append(f"{info.name}\t\t{info.bridge_id}\t{stp}\t\t{ports[0] if ports else ''}".rstrip("\t"))
        lines.extend(_INTERFACES_COLUMN + name for name in ports[1:])
    return "\n".join(lines) + "\n"


def format_showmacs(entries: Iterable[bridge_pb2.FdbRecord]) -> str:
    """`brctl showmacs BRIDGE`: the ageing timer is the time since the entry
    was last refreshed, shown as seconds.hundredths; "is local?" is yes for
    a permanent entry (the bridge's own address), as brforward's is_local."""
    lines = [BRCTL_SHOWMACS_HEADER]
    for e in sorted(entries, key=lambda e: (e.port_no, e.mac)):
        local = "yes" if e.state == "permanent" else "no"
        lines.append(f"{e.port_no:3d}\t{e.mac}\t{local}\t\t{e.updated:7.2f}")
    return "\n".join(lines) + "\n"


def _c_hex(value: int) -> str:
    """C's "%#x": 0 is "0", not "0x0"."""
    return f"{value:#x}" if value else "0"
