"""`xenlab up`: run a lab as real processes, each service its own process.

Order (each waits for the previous to be ready): the hypervisor, the bridge
service(s), Domain-0's kernel with netback, then the domUs through the
toolstack; then it waits until every vif is Connected on both ends and
hotplugged, and prints a summary. `down` undoes it in reverse.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from xenlab.client import HypervisorClient, Rundir
from xenlab.lab.spec import LabSpec
from xenlab.proto import common_pb2, domains_pb2, xenstore_pb2
from xenlab.xen import abi
from xenlab.xen.xlcfg import to_domain_spec

log = logging.getLogger(__name__)

CONNECTED = int(abi.XenbusState.Connected)


class LabError(Exception):
    """The lab could not be brought up or down; the message says why."""


@dataclass
class Service:
    name: str
    proc: asyncio.subprocess.Process
    log: Path


@dataclass
class Lab:
    spec: LabSpec
    rundir: Path
    log_level: str = "INFO"
    progress: object = print
    services: list[Service] = field(default_factory=list)
    hv: HypervisorClient | None = None
    domids: dict[str, int] = field(default_factory=dict)

    @property
    def run(self) -> Rundir:
        return Rundir(self.rundir)

    @property
    def state_file(self) -> Path:
        return self.rundir / "lab.json"

    # -- up ----------------------------------------------------------------------
    async def up(self, timeout: float = 120.0) -> None:
        self._refuse_if_running()
        self.rundir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.run.logs.mkdir(exist_ok=True)
        started = time.monotonic()
        try:
            await self._start_hypervisor()
            await self._start_bridges()
            await self._start_dom0()
            await self._create_domains()
            await self._wait_connected(timeout)
        except BaseException:
            await self.down()
            raise
        self._write_state()
        self.progress(f"lab {self.spec.name} is up in {time.monotonic() - started:.1f}s")

    def _refuse_if_running(self) -> None:
        state = read_state(self.rundir)
        if state and _alive(state.get("pid", 0)):
            raise LabError(f"a lab ({state.get('name')}) is already running in {self.rundir} "
                           f"as process {state['pid']}: stop it with `xenlab down`")
        if self.run.address_file.exists():
            raise LabError(f"a hypervisor is already running with rundir {self.rundir} "
                           f"(stop it, or use another --rundir)")

    async def _spawn(self, name: str, *args: str) -> Service:
        logfile = self.run.logs / f"{name}.log"
        with open(logfile, "ab", buffering=0) as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "xenlab.cli.main", *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        service = Service(name, proc, logfile)
        self.services.append(service)
        return service

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
        listen = self.spec.listen or f"unix:{self.rundir}/hv.sock"
        self.progress(f"starting the hypervisor on {listen}")
        hv = await self._spawn("hypervisor", "hypervisor", "--listen", listen, "--rundir", str(self.rundir),
                               "--memory", str(self.spec.memory_mb), "--launcher", self.spec.launcher,
                               "--log-level", self.log_level, "--die-with-parent")

        async def ready():
            return self.run.address_file.exists()
        await self._wait(hv, ready, "the hypervisor to listen")
        self.hv = HypervisorClient.connect(self.run.read_address(), 0, self.run.read_dom0_secret())

    async def _xs_read(self, path: str) -> str | None:
        try:
            return (await self.hv.xenstore.Read(xenstore_pb2.PathRequest(path=path))).value.decode()
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def _start_bridges(self) -> None:
        args = ["bridge-service", "--rundir", str(self.rundir), "--log-level", self.log_level,
                "--die-with-parent"]
        for bridge in self.spec.bridges:
            args += ["--bridge", bridge.name]
            if bridge.uplink:
                args += ["--uplink", f"{bridge.name}={bridge.uplink}"]
        names = ", ".join(b.name for b in self.spec.bridges)
        self.progress(f"starting the bridge service ({names})")
        service = await self._spawn("bridge", *args)

        async def ready():
            for bridge in self.spec.bridges:
                if not await self._xs_read(f"/tool/xenlab/bridges/{bridge.name}/address"):
                    return False
            return True
        await self._wait(service, ready, f"bridge(s) {names} to register")

    async def _start_dom0(self) -> None:
        self.progress("starting Domain-0's kernel (netback)")
        service = await self._spawn("dom0", "dom0", "--rundir", str(self.rundir),
                                    "--log-level", self.log_level, "--die-with-parent")

        async def ready():
            return await self._xs_read("/local/domain/0/data/netback") == "ready"
        await self._wait(service, ready, "netback in Domain-0")

    async def _create_domains(self) -> None:
        for cfg in self.spec.domains:
            reply = await self.hv.domains.Create(domains_pb2.CreateDomainRequest(spec=to_domain_spec(cfg)))
            self.domids[cfg.name] = reply.info.domid
            self.progress(f"created {cfg.name} as d{reply.info.domid} ({len(cfg.vifs)} vif(s))")

    async def vifs(self) -> list[domains_pb2.VifInfo]:
        out = []
        for name, domid in self.domids.items():
            out.extend((await self.hv.domains.NetworkList(common_pb2.DomainRef(domid=domid))).vifs)
        return out

    async def _wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while True:
            vifs = await self.vifs()
            ready = [v for v in vifs if v.state == CONNECTED and v.backend_state == CONNECTED
                     and v.hotplug_status == "connected"]
            failed = [v for v in vifs if v.hotplug_status == "error"]
            if failed:
                v = failed[0]
                error = await self._xs_read(f"{v.backend_path}/hotplug-error")
                raise LabError(f"{v.vifname}: hotplug failed: {error}")
            if len(ready) != last:
                self.progress(f"vifs connected: {len(ready)}/{len(vifs)}")
                last = len(ready)
            if len(ready) == len(vifs):
                return
            for service in self.services:
                if service.proc.returncode is not None:
                    raise LabError(f"{service.name} exited with {service.proc.returncode}:\n" + _tail(service.log))
            if time.monotonic() > deadline:
                stuck = ", ".join(f"{v.vifname} (front {v.state}, back {v.backend_state}, "
                                  f"hotplug {v.hotplug_status or '-'})" for v in vifs if v not in ready)
                raise LabError(f"timed out after {timeout:g}s waiting for vifs: {stuck}")
            await asyncio.sleep(0.1)

    def _write_state(self) -> None:
        state = {"name": self.spec.name, "pid": os.getpid(), "source": self.spec.source,
                 "services": {s.name: s.proc.pid for s in self.services},
                 "domains": self.domids, "started": time.time()}
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    async def bridge_client(self, name: str):
        """A Bridge gRPC stub for a bridge of this lab, and its channel to close."""
        from xenlab.proto import bridge_pb2_grpc
        from xenlab.rpc import CHANNEL_OPTIONS
        address = await self._xs_read(f"/tool/xenlab/bridges/{name}/grpc")
        if not address:
            raise LabError(f"bridge {name} has not registered its gRPC address")
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return bridge_pb2_grpc.BridgeStub(channel), channel

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
        self.state_file.unlink(missing_ok=True)


async def _stop(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(rundir: Path) -> dict | None:
    try:
        return json.loads((rundir / "lab.json").read_text())
    except (OSError, ValueError):
        return None
