"""pytest fixtures shipped with xenlab, for our tests and for users'.

The plugin is registered through the ``pytest11`` entry point, so any
project that installs xenlab can use these fixtures:

    async def test_two_domains(hypervisor):
        domid, client = await hypervisor.create_domain("web")
        ...

* ``hypervisor``: an in-process hypervisor on a unix socket; domains are
  created without processes (launcher "none") unless asked, and each comes
  with a client that acts as that domain.
* ``check_invariants(lab.hv)``: what must hold in the hypervisor's cores
  whatever the guests did (xenlab.testing_invariants); the hostile peers for
  fuzzing drivers are in xenlab.testing_hostile.

A project needs no configuration to use them: an async test that uses one
of these fixtures runs under pytest-asyncio in an event loop of its own
(loop scope "function", the scope of the fixtures), marked or not, and a
project that has not chosen a default loop scope for its async fixtures gets
"function" too, without pytest-asyncio's warning that it is unset.
"""
from __future__ import annotations

import asyncio
import inspect
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from xenlab.osutil import exec_only_forks

exec_only_forks()       # labs fork their services from the test process: before grpc loads

from xenlab.client import HypervisorClient  # noqa: E402
from xenlab.hypervisor.config import HypervisorConfig
from xenlab.proto import domains_pb2
from xenlab.testing_invariants import check_invariants, invariant_violations  # noqa: F401


LOOP_SCOPE = "function"     # one event loop per test: the fixtures' processes are per test too
# The fixtures of this plugin: an async test using any of them (directly or
# through a fixture of its own) runs under pytest-asyncio without a marker.
FIXTURES = frozenset({"hypervisor", "hypervisor_process", "lab_factory", "demo_lab"})


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pytest-asyncio warns at every run of a project that has not chosen the
    # loop scope of its async fixtures, and will default to "function": a
    # project that has not (a fresh one, with no ini file) gets it now. No
    # public API sets an ini value; the cache getini reads is pytest's own
    # since pytest 2, and tests/integration/test_harness_example.py runs a
    # fresh project to notice if that changes.
    if config.pluginmanager.hasplugin("asyncio") and \
            config.getini("asyncio_default_fixture_loop_scope") is None:
        config._inicache["asyncio_default_fixture_loop_scope"] = LOOP_SCOPE


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Mark the async tests that use this plugin's fixtures as asyncio tests,
    before pytest-asyncio (an outer wrapper of this hook) looks for the mark:
    in its strict mode, the default, it runs only marked tests."""
    result = yield
    items = result if isinstance(result, list) else [result] if result is not None else []
    for item in items:
        if (isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj)
                and item.get_closest_marker("asyncio") is None
                and FIXTURES & set(item.fixturenames)):
            item.add_marker(pytest.mark.asyncio(loop_scope=LOOP_SCOPE))
    return result


# grpc-core's grpc.server.max_pending_requests is 1000: past it, a loaded
# server cancels the calls it has not picked up yet (CANCELLED). A test
# that fills a table by RPC keeps fewer than that in flight.
IN_FLIGHT = 100


async def call_each(call, items, in_flight: int = IN_FLIGHT) -> list:
    """The results of ``call(item)`` (an awaitable) for every item, in
    order, with at most ``in_flight`` of them outstanding at once."""
    items = list(items)
    results: list = []
    for start in range(0, len(items), in_flight):
        results += await asyncio.gather(*(call(item) for item in items[start:start + in_flight]))
    return results


def short_tempdir(prefix: str = "xl-") -> Path:
    """A directory whose unix socket paths stay under the 108-byte limit."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class InProcessLab:
    server: object
    address: str
    dom0: HypervisorClient
    rundir: Path
    clients: list = field(default_factory=list)

    @property
    def hv(self):
        return self.server.hv

    @property
    def toolstack(self):
        return self.server.toolstack

    async def create_domain(self, name: str, memory_mb: int = 16, launcher: str = "none",
                            **spec) -> tuple[int, HypervisorClient]:
        """Create a domain as the toolstack would; return its id and a
        client that acts as it."""
        reply = await self.dom0.domains.Create(domains_pb2.CreateDomainRequest(
            spec=domains_pb2.DomainSpec(name=name, memory_mb=memory_mb, launcher=launcher, **spec)))
        client = HypervisorClient.connect(self.address, reply.info.domid, reply.secret)
        self.clients.append(client)
        return reply.info.domid, client

    def client_as(self, domid: int, secret: str) -> HypervisorClient:
        client = HypervisorClient.connect(self.address, domid, secret)
        self.clients.append(client)
        return client


