"""Labs of real processes: a hypervisor run as `xenlab hypervisor` with the
CLI pointed at it, and a whole lab started by xenlab.lab.runner.Lab (what
`xenlab up` runs), with its logs at hand for a failure report."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from xenlab.agent_client import agent_for
from xenlab.bridge.client import bridge_for
from xenlab.client import HypervisorClient
from xenlab.lab.runner import Lab
from xenlab.lab.spec import LabSpec, demo_lab, parse_lab
from xenlab.rundir import Rundir


@dataclass
class HypervisorProcess:
    """A hypervisor running as its own process (`xenlab hypervisor`), and the
    CLI pointed at it."""
    proc: subprocess.Popen
    rundir: Path
    address: str

    @property
    def env(self) -> dict:
        return {**os.environ, "XENLAB_RUNDIR": str(self.rundir)}

    def cli(self, *args: str, check: bool = True, timeout: float = 60):
        """Run `xenlab ARGS...` against this hypervisor; a CompletedProcess."""
        result = subprocess.run([sys.executable, "-m", "xenlab.cli.main", *args],
                                capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"xenlab {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def xl(self, *args: str, **kw):
        return self.cli("xl", *args, **kw)

    def dom0(self) -> HypervisorClient:
        return HypervisorClient.connect(self.address, 0, Rundir(self.rundir).read_dom0_secret())

    def log(self) -> str:
        try:
            return (self.rundir / "logs" / "hypervisor.log").read_text()
        except OSError:
            return ""


def start_hypervisor_process(rundir: Path, launcher: str = "local", memory_mb: int = 4096,
                             timeout: float = 30.0) -> HypervisorProcess:
    """`xenlab hypervisor` in ``rundir``, once it has published its address."""
    run = Rundir(rundir)
    run.create()
    logfile = run.open_log("hypervisor.log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xenlab.cli.main", "hypervisor", "--listen", f"unix:{rundir}/hv.sock",
         "--rundir", str(rundir), "--launcher", launcher, "--memory", str(memory_mb),
         "--log-level", "DEBUG"],
        stdout=logfile, stderr=subprocess.STDOUT)
    os.close(logfile)
    hp = HypervisorProcess(proc, rundir, "")
    deadline = time.monotonic() + timeout
    while (address := run.address_ready()) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the hypervisor did not start:\n" + hp.log())
        time.sleep(0.05)
    hp.address = address
    return hp


def stop_hypervisor_process(hp: HypervisorProcess, timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; its exit status."""
    hp.proc.send_signal(signal.SIGTERM)
    try:
        return hp.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        hp.proc.kill()
        return hp.proc.wait()


class RunningLab:
    """A lab started by `xenlab.lab.runner.Lab` (real processes), with
    helpers to reach its domains' agents and its bridges."""

    def __init__(self, lab: Lab):
        self.lab = lab

    @property
    def hv(self) -> HypervisorClient:
        return self.lab.hv

    @property
    def rundir(self) -> Path:
        return self.lab.rundir

    def domid(self, name: str) -> int:
        return self.lab.domids[name]

    async def agent(self, name: str):
        return await agent_for(self.lab.hv, self.domid(name) if name != "Domain-0" else 0)

    async def bridge(self, name: str = "xenbr0"):
        """A client of a bridge's gRPC API (xenlab.bridge.client.BridgeStub,
        a Bridge stub that owns its channel): close it, or use ``async with``."""
        return await bridge_for(self.lab.hv, name)

    def logs(self) -> str:
        out = []
        for path in sorted((self.rundir / "logs").glob("*")):
            out.append(f"---- {path.name} ----\n" + path.read_text(errors="replace")[-6000:])
        return "\n".join(out)


def lab_spec(spec: LabSpec | str | None) -> LabSpec:
    """A LabSpec from a LabSpec, TOML text, or None for the demo lab."""
    if spec is None:
        return demo_lab()
    if isinstance(spec, str):
        return parse_lab(spec, "<test lab>")
    return spec
