"""A Linux kernel bridge in a network namespace of its own, driven frame by
frame, to compare xenbr0 with: `LinuxBridge(["p1", "p2"])` makes namespace
NS with bridge br0 and, per port P, a veth pair whose end P is a bridge port
and whose other end is the test's AF_PACKET socket (the "wire" of that port).

`send(port, frame)` puts a frame on a port's wire and returns what came out
of every wire: after the frame, a sentinel broadcast goes in through a probe
port (`PROBE`, always the last port), and each wire is read up to the
sentinel. The kernel forwards a veth's frame in the softirq that the sending
syscall runs on its way out, so once the sentinel is out anywhere, the
frame before it has gone wherever it was going. A wire that the sentinel
cannot reach (broadcast flooding off, port not forwarding) is drained once
the others have seen it.

IPv6 is off in the namespace so that no neighbour discovery or MLD frame
mixes in. Everything goes with the namespace.
"""
from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
PROBE = "pz"
PROBE_MAC = bytes.fromhex("02ee00000000")
SENTINEL_TYPE = b"\x88\xb6"


def unavailable() -> str | None:
    """Why a kernel bridge cannot be built here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "needs root (ip netns, AF_PACKET)"
    if shutil.which("ip") is None or shutil.which("bridge") is None:
        return "needs iproute2 (ip, bridge)"
    probe = f"xlbrprobe{os.getpid()}"
    proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"`ip netns add` failed: {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sentinel(n: int) -> bytes:
    return b"\xff" * 6 + PROBE_MAC + SENTINEL_TYPE + n.to_bytes(4, "big") + bytes(42)


class LinuxBridge:
    def __init__(self, ports: list[str], name: str = "") -> None:
        self.ns = name or f"xlbr{os.getpid()}"
        self.ports = list(ports) + [PROBE]
        self.wires: dict[str, socket.socket] = {}
        self._seq = 0
        self._libc = ctypes.CDLL(None, use_errno=True)

    # -- setup -------------------------------------------------------------------------
    def __enter__(self) -> "LinuxBridge":
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ip(self, *args: str) -> str:
        return _run("ip", "-n", self.ns, *args)

    def bridge(self, *args: str) -> str:
        return _run("ip", "netns", "exec", self.ns, "bridge", *args)

    def _setup(self) -> None:
        _run("ip", "netns", "add", self.ns)
        for knob in ("all", "default"):
            _run("ip", "netns", "exec", self.ns, "sysctl", "-qw", f"net.ipv6.conf.{knob}.disable_ipv6=1")
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", "br0", "type", "bridge")
        for port in self.ports:
            self.ip("link", "add", port, "type", "veth", "peer", "name", f"w{port}")
            self.ip("link", "set", port, "master", "br0")
            self.ip("link", "set", port, "up")
            self.ip("link", "set", f"w{port}", "up")
        self.ip("link", "set", "br0", "up")
        # br0's own stack sends now and then (IGMP, multicast router
        # discovery): not the bridge's forwarding, so not compared.
        self.own = bytes.fromhex(json.loads(self.ip("-j", "link", "show", "br0"))[0]["address"].replace(":", ""))
        with self.inside():
            for port in self.ports:
                wire = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                wire.bind((f"w{port}", 0))
                wire.setblocking(False)
                self.wires[port] = wire

    def inside(self):
        """A context in which this thread's sockets are made in the namespace."""
        bridge = self

        class _Inside:
            def __enter__(self):
                self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
                fd = os.open(f"/var/run/netns/{bridge.ns}", os.O_RDONLY)
                try:
                    bridge._setns(fd)
                finally:
                    os.close(fd)

            def __exit__(self, *exc):
                try:
                    bridge._setns(self.home)
                finally:
                    os.close(self.home)
        return _Inside()

    def _setns(self, fd: int) -> None:
        if self._libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")

    def close(self) -> None:
        for wire in self.wires.values():
            wire.close()
        self.wires.clear()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    # -- frames ------------------------------------------------------------------------
    def send(self, port: str, frame: bytes) -> dict[str, list[bytes]]:
        """Put `frame` on `port`'s wire; what every wire received (the probe's
        included, sentinels excluded)."""
        for wire in self.wires.values():
            _drain(wire)
        self.wires[port].send(frame)
        self._seq += 1
        mark = sentinel(self._seq)
        self.wires[PROBE].send(mark)
        got = {p: [] for p in self.ports}
        waiting = {p for p in self.ports if p != PROBE and self._reachable(p)}
        if not waiting:
            raise AssertionError("no wire can see the sentinel: give a port broadcast flooding")
        while waiting:
            ready, _, _ = select.select([self.wires[p] for p in waiting], [], [], 5.0)
            if not ready:
                raise AssertionError(f"the sentinel never came out of {sorted(waiting)}")
            for p in list(waiting):
                for data in _drain(self.wires[p]):
                    if data == mark:
                        waiting.discard(p)
                    elif not _is_sentinel(data) and data[6:12] != self.own:
                        got[p].append(data)
        for p in self.ports:
            if p == PROBE or not self._reachable(p):
                got[p].extend(d for d in _drain(self.wires[p])
                              if not _is_sentinel(d) and d[6:12] != self.own)
        return {p: frames for p, frames in got.items() if frames}

    def _reachable(self, port: str) -> bool:
        link = json.loads(self.bridge("-d", "-j", "link", "show", "dev", port))[0]
        return link.get("bcast_flood", True) and link.get("state") == "forwarding"

    # -- state -------------------------------------------------------------------------
    def fdb(self) -> set[tuple]:
        """(mac, port, state, sticky) of br0's entries on its ports, less the
        ports' own addresses (permanent entries the kernel adds) and the probe's."""
        own = {json.loads(self.ip("-j", "link", "show", p))[0]["address"] for p in self.ports}
        out = set()
        for e in json.loads(self.bridge("-j", "fdb", "show", "br", "br0")):
            if e.get("master") != "br0" or e["mac"] in own or bytes.fromhex(e["mac"].replace(":", "")) == PROBE_MAC:
                continue
            out.add((e["mac"], e["ifname"], e.get("state", ""), "sticky" in e.get("flags", []),
                     e.get("vlan", 0)))
        return out

    def set_fdb_max_learned(self, limit: int) -> None:
        """IFLA_BR_FDB_MAX_LEARNED (Linux 6.7), which iproute2 6.1 cannot set:
        one RTM_NEWLINK by hand."""
        ifindex = json.loads(self.ip("-j", "link", "show", "br0"))[0]["ifindex"]
        u32 = struct.pack("=HHI", 8, 49, limit)                         # IFLA_BR_FDB_MAX_LEARNED
        data = struct.pack("=HH", 4 + len(u32), 2) + u32                # IFLA_INFO_DATA
        kind = b"bridge\0"
        kind_attr = struct.pack("=HH", 4 + len(kind), 1) + kind + b"\0" * (-len(kind) % 4)
        info = kind_attr + data
        linkinfo = struct.pack("=HH", 4 + len(info), 18) + info          # IFLA_LINKINFO
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, ifindex, 0, 0) + linkinfo
        header = struct.pack("=IHHII", 16 + len(body), 16, 0x1 | 0x4, 1, 0)   # RTM_NEWLINK, REQUEST|ACK
        with self.inside():
            nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        with nl:
            nl.send(header + body)
            reply = nl.recv(4096)
        err = struct.unpack_from("=i", reply, 16)[0]
        if err:
            raise OSError(-err, f"RTM_NEWLINK fdb_max_learned: {os.strerror(-err)}")


def _is_sentinel(data: bytes) -> bool:
    return data[6:12] == PROBE_MAC and data[12:14] == SENTINEL_TYPE


def _drain(wire: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            data, addr = wire.recvfrom(65536)
        except BlockingIOError:
            return out
        if addr[2] != socket.PACKET_OUTGOING:
            out.append(data)


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout
