"""The pytest plugin shipped with xenlab (the ``pytest11`` entry point), for
our tests and for users'. The only module of xenlab that imports pytest:
everything it builds on is in ``xenlab.testing``, usable without it.

    async def test_two_domains(hypervisor):
        domid, client = await hypervisor.create_domain("web")
        ...

* ``hypervisor``: an in-process lab (xenlab.testing.lab.InProcessLab): a
  hypervisor on a unix socket, domains created without processes
  (launcher "none") unless asked, each with a client that acts as that
  domain, and kernels booted in the test's process with the drivers and
  agent the test injects.
* ``hypervisor_process``: `xenlab hypervisor` as a process of its own
  (xenlab.testing.processes.HypervisorProcess), its log printed on failure.
* ``lab_factory`` / ``demo_lab``: whole labs of real processes
  (xenlab.testing.processes.RunningLab), their logs printed on failure.

A project needs no configuration to use them: an async test that uses one
of these fixtures runs under pytest-asyncio in an event loop of its own
(loop scope "function", the scope of the fixtures), marked or not, and a
project that has not chosen a default loop scope for its async fixtures gets
"function" too, without pytest-asyncio's warning that it is unset.
"""
from __future__ import annotations

import inspect
import shutil

import pytest
import pytest_asyncio

from xenlab.lab.runner import Lab
from xenlab.testing import (HypervisorProcess, RunningLab, in_process_lab, short_tempdir,
                            start_hypervisor_process, stop_hypervisor_process)
from xenlab.testing.processes import lab_spec


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


@pytest_asyncio.fixture(loop_scope=LOOP_SCOPE)
async def hypervisor():
    """An in-process lab (xenlab.testing.InProcessLab), closed after the test."""
    async with in_process_lab() as lab:
        yield lab


@pytest.fixture
def hypervisor_process(request):
    """`xenlab hypervisor` as a separate process with local domain processes.
    Its log is printed when the test fails."""
    rundir = short_tempdir()
    hp: HypervisorProcess = start_hypervisor_process(rundir)
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


@pytest_asyncio.fixture(loop_scope=LOOP_SCOPE)
async def lab_factory(request):
    """Start labs from a spec (a LabSpec, TOML text, or None for the demo
    lab); every lab is stopped at the end, with its logs printed on failure."""
    started: list[RunningLab] = []

    async def start(spec=None, timeout: float = 60.0) -> RunningLab:
        rundir = short_tempdir("xl-lab-")
        running = RunningLab(Lab(lab_spec(spec), rundir, log_level="DEBUG", progress=lambda s: None))
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