@pytest_asyncio.fixture(loop_scope=LOOP_SCOPE)
async def hypervisor():
    from xenlab.hypervisor.server import HypervisorServer

    rundir = short_tempdir()
    config = HypervisorConfig(address=f"unix:{rundir}/hv.sock", rundir=rundir,
                              total_memory_mb=2048, launcher="none", log_level="DEBUG")
    server = HypervisorServer(config)
    await server.start()
    dom0 = HypervisorClient.connect(server.address, 0, server.hv.dom0_secret)
    lab = InProcessLab(server, server.address, dom0, rundir)
    try:
        yield lab
    finally:
        for client in lab.clients:
            await client.close()
        await dom0.close()
        await server.stop(grace=0.5)
        shutil.rmtree(rundir, ignore_errors=True)


@dataclass
class HypervisorProcess:
    """A hypervisor running as its own process (`xenlab hypervisor`), and the
    CLI pointed at it."""
    proc: object
    rundir: Path
    address: str

    @property
    def env(self) -> dict:
        import os
        return {**os.environ, "XENLAB_RUNDIR": str(self.rundir)}

    def cli(self, *args: str, check: bool = True, timeout: float = 60):
        """Run `xenlab ARGS...` against this hypervisor; a CompletedProcess."""
        import subprocess
        import sys
        result = subprocess.run([sys.executable, "-m", "xenlab.cli.main", *args],
                                capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"xenlab {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def xl(self, *args: str, **kw):
        return self.cli("xl", *args, **kw)

    def dom0(self) -> HypervisorClient:
        from xenlab.rundir import Rundir
        return HypervisorClient.connect(self.address, 0, Rundir(self.rundir).read_dom0_secret())

    def log(self) -> str:
        try:
            return (self.rundir / "logs" / "hypervisor.log").read_text()
        except OSError:
            return ""


def start_hypervisor_process(rundir: Path, launcher: str = "local", memory_mb: int = 4096,
                             timeout: float = 30.0) -> HypervisorProcess:
    import os
    import subprocess
    import sys
    import time
    from xenlab.rundir import Rundir

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
    import signal
    import subprocess
    hp.proc.send_signal(signal.SIGTERM)
    try:
        return hp.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        hp.proc.kill()
        return hp.proc.wait()


@pytest.fixture
def hypervisor_process(request):
    """`xenlab hypervisor` as a separate process with local domain processes.
    Its log is printed when the test fails."""
    rundir = short_tempdir()
    hp = start_hypervisor_process(rundir)
    try:
        yield hp
    finally:
        stop_hypervisor_process(hp)
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print("---- hypervisor log ----\n" + hp.log()[-20000:])
            for console in sorted((rundir / "logs").glob("*.console")):
                print(f"---- {console.name} ----\n" + console.read_text()[-4000:])
        shutil.rmtree(rundir, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


class RunningLab:
    """A lab started by `xenlab.lab.runner.Lab` (real processes), with
    helpers to reach its domains' agents and its bridges."""

    def __init__(self, lab):
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
        from xenlab.agent_client import agent_for
        return await agent_for(self.lab.hv, self.domid(name) if name != "Domain-0" else 0)

    async def bridge(self, name: str = "xenbr0"):
        """A client of a bridge's gRPC API (xenlab.bridge_client.BridgeClient,
        a Bridge stub that owns its channel): close it, or use ``async with``."""
        from xenlab.bridge_client import bridge_for
        return await bridge_for(self.lab.hv, name)

    def logs(self) -> str:
        out = []
        for path in sorted((self.rundir / "logs").glob("*")):
            out.append(f"---- {path.name} ----\n" + path.read_text(errors="replace")[-6000:])
        return "\n".join(out)


def _lab_spec(spec):
    from xenlab.lab.spec import demo_lab, parse_lab
    if spec is None:
        return demo_lab()
    if isinstance(spec, str):
        return parse_lab(spec, "<test lab>")
    return spec


@pytest_asyncio.fixture(loop_scope=LOOP_SCOPE)
async def lab_factory(request):
    """Start labs from a spec (a LabSpec, TOML text, or None for the demo
    lab); every lab is stopped at the end, with its logs printed on failure."""
    from xenlab.lab.runner import Lab

    started: list[RunningLab] = []

    async def start(spec=None, timeout: float = 60.0) -> RunningLab:
        rundir = short_tempdir("xl-lab-")
        running = RunningLab(Lab(_lab_spec(spec), rundir, log_level="DEBUG", progress=lambda s: None))
        started.append(running)
        await running.lab.up(timeout=timeout)
        return running

    try:
        yield start
    finally:
        failed = getattr(request.node, "rep_call", None)
        for running in started:
            if failed is not None and failed.failed:
                print(running.logs())
            await running.lab.down()
            shutil.rmtree(running.rundir, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope=LOOP_SCOPE)
async def demo_lab(lab_factory):
    """The built-in demo lab: web, db and cache (10.0.0.1-3/24) on xenbr0."""
    return await lab_factory()
