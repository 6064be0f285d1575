"""`xenlab up`: run a lab as real processes, each service its own process.

Order (each waits for the previous to be ready): the hypervisor, the bridge
service(s), Domain-0's kernel with netback, then the domUs through the
toolstack; then it waits until every vif is Connected on both ends and
hotplugged, and prints a summary. `down` undoes it in reverse.

The runner claims the rundir first (lab.json, created O_EXCL) and records
there each process it starts, by pid and start time, so that a lab whose
processes were killed is recognised and cleaned by the next `xenlab up` or
`xenlab down` (xenlab.rundir).
"""
from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from xenlab import eventloop
from xenlab.bridge.client import BridgeStub, NoBridgeError, bridge_for
from xenlab.client import HypervisorClient, to_domain_spec
from xenlab.events.broker import broker_ready, pick_engine
from xenlab.events.config import BrokerAddress, EventsConfig
from xenlab.events.topics import Topics
from xenlab.agent_client import agent_key
from xenlab.lab import shaping
from xenlab.lab.spec import LabSpec, shaping_devices
from xenlab.launchers.domains_dir import parse_domain_uids
from xenlab.osutil import free_port
from xenlab.proto import bridge_pb2, common_pb2, domains_pb2, xenstore_pb2
from xenlab.rundir import LAB, ProcessRecord, Rundir, RundirError
from xenlab.xen import abi
from xenlab.xen.xenstore_paths import bridge_registry_path

log = logging.getLogger(__name__)

CONNECTED = int(abi.XenbusState.Connected)


def isolation_note(uids) -> str:
    """What `xenlab up` says about the walls between local domains."""
    if uids is not None:
        return (f"each domU runs as a host user of its own (uid {uids.base}+domid), with only "
                f"its own memory, doorbell and agent socket: see SECURITY.md")
    user = pwd.getpwuid(os.geteuid()).pw_name if _has_user(os.geteuid()) else str(os.geteuid())
    return (f"domUs run as your user ({user}): the OS keeps no wall between them, nor between "
            f"them and the rundir; run as root for a uid per domU (see SECURITY.md)")


def _has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def vif_ready(vif) -> bool:
    """Connected on both ends and hotplugged: what `xenlab up` waits for."""
    return vif.state == CONNECTED == vif.backend_state and vif.hotplug_status == "connected"


class LabError(Exception):
    """The lab could not be brought up or down; the message says why."""


@dataclass
class Service:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    record: ProcessRecord | None = None


