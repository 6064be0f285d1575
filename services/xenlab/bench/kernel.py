"""The baseline: the same measurements through the Linux kernel's bridge.

Three network namespaces made for the run: A and B, each with an ``eth0``
that is one end of a veth pair, and BR, where the other ends are ports of a
Linux bridge ``br0``: the shape of two domUs on xenbr0, with the kernel as
the data path. The traffic is Python's (``xenlab.bench.packet``, AF_PACKET
sockets), like the xenlab guest's, so the ratio compares the paths, not the
languages of the endpoints. IPv6 is off in the namespaces so that no
neighbour discovery frames share the counters.

Everything is torn down at the end (deleting a namespace deletes its
links), also when a step fails. Where namespaces cannot be made (not root,
no iproute2) ``KernelBridge.unavailable()`` says why, and the bench skips
the baseline with that reason.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from xenlab import eventloop
from xenlab.bench.stats import conservation, percentiles, rate, rate_fields

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
ETH_DATA = 0x88B5
ETH_ECHO = 0x88B6
ETH_HELLO = 0x88B7


class BaselineError(RuntimeError):
    """A step of the baseline failed; the message has the command and its output."""


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise BaselineError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


@dataclass
class KernelBridge:
    # Names of this run only: the process id keeps two runs apart.
    prefix: str = field(default_factory=lambda: f"xlb{os.getpid()}")

    @property
    def ns_a(self) -> str:
        return f"{self.prefix}a"

    @property
    def ns_b(self) -> str:
        return f"{self.prefix}b"

    @property
    def ns_br(self) -> str:
        return f"{self.prefix}br"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return self.ns_a, self.ns_b, self.ns_br

    @staticmethod
    def unavailable() -> str | None:
        """Why namespaces cannot be made here, or None."""
        if not sys.platform.startswith("linux"):
            return "network namespaces are Linux's"
        if shutil.which("ip") is None:
            return "no `ip` command (install iproute2)"
        probe = f"xlbprobe{os.getpid()}"
        proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if proc.returncode != 0:
            return f"`ip netns add` failed: {proc.stderr.strip() or proc.returncode} (needs root or CAP_SYS_ADMIN)"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return None

    # -- setup and teardown ------------------------------------------------------------
    def __enter__(self) -> "KernelBridge":
        try:
            self._setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def _setup(self) -> None:
        for ns in self.namespaces:
            _run("ip", "netns", "add", ns)
            for knob in ("all", "default"):
                self._sysctl(ns, f"/proc/sys/net/ipv6/conf/{knob}/disable_ipv6", "1")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        br = self.ns_br
        _run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        for port, ns, mac in (("pa", self.ns_a, MAC_A), ("pb", self.ns_b, MAC_B)):
            _run("ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "-n", ns, "link", "set", "eth0", "address", mac)
            _run("ip", "-n", br, "link", "set", port, "master", "br0")
            _run("ip", "-n", br, "link", "set", port, "up")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", br, "link", "set", "br0", "up")

    @staticmethod
    def _sysctl(ns: str, path: str, value: str) -> None:
        # Best effort: a kernel without IPv6 has no such knob, and no IPv6 noise either.
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"],
                       capture_output=True)

    def teardown(self) -> None:
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    # -- counters ------------------------------------------------------------------------
    def drops(self) -> dict[str, dict[str, int]]:
        """rx/tx dropped of every link in the three namespaces."""
        out = {}
        for ns in self.namespaces:
            for link in json.loads(_run("ip", "-n", ns, "-s", "-j", "link", "show") or "[]"):
                if link.get("ifname") == "lo":
                    continue
                stats = link.get("stats64") or link.get("stats") or {}
                name = f"{ns[len(self.prefix):]}:{link['ifname']}"
                out[name] = {"rx_dropped": stats.get("rx", {}).get("dropped", 0),
                             "tx_dropped": stats.get("tx", {}).get("dropped", 0)}
        return out

    # -- the helpers in the namespaces ---------------------------------------------------------
    async def _start(self, ns: str, role: str, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, sys.executable, "-m", "xenlab.bench.packet", role, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    @staticmethod
    async def _ready(proc: asyncio.subprocess.Process, timeout: float = 20.0) -> None:
        line = await eventloop.wait_for(proc.stdout.readline(), timeout)
        if line.strip() != b"ready":
            err = await proc.stderr.read()
            raise BaselineError(f"packet helper did not start: {line!r} {err.decode(errors='replace')}")

    @staticmethod
    async def _result(proc: asyncio.subprocess.Process, timeout: float) -> dict:
        try:
            out, err = await eventloop.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise BaselineError(f"packet helper still running after {timeout:g}s") from None
        if proc.returncode != 0:
            raise BaselineError(f"packet helper failed ({proc.returncode}): {err.decode(errors='replace')}")
        return json.loads(out.decode().strip().splitlines()[-1])

    async def throughput(self, size: int, count: int, timeout: float = 120.0) -> dict:
        sink = await self._start(self.ns_b, "sink", "--ethertype", hex(ETH_DATA), "--count", str(count),
                                 "--announce", hex(ETH_HELLO), "--idle", "1", "--timeout", str(timeout))
        try:
            await self._ready(sink)
            before = self.drops()
            sender = await self._start(self.ns_a, "send", "--dst", MAC_B, "--ethertype", hex(ETH_DATA),
                                       "--count", str(count), "--size", str(size))
            sent = await self._result(sender, timeout)
            got = await self._result(sink, timeout)
        finally:
            if sink.returncode is None:
                sink.kill()
                await sink.wait()
        after = self.drops()
        drops = {name: {k: after[name][k] - before.get(name, {}).get(k, 0) for k in after[name]}
                 for name in after}
        drops = {name: {k: v for k, v in d.items() if v} for name, d in drops.items()}
        drops = {name: d for name, d in drops.items() if d}
        if sent["errors"]:
            drops["A:send()"] = dict(sent["errors"])
        if got["tp_drops"]:
            drops["B:socket"] = {"tp_drops": got["tp_drops"]}
        attempted = count
        delivered = got["received"]
        seconds = (got["last"] - sent["started"]) if delivered else 0.0
        result = {"size": size, "count": count, "sent": attempted, "delivered": delivered,
                  "seconds": seconds, "sender_fps": rate(sent["sent"], sent["finished"] - sent["started"]),
                  "cpu_seconds": {"sender": sent["cpu"], "sink": got["cpu"]}}
        result.update(rate_fields(delivered, size, seconds))
        result.update(conservation(attempted, delivered, drops))
        return result

    async def latency(self, count: int, interval: float, size: int = 98, timeout: float = 1.0) -> dict:
        # 98 bytes: the frame of a default ping (56 bytes of ICMP payload).
        responder = await self._start(self.ns_b, "echo", "--ethertype", hex(ETH_ECHO), "--count", str(count),
                                      "--idle", "5", "--timeout", "30")
        try:
            await self._ready(responder)
            pinger = await self._start(self.ns_a, "ping", "--dst", MAC_B, "--ethertype", hex(ETH_ECHO),
                                       "--count", str(count), "--interval", str(interval), "--size", str(size),
                                       "--timeout", str(timeout))
            result = await self._result(pinger, count * (interval + timeout) + 30)
        finally:
            if responder.returncode is None:
                responder.kill()
                await responder.wait()
        return {"count": count, "interval": interval, "size": size,
                "transmitted": result["transmitted"], "received": result["received"],
                **percentiles(result["rtt"])}

