"""What the xl and xenstore commands print, laid out as the real tools lay it
out. Pure functions: proto messages in, text out."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from xenlab.client import Rundir
from xenlab.proto import domains_pb2, xenstore_pb2

# xl_info.c list_domains(): the header and one printf per domain.
XL_LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
_NO_STATE = "------"


def format_domain_row(info: domains_pb2.DomainInfo) -> str:
    return "%-40s %5d %5d %5d     %s  %8.1f" % (
        info.name, info.domid, info.memory_kb // 1024, info.vcpus,
        info.state or _NO_STATE, info.cpu_time)


def format_domain_list(domains: Iterable[domains_pb2.DomainInfo]) -> str:
    lines = [XL_LIST_HEADER] + [format_domain_row(d) for d in domains]
    return "\n".join(lines) + "\n"


_INT64 = frozenset((FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
                    FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
                    FieldDescriptor.TYPE_SFIXED64))


def message_to_dict(message: Message) -> dict:
    """A message as JSON-ready data with every field shown. Unlike the proto3
    JSON mapping, 64-bit integers stay numbers, as xl prints memory sizes."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    _int64_as_numbers(data, message.DESCRIPTOR)
    return data


def _int64_as_numbers(data: dict, descriptor) -> None:
    for fd in descriptor.fields:
        if fd.name not in data:
            continue
        repeated = fd.is_repeated
        if fd.message_type is not None and not fd.message_type.GetOptions().map_entry:
            for item in (data[fd.name] if repeated else [data[fd.name]]):
                _int64_as_numbers(item, fd.message_type)
        elif fd.type in _INT64:
            data[fd.name] = [int(v) for v in data[fd.name]] if repeated else int(data[fd.name])


def format_domain_long(domains: Iterable[domains_pb2.DomainInfo]) -> str:
    """`xl list -l`: a JSON array of {domid, config}, as xl prints its
    libxl_domain_config, and the paging the domain runs on (xenlab's own)."""
    entries = [{"domid": d.domid, "config": message_to_dict(d.spec),
                "paging": {"mode": d.paging_mode or "direct", "pool_kb": d.paging_pool_kb}}
               for d in domains]
    return json.dumps(entries, indent=4) + "\n"


def _version_parts(version: str) -> list[tuple[str, str]]:
    m = re.fullmatch(r"(\d+)\.(\d+)(.*)", version)
    if m is None:
        return []
    return [("xen_major", m.group(1)), ("xen_minor", m.group(2)), ("xen_extra", m.group(3))]


def format_host_info(info: domains_pb2.HostInfo, phys=None) -> str:
    """`xl info`: xl's `key<pad to 23>: value` lines; memory in MiB.
    ``phys`` (a sched_pb2.PhysInfo) adds xl's physinfo and build lines."""
    rows = [("host", info.host), ("release", info.release)]
    if phys is not None:
        rows += [("version", phys.version), ("machine", phys.machine)]
    rows.append(("nr_cpus", info.nr_cpus))
    if phys is not None:
        rows += [("max_cpu_id", phys.max_cpu_id), ("nr_nodes", phys.nr_nodes),
                 ("cores_per_socket", phys.cores_per_socket),
                 ("threads_per_core", phys.threads_per_core),
                 ("cpu_mhz", f"{phys.cpu_khz // 1000}.{phys.cpu_khz % 1000:03d}"),
                 ("hw_caps", ":".join(f"{w:08x}" for w in phys.hw_caps)),
                 ("virt_caps", phys.virt_caps)]
    rows += [("total_memory", info.total_memory_kb // 1024),
             ("free_memory", info.free_memory_kb // 1024)]
    if phys is not None:
        # Page sharing is the kernel's (KSM), host-wide as Xen's; no claims
        # in the lab: that zero is real.
        rows += [("sharing_freed_memory", info.sharing_freed_kb // 1024),
                 ("sharing_used_memory", info.sharing_used_kb // 1024),
                 ("outstanding_claims", 0), ("free_cpus", phys.free_cpus)]
    rows += _version_parts(info.xen_version)
    rows += [("xen_version", info.xen_version), ("xen_caps", info.xen_caps)]
    if phys is not None:
        rows.append(("xen_scheduler", phys.scheduler))
    rows.append(("xen_pagesize", 4096))
    if phys is not None:
        rows += [("xen_commandline", phys.commandline), ("cc_compiler", phys.cc_compiler),
                 ("cc_compile_date", phys.cc_compile_date)]
    rows += [("nr_domains", info.nr_domains),
             ("launcher", info.launcher)]
    if info.page_sharing:
        rows.append(("page_sharing", info.page_sharing))
    rows += [("rundir", info.rundir),
             ("doorbell", info.doorbell)]
    if info.rundir:
        rows.append(("xenstored_path", Rundir(Path(info.rundir)).xenstored_socket))
    rows.append(("uptime", f"{info.uptime:.1f}"))
    # xenlab's own: every message the hypervisor has handled, then by
    # operation on one line, as xl prints virt_caps.
    rows.append(("hypervisor_ops", sum(info.ops.values())))
    rows.append(("hypervisor_ops_by_op",
                 " ".join(f"{name}={count}" for name, count in sorted(info.ops.items()))))
    if phys is not None:
        rows.append(("xend_config_format", 4))
    return "".join(f"{key:<23}: {value}\n" for key, value in rows)


# --------------------------------------------------------------------------
# xenstore

_XS_ESCAPES = {ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r", ord("\f"): "\\f",
               ord("\\"): "\\\\"}
_XS_UNESCAPES = {"t": b"\t", "n": b"\n", "r": b"\r", "f": b"\f", "\\": b"\\"}


def sanitise_value(value: bytes) -> str:
    """Printable ASCII as is, C escapes for \\t \\n \\r \\f and backslash,
    octal for the rest (xs_lib.c sanitise_value)."""
    out = []
    for byte in value:
        if byte in _XS_ESCAPES:
            out.append(_XS_ESCAPES[byte])
        elif 0x20 <= byte <= 0x7E:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def unsanitise_value(text: str) -> bytes:
    """The inverse of sanitise_value, as xenstore-write reads its values."""
    out = bytearray()
    raw = text.encode()
    i = 0
    while i < len(raw):
        c = raw[i:i + 1]
        if c != b"\\" or i + 1 == len(raw):
            out += c
            i += 1
            continue
        nxt = chr(raw[i + 1])
        octal = re.match(rb"[0-7]{3}", raw[i + 1:i + 4])
        if octal:
            out.append(int(octal.group(), 8) & 0xFF)
            i += 4
        elif nxt in _XS_UNESCAPES:
            out += _XS_UNESCAPES[nxt]
            i += 2
        else:
            out += raw[i + 1:i + 2]
            i += 2
    return bytes(out)


def format_perm(perm: xenstore_pb2.Perm) -> str:
    return f"{perm.perm}{perm.domid}"


def format_perms(perms: Iterable[xenstore_pb2.Perm]) -> str:
    return ",".join(format_perm(p) for p in perms)


@dataclass(frozen=True)
class LsEntry:
    """One node of a `xenstore ls` walk, in depth-first order."""
    depth: int
    name: str
    value: bytes | None                  # None: the node could not be read
    perms: tuple[xenstore_pb2.Perm, ...] | None = None


def format_ls_entry(entry: LsEntry) -> str:
    line = " " * entry.depth + entry.name
    line += ":" if entry.value is None else f' = "{sanitise_value(entry.value)}"'
    if entry.perms is not None:
        line += f"  ({format_perms(entry.perms)})"
    return line


def format_ls(entries: Iterable[LsEntry]) -> str:
    """xenstore-ls: `name = "value"`, indented one space per level."""
    return "".join(format_ls_entry(e) + "\n" for e in entries)


# xl_nic.c main_networklist(): the header and one row per vif.
XL_NETWORK_LIST_HEADER = "%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s" % (
    "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path")


def format_vif_row(vif: domains_pb2.VifInfo) -> str:
    return "%-3d %-2d %-17s %6d %5d %6d %5d/%-11d %-30s" % (
        vif.devid, vif.backend_id, vif.mac, vif.devid, vif.state, vif.evtchn,
        vif.tx_ring_ref, vif.rx_ring_ref, vif.backend_path)


def format_network_list(vifs: Iterable[domains_pb2.VifInfo]) -> str:
    return "\n".join([XL_NETWORK_LIST_HEADER] + [format_vif_row(v) for v in vifs]) + "\n"