@dataclass
class Lab:
    spec: LabSpec
    rundir: Path
    log_level: str = "INFO"
    progress: object = print
    services: list[Service] = field(default_factory=list)
    hv: HypervisorClient | None = None
    domids: dict[str, int] = field(default_factory=dict)
    events: EventsConfig | None = None      # where the services publish (set at start)
    domain_uids: str = "auto"               # the hypervisor's --domain-uids
    # A failed or interrupted up removes what it made in the rundir (and
    # the rundir, if it made it), except the files named in `keep`.
    remove_on_failure: bool = False
    keep: tuple[str, ...] = ()
    # A host of a pool: its services run in this network namespace
    # (`ip netns exec`), and so do the domains its hypervisor starts.
    netns: str | None = None
    _stopping: bool = False
    _dom0_watch: asyncio.Task | None = None
    _claimed: bool = False
    _made_rundir: bool = False
    _state: str = ""
    _runner: ProcessRecord | None = None
    _started: float = 0.0

    @property
    def run(self) -> Rundir:
        return Rundir(self.rundir)

    @property
    def state_file(self) -> Path:
        return self.run.state_file

    # -- up ----------------------------------------------------------------------
    async def up(self, timeout: float = 120.0) -> None:
        """Start the lab in its rundir; on failure or cancellation, stop
        what was started (and, with remove_on_failure, remove it)."""
        try:
            self._made_rundir = self.run.create()
        except RundirError as err:
            raise LabError(str(err)) from None
        self._claim()
        self._stopping = False
        started = time.monotonic()
        try:
            await self._start_events()
            await self._start_hypervisor()
            await self._start_bridges()
            await self._start_dom0()
            await self._create_domains()
            await self._wait_connected(timeout)
            await self._shape(timeout)
        except BaseException:
            if self.remove_on_failure:
                await self.discard()
            else:
                await self.down()
            raise
        self._write_state("up")
        self.progress(f"lab {self.spec.name} is up in {time.monotonic() - started:.1f}s")

    def _claim(self) -> None:
        """Make the rundir this lab's: refused while anything recorded there
        runs; what a lab whose processes are all gone left is cleaned."""
        with self.run.lock():
            reclaim(self.run, self.keep, self.progress)
            try:
                self._write_state("starting", first=True)
            except FileExistsError:
                raise LabError(f"another `xenlab up` is starting a lab in {self.rundir}") from None
        self._claimed = True

    async def _spawn(self, name: str, *args: str) -> Service:
        fd = self.run.open_log(f"{name}.log")
        try:
            netns = ("ip", "netns", "exec", self.netns) if self.netns else ()
            proc = await asyncio.create_subprocess_exec(
                *netns, sys.executable, "-m", "xenlab.cli.main", *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
        finally:
            os.close(fd)
        try:
            record = ProcessRecord.of(proc.pid)
        except ProcessLookupError:
            record = None           # gone already: _wait reports its exit
        service = Service(name, proc, self.run.logs / f"{name}.log", record)
        old = self.service(name)
        if old is not None:
            self.services[self.services.index(old)] = service
        else:
            self.services.append(service)
        if self._claimed:
            self._write_state(self._state)
        return service

    def service(self, name: str) -> Service | None:
        """A service of the lab by name: hypervisor, bridge, dom0, mqtt."""
        return next((s for s in self.services if s.name == name), None)

    async def _wait(self, service: Service, ready, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if service.proc.returncode is not None:
                raise LabError(f"{service.name} exited with {service.proc.returncode} before {what}:\n"
                               + _tail(service.log))
            if await ready():
                return
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout:g}s waiting for {what}:\n" + _tail(service.log))
            await asyncio.sleep(0.05)

    async def _start_hypervisor(self) -> None:
        listen = self.spec.listen or f"unix:{self.run.socket('hv.sock')}"
        self.progress(f"starting the hypervisor on {listen}")
        hv = await self._spawn("hypervisor", "hypervisor", "--listen", listen, "--rundir", str(self.rundir),
                               "--memory", str(self.spec.memory_mb), "--launcher", self.spec.launcher,
                               "--page-sharing", self.spec.page_sharing,
                               "--domain-uids", self.domain_uids,
                               "--log-level", self.log_level, "--die-with-parent", *self._events_args())

        address = None

        async def ready():
            nonlocal address
            address = self.run.address_ready()
            return address is not None
        await self._wait(hv, ready, "the hypervisor to listen")
        if self.spec.launcher == "local":
            self.progress(isolation_note(parse_domain_uids(self.domain_uids)))
        self.hv = HypervisorClient.connect(address, 0, self.run.read_dom0_secret())

    async def _xs_read(self, path: str) -> str | None:
        try:
            return (await self.hv.xenstore.Read(xenstore_pb2.PathRequest(path=path))).value.decode()
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def _start_bridges(self) -> None:
        args = ["bridge-service", "--rundir", str(self.rundir), "--log-level", self.log_level,
                "--die-with-parent", *self._events_args(), *self._bridge_args()]
        for bridge in self.spec.bridges:
            args += ["--bridge", bridge.name]
            if bridge.uplink:
                args += ["--uplink", f"{bridge.name}={bridge.uplink}"]
        names = ", ".join(b.name for b in self.spec.bridges)
        self.progress(f"starting the bridge service ({names})")
        service = await self._spawn("bridge", *args)

        async def ready():
            # Its own registration: one a killed bridge service left behind
            # names another pid.
            for bridge in self.spec.bridges:
                if await self._xs_read(bridge_registry_path(bridge.name, "pid")) != str(service.proc.pid):
                    return False
            return True
        await self._wait(service, ready, f"bridge(s) {names} to register")

    def _bridge_args(self) -> list[str]:
        """One bridge service runs every bridge of the lab, with one ageing
        time, FDB limit and flood limit."""
        ageing = {b.ageing for b in self.spec.bridges}
        fdb_max = {b.fdb_max for b in self.spec.bridges}
        flood = {b.flood_limit for b in self.spec.bridges}
        policy = {b.fdb_policy for b in self.spec.bridges}
        timers = {(b.hello_time, b.forward_delay, b.max_age) for b in self.spec.bridges if b.stp}
        if len(ageing) > 1 or len(fdb_max) > 1 or len(flood) > 1 or len(policy) > 1 or len(timers) > 1:
            raise LabError("the bridges of a lab share one bridge service, so they must have the "
                           "same ageing, fdb_max, fdb_policy, flood_limit and STP timers")
        args = ["--ageing", f"{ageing.pop():g}", "--fdb-policy", policy.pop()]
        for bridge in self.spec.bridges:
            if bridge.vlan_filtering:
                args += ["--vlan-filtering", bridge.name]
            if bridge.stp:
                args += ["--stp", bridge.name]
            if bridge.priority is not None:
                args += ["--priority", f"{bridge.name}={bridge.priority}"]
        if timers:
            hello, delay, max_age = timers.pop()
            args += ["--hello-time", f"{hello:g}", "--forward-delay", f"{delay:g}", "--max-age", f"{max_age:g}"]
        for a, b in self.spec.links:
            args += ["--link", f"{a}={b}"]
        limit = fdb_max.pop()
        if limit is not None:
            args += ["--fdb-max", str(limit)]
        storm = flood.pop()
        if storm is not None:
            args += ["--flood-limit", storm]
        return args

    async def _start_dom0(self) -> None:
        self.progress("starting Domain-0's kernel (netback)")
        # A kernel that ran before said "ready" too.
        await self.hv.xenstore.Write(xenstore_pb2.WriteRequest(
            path="/local/domain/0/data/netback", value=b""))
        service = await self._spawn("dom0", "dom0", "--rundir", str(self.rundir),
                                    "--log-level", self.log_level, "--die-with-parent",
                                    *self._events_args())
        self._dom0_watch = asyncio.create_task(self._watch_dom0(service))

        async def ready():
            return await self._xs_read("/local/domain/0/data/netback") == "ready"
        await self._wait(service, ready, "netback in Domain-0")

    async def _watch_dom0(self, service: Service) -> None:
        """Domain-0 stays in the hypervisor's table when its kernel dies: the
        toolstack closes its backends so that the frontends let go
        (Domains.BackendGone), and a new kernel reconnects them."""
        status = await service.proc.wait()
        if self._stopping or self.hv is None:
            return
        self.progress(f"Domain-0's kernel exited with {status}: closing its backends")
        try:
            reply = await self.hv.domains.BackendGone(domains_pb2.BackendGoneRequest(
                domain=common_pb2.DomainRef(domid=0)))
        except grpc.aio.AioRpcError as err:
            self.progress(f"could not close Domain-0's backends: {err.details()}")
            return
        self.progress(f"closed {len(reply.closed)} backend(s) of Domain-0"
                      + (f"; frontends still open: {', '.join(reply.stuck)}" if reply.stuck else ""))

    # -- faults: services killed and restarted ----------------------------------------
    RESTARTABLE = ("bridge", "dom0", "mqtt")

    async def kill_service(self, name: str, sig: int = signal.SIGKILL) -> int | None:
        """Send a service a signal (SIGKILL: it crashes) and wait until it has
        exited and the lab has reacted (Domain-0's backends closed); returns
        its exit status."""
        service = self.service(name)
        if service is None:
            raise LabError(f"the lab has no service {name!r}")
        if service.proc.returncode is None:
            service.proc.send_signal(sig)
            await eventloop.wait_for(service.proc.wait(), 30)
        if name == "dom0" and self._dom0_watch is not None:
            await self._dom0_watch
        return service.proc.returncode

    async def restart_service(self, name: str, kill: bool = False, timeout: float = 60.0) -> None:
        """Stop a service if it runs (SIGTERM, or SIGKILL with kill=True) and
        start it again as `up` did; the domains stay. Returns once it is back
        and every vif is connected and attached to its bridge again."""
        if name not in self.RESTARTABLE:
            raise LabError(f"cannot restart {name!r}: restartable services are "
                           f"{', '.join(self.RESTARTABLE)}")
        if self.service(name) is None:
            raise LabError(f"the lab has no service {name!r}")
        await self.kill_service(name, signal.SIGKILL if kill else signal.SIGTERM)
        if name == "bridge":
            await self._start_bridges()
        elif name == "dom0":
            await self._start_dom0()
        else:
            await self.start_broker()
        await self._wait_connected(timeout)
        await self._shape(timeout)       # what died with the service, from the lab file
        await self.wait_attached(timeout)

    async def wait_attached(self, timeout: float = 60.0) -> None:
        """Until every vif of the lab is a port of its bridge."""
        deadline = time.monotonic() + timeout
        clients = {b.name: await self.bridge_client(b.name) for b in self.spec.bridges}
        try:
            while True:
                missing = []
                for vif in await self.vifs():
                    stub = clients.get(vif.bridge)
                    if stub is None:
                        continue
                    shown = await stub.ShowBridges(bridge_pb2.ShowBridgesRequest(bridge=vif.bridge))
                    if vif.vifname not in {p.name for p in shown.bridges[0].ports}:
                        missing.append(f"{vif.vifname} on {vif.bridge}")
                if not missing:
                    return
                if time.monotonic() > deadline:
                    raise LabError(f"timed out after {timeout:g}s waiting for bridge ports: "
                                   + ", ".join(missing))
                await asyncio.sleep(0.05)
        finally:
            for stub in clients.values():
                await stub.close()

    # -- MQTT events (docs/EVENTS.md) ----------------------------------------------
    def _events_args(self) -> list[str]:
        return self.events.args() if self.events is not None else []

    async def _start_events(self) -> None:
        # Events are always served on the services' gRPC Events stream; on
        # MQTT too unless the lab has no broker.
        mqtt = self.spec.mqtt
        host = mqtt.host or "".join("_" if c in "/+#\0" else c for c in self.spec.name) or "lab"
        if not mqtt.enabled:
            broker = None
        elif mqtt.broker == "embedded":
            broker = BrokerAddress("127.0.0.1", free_port())
        else:
            broker = BrokerAddress.parse(mqtt.broker)
        self.events = EventsConfig(broker, Topics(host, mqtt.prefix), float(mqtt.interval))
        if mqtt.broker == "embedded":
            await self.start_broker()

    async def start_broker(self) -> None:
        """Start the lab's embedded broker (again, after stop_broker: same port)."""
        broker = self.events.broker
        engine = pick_engine(self.spec.mqtt.engine)
        self.progress(f"starting the MQTT broker ({engine}) on {broker}")
        service = await self._spawn("mqtt", "mqtt-broker", "--listen", f"{broker.host}:{broker.port}",
                                    "--engine", engine, "--log-level", self.log_level,
                                    "--die-with-parent")
        # First in the list, so that `down` stops it last: the services say
        # goodbye (final states, offline) before it goes.
        self.services.remove(service)
        self.services.insert(0, service)
        await self._wait(service, lambda: broker_ready(broker), "the MQTT broker to listen")

    async def stop_broker(self) -> None:
        """Stop the embedded broker (the services go on, and reconnect when
        it is back)."""
        for service in [s for s in self.services if s.name == "mqtt"]:
            await _stop(service.proc)
            self.services.remove(service)

    async def _create_domains(self) -> None:
        for cfg in self.spec.domains:
            try:
                reply = await self.hv.domains.Create(
                    domains_pb2.CreateDomainRequest(spec=to_domain_spec(cfg)))
            except grpc.aio.AioRpcError as err:
                raise LabError(f"cannot create {cfg.name}: {err.details()}") from None
            self.domids[cfg.name] = reply.info.domid
            self.progress(f"created {cfg.name} as d{reply.info.domid} ({len(cfg.vifs)} vif(s))")

    async def vifs(self, domids=None) -> list[domains_pb2.VifInfo]:
        """The vifs of the lab's domains (or of those `domids`), in order."""
        out = []
        for domid in (self.domids.values() if domids is None else domids):
            out.extend((await self.hv.domains.NetworkList(common_pb2.DomainRef(domid=domid))).vifs)
        return out

    async def vifs_until_ready(self, ready: dict[int, list]) -> list[domains_pb2.VifInfo]:
        """Every vif, asking the hypervisor only about the domains not yet in
        `ready` (domid -> its vifs, all Connected), which this fills in: a
        look at N domains while they boot costs the calls of those still
        booting, not N each time."""
        out = []
        for domid in self.domids.values():
            vifs = ready.get(domid)
            if vifs is None:
                vifs = await self.vifs([domid])
                if vifs and all(vif_ready(v) for v in vifs):
                    ready[domid] = vifs
            out.extend(vifs)
        return out

    async def _wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        settled: dict[int, list] = {}
        while True:
            vifs = await self.vifs_until_ready(settled)
            ready = [v for v in vifs if vif_ready(v)]
            failed = [v for v in vifs if v.hotplug_status == "error"]
            if failed:
                v = failed[0]
                error = await self._xs_read(f"{v.backend_path}/hotplug-error")
                raise LabError(f"{v.vifname}: hotplug failed: {error}")
            if len(ready) != last:
                self.progress(f"vifs connected: {len(ready)}/{len(vifs)}")
                last = len(ready)
            if len(ready) == len(vifs) and await self._agents_published():
                return
            for service in self.services:
                if service.proc.returncode is not None:
                    raise LabError(f"{service.name} exited with {service.proc.returncode}:\n" + _tail(service.log))
            if time.monotonic() > deadline:
                stuck = ", ".join(f"{v.vifname} (front {v.state}, back {v.backend_state}, "
                                  f"hotplug {v.hotplug_status or '-'})" for v in vifs if v not in ready)
                raise LabError(f"timed out after {timeout:g}s waiting for vifs: {stuck}")
            await asyncio.sleep(0.1)

    async def _shape(self, timeout: float) -> None:
        """The lab file's netems (``Shaping``), set as `xenlab tc qdisc
        replace` sets them (so again after a service restarted, over what
        survived), once Domain-0's agent (which owns the vifs) is up."""
        if not self.spec.shaping:
            return
        deadline = time.monotonic() + timeout
        while not await self._xs_read(agent_key(0)):
            if time.monotonic() > deadline:
                raise LabError("timed out waiting for Domain-0's agent, to set the lab's netems")
            await asyncio.sleep(0.1)
        for dev, args in shaping_devices(self.spec, self.domids):
            try:
                await shaping.qdisc(self.hv, "replace", dev, list(args))
            except grpc.aio.AioRpcError as err:
                raise LabError(f"netem on {dev}: {err.details()}") from None
            self.progress(f"tc qdisc replace dev {dev} root netem {' '.join(args)}")

    async def _agents_published(self) -> bool:
        """Every domU's guest agent has published its address (it does so
        at the end of boot, which may come after its vifs connect)."""
        if self.spec.launcher == "none":
            return True                 # no domain processes, so no agents
        for domid in self.domids.values():
            if not await self._xs_read(f"/local/domain/{domid}/data/agent"):
                return False
        return True

    def _write_state(self, phase: str, first: bool = False) -> None:
        """lab.json: the lab, its phase (starting, up) and its processes,
        the runner's ("runner": this one) and each service's."""
        if first:
            self._runner = ProcessRecord.of()
            self._started = time.time()
        self._state = phase
        processes = {"runner": self._runner.to_json()}
        processes.update({s.name: s.record.to_json() for s in self.services if s.record})
        state = {"name": self.spec.name, "state": phase, "source": self.spec.source,
                 "pid": self._runner.pid, "processes": processes,
                 "domains": self.domids, "started": self._started}
        if self.events is not None and self.events.broker is not None:
            state["mqtt"] = str(self.events.broker)
        self.run.write_state(state, first=first)

    async def bridge_client(self, name: str) -> BridgeStub:
        """A client of a bridge of this lab (close it, or ``async with``)."""
        try:
            return await bridge_for(self.hv, name)
        except NoBridgeError as err:
            raise LabError(str(err)) from None

    # -- summary ---------------------------------------------------------------
    async def summary(self) -> str:
        domains = {d.domid: d for d in (await self.hv.domains.List(common_pb2.Empty())).domains}
        rows = [("Domain", "ID", "Mem", "Interface", "MAC", "IP", "vif", "Bridge", "State")]
        for vif in await self.vifs():
            dom = domains.get(vif.domid)
            rows.append((dom.name if dom else "?", str(vif.domid), str(dom.memory_kb // 1024 if dom else 0),
                         f"eth{vif.devid}", vif.mac, vif.ip or "-", vif.vifname, vif.bridge,
                         "connected" if vif.state == CONNECTED == vif.backend_state else f"{vif.state}/{vif.backend_state}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    # -- down ----------------------------------------------------------------------
    async def down(self) -> None:
        """Destroy the domUs, then stop dom0, the bridges and the hypervisor."""
        self._stopping = True
        if self._dom0_watch is not None:
            self._dom0_watch.cancel()
            await asyncio.gather(self._dom0_watch, return_exceptions=True)
            self._dom0_watch = None
        if self.hv is not None:
            for name, domid in list(self.domids.items()):
                try:
                    await self.hv.domains.Destroy(common_pb2.DomainRef(domid=domid))
                except grpc.aio.AioRpcError:
                    pass
            await self.hv.close()
            self.hv = None
        for service in reversed(self.services):
            await _stop(service.proc)
        self.services.clear()
        if self._claimed:
            self.run.remove(LAB)
            self._claimed = False

    async def discard(self) -> None:
        """down(), and remove what up made in the rundir: the lab's files,
        sockets and logs, and the rundir itself if up made it."""
        claimed = self._claimed
        await self.down()
        if claimed:
            self.run.clean(keep=self.keep, remove_dir=self._made_rundir)


def reclaim(run: Rundir, keep: tuple[str, ...] = (), progress=print) -> None:
    """Ready a rundir for a new lab: refused while anything recorded there
    runs; what a lab left (its logs; all of it, with its memory segments,
    when its processes were killed) is removed, saying so for the latter.
    Under run.lock()."""
    try:
        survey = run.survey()
    except RundirError as err:
        raise LabError(str(err)) from None
    if survey.running:
        raise LabError(f"{survey.describe()} is already running in {run.path}: stop it with "
                       f"`xenlab down --rundir {run.path}`")
    if survey.unrecorded_address:
        raise LabError(f"{run.address_file} names a hypervisor no xenlab process recorded "
                       f"(written by hand, or by an older xenlab): use another --rundir, or "
                       f"remove it if nothing runs there")
    cleaned = run.clean(keep=keep)
    if survey.stale:
        progress(f"cleaned up after {survey.describe()} in {run.path}, whose processes were "
                 f"gone (killed?): {cleaned}")


async def _stop(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await eventloop.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
