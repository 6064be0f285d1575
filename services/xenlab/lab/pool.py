"""A pool: several Xen hosts on one machine, each a lab of its own (its
hypervisor, Domain-0, bridges and domains) in a network namespace of its
own, their bridges joined by VXLAN over a shared underlay, so that
everything between hosts goes over real UDP.

The underlay is a Linux bridge (``lan0``) in a namespace of its own; each
host's namespace has ``eth0`` on it with the host's address (a veth pair),
and ``lo``. This machine is on it too, at .254 of the hosts' /24: it
reaches the hosts' addresses, and the pool's embedded MQTT broker (one for
every host, each publishing under its own name) listens there. Bridge N of the lab file runs on every host with a VXLAN
uplink, VNI 100 + N, from the host's address to every other host's
(xenlab.lab.spec.host_lab). Each host's rundir is RUNDIR/hosts/NAME: the
tools reach a host with ``--rundir RUNDIR/hosts/NAME`` (unix sockets are
not namespaced), as `xenlab up` prints.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for the namespaces) and
iproute2.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from xenlab import eventloop
from xenlab.events.broker import broker_ready, pick_engine
from xenlab.events.config import BrokerAddress
from xenlab.lab.runner import Lab, LabError
from xenlab.lab.spec import LabSpec, host_lab, pool_gateway
from xenlab.osutil import free_port
from xenlab.rundir import Rundir, RundirError

UNDERLAY_BRIDGE = "lan0"
HOST_LINK = "eth0"
GATEWAY_LINK = "gw"                 # the underlay's end of this machine's veth onto it
BROKER_TIMEOUT = 30.0


@dataclass
class Pool:
    spec: LabSpec
    rundir: Path
    log_level: str = "INFO"
    progress: object = print
    domain_uids: str = "auto"
    labs: dict[str, Lab] = field(default_factory=dict)
    broker: BrokerAddress | None = None     # the pool's embedded MQTT broker, when it has one
    _namespaces: list[str] = field(default_factory=list)
    _broker_proc: asyncio.subprocess.Process | None = None

    def __post_init__(self) -> None:
        self.rundir = Path(self.rundir)
        # Namespace names are global: tie them to this rundir, so that two
        # pools (or a pool left by a killed run) never share one.
        self.tag = self.tag_of(self.rundir)

    @staticmethod
    def tag_of(rundir: Path) -> str:
        return hashlib.sha256(str(Path(rundir).resolve()).encode()).hexdigest()[:6]

    def namespace(self, host: str) -> str:
        return f"xl{self.tag}-{host}"

    @property
    def underlay_namespace(self) -> str:
        return f"xl{self.tag}-lan"

    def host_rundir(self, host: str) -> Path:
        return self.rundir / "hosts" / host

    @staticmethod
    def unavailable() -> str | None:
        """Why a pool cannot run on this machine, or None."""
        if os.geteuid() != 0:
            return "a pool needs root: each host runs in a network namespace of its own"
        if shutil.which("ip") is None:
            return "a pool needs ip (iproute2) to make the hosts' network namespaces"
        return None

    # -- up ----------------------------------------------------------------------------
    async def up(self, timeout: float = 120.0) -> None:
        """Make the underlay and the hosts' namespaces, then start each
        host's lab; on failure or cancellation, take down what started."""
        reason = self.unavailable()
        if reason:
            raise LabError(reason)
        try:
            for path in (self.rundir, self.rundir / "hosts"):
                Rundir(path).create()
        except RundirError as err:
            raise LabError(str(err)) from None
        try:
            await self._underlay()
            url = await self._start_broker() if self.spec.mqtt.broker == "embedded" else None
            for host in self.spec.hosts:
                self.progress(f"host {host.name}: {host.address} in namespace {self.namespace(host.name)}")
                lab = Lab(host_lab(self.spec, host.name, url), self.host_rundir(host.name),
                          log_level=self.log_level, progress=self._host_progress(host.name),
                          domain_uids=self.domain_uids, netns=self.namespace(host.name))
                self.labs[host.name] = lab
                await lab.up(timeout=timeout)
        except BaseException:
            await self.down()
            raise
        self.progress(f"pool {self.spec.name} is up: {len(self.labs)} hosts")

    def _host_progress(self, host: str):
        return lambda text: self.progress(f"[{host}] {text}")

    async def _underlay(self) -> None:
        gateway_ip = pool_gateway(self.spec)
        taken = await _ip("-o", "addr", "show", "to", f"{gateway_ip}/32", check=False)
        if taken.strip() and f"xlg{self.tag}" not in taken:
            raise LabError(f"{gateway_ip} is taken on this machine ({taken.split()[1]}): another "
                           f"pool on the same underlay? Give this one's [[host]] addresses on "
                           f"another /24")
        lan = self.underlay_namespace
        await self._netns(lan)
        await _ip("-n", lan, "link", "add", UNDERLAY_BRIDGE, "type", "bridge")
        await _ip("-n", lan, "link", "set", UNDERLAY_BRIDGE, "up")
        # This machine on the underlay too (.254): it reaches every host's
        # address, and the hosts reach the pool's broker.
        gateway = f"xlg{self.tag}"
        await _ip("link", "add", gateway, "type", "veth", "peer", "name", GATEWAY_LINK, "netns", lan)
        await _ip("-n", lan, "link", "set", GATEWAY_LINK, "master", UNDERLAY_BRIDGE)
        await _ip("-n", lan, "link", "set", GATEWAY_LINK, "up")
        await _ip("addr", "add", f"{pool_gateway(self.spec)}/24", "dev", gateway)
        await _ip("link", "set", gateway, "up")
        for i, host in enumerate(self.spec.hosts):
            ns = self.namespace(host.name)
            await self._netns(ns)
            port = f"h{i}"
            await _ip("-n", lan, "link", "add", port, "type", "veth", "peer", "name", HOST_LINK,
                      "netns", ns)
            await _ip("-n", lan, "link", "set", port, "master", UNDERLAY_BRIDGE)
            await _ip("-n", lan, "link", "set", port, "up")
            await _ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", HOST_LINK)
            await _ip("-n", ns, "link", "set", HOST_LINK, "up")
            await _ip("-n", ns, "link", "set", "lo", "up")

    async def _start_broker(self) -> str:
        """The pool's embedded MQTT broker, in this namespace on the
        machine's underlay address, which every host reaches: its URL."""
        gateway = pool_gateway(self.spec)
        self.broker = BrokerAddress(gateway, free_port(gateway))
        engine = pick_engine(self.spec.mqtt.engine)
        self.progress(f"starting the pool's MQTT broker ({engine}) on {self.broker}")
        run = Rundir(self.rundir)
        fd = run.open_log("mqtt.log")
        try:
            self._broker_proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "xenlab.cli.main", "mqtt-broker", "--listen",
                f"{self.broker.host}:{self.broker.port}", "--engine", engine,
                "--log-level", self.log_level, "--die-with-parent",
                stdin=asyncio.subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
        finally:
            os.close(fd)
        deadline = asyncio.get_running_loop().time() + BROKER_TIMEOUT
        while not await broker_ready(self.broker):
            if self._broker_proc.returncode is not None:
                raise LabError(f"the pool's MQTT broker exited with {self._broker_proc.returncode}; "
                               f"see {run.logs / 'mqtt.log'}")
            if asyncio.get_running_loop().time() > deadline:
                raise LabError(f"the pool's MQTT broker did not listen on {self.broker} "
                               f"in {BROKER_TIMEOUT:g}s")
            await asyncio.sleep(0.05)
        return f"mqtt://{self.broker.host}:{self.broker.port}"

    async def _netns(self, name: str) -> None:
        # One a killed pool left behind goes first: nothing of it runs any more
        # (its hosts' rundirs are reclaimed the same way by each Lab).
        await _ip("netns", "del", name, check=False)
        await _ip("netns", "add", name)
        self._namespaces.append(name)

    # -- down ---------------------------------------------------------------------------
    async def down(self) -> None:
        for name, lab in reversed(list(self.labs.items())):
            try:
                await lab.down()
            except Exception as err:        # the other hosts still go down
                self.progress(f"host {name}: stopping failed: {err}")
        self.labs.clear()
        if self._broker_proc is not None:
            if self._broker_proc.returncode is None:
                self._broker_proc.terminate()
                try:
                    await eventloop.wait_for(self._broker_proc.wait(), 10)
                except TimeoutError:
                    self._broker_proc.kill()
                    await self._broker_proc.wait()
            self._broker_proc = None
        # This machine's veth onto the underlay: deleted here, at once (a
        # namespace's devices go in the kernel's own time after `netns del`,
        # and a pool started next must find the address free).
        if self._namespaces:
            await _ip("link", "del", f"xlg{self.tag}", check=False)
        for ns in reversed(self._namespaces):
            await _ip("netns", "del", ns, check=False)
        self._namespaces.clear()

    @classmethod
    async def remove_namespaces(cls, rundir: Path) -> list[str]:
        """Delete the namespaces a pool of this rundir left (its runner
        killed before it could); the names deleted."""
        prefix = f"xl{cls.tag_of(rundir)}-"
        await _ip("link", "del", f"xlg{cls.tag_of(rundir)}", check=False)
        listed = await _ip("netns", "list", check=False)
        left = [line.split()[0] for line in listed.splitlines()
                if line.split() and line.split()[0].startswith(prefix)]
        for name in left:
            await _ip("netns", "del", name, check=False)
        return left

    async def summary(self) -> str:
        parts = []
        for name, lab in self.labs.items():
            host = next(h for h in self.spec.hosts if h.name == name)
            parts.append(f"host {name} ({host.address}, --rundir {lab.rundir}):\n{await lab.summary()}")
        return "\n\n".join(parts)


async def _ip(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec("ip", *args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace").strip()
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {text or f'exit {proc.returncode}'}")
    return text
