"""xenlab.testing's in-process lab: kernels booted in the test's process
with the drivers and guest agent handed to them, and nothing patched
(the two NetLab classes of the tests monkeypatched start_guest_agent to
keep the agent out, and closed kernels through a private method)."""
from __future__ import annotations

import pytest

from xenlab.domain.agent import XENSTORE_KEY, start_guest_agent
from xenlab.domain.xenbus import XenbusDriver
from xenlab.hypervisor.caller import Caller
from xenlab.proto import xenstore_pb2
from xenlab.testing import eventually, in_process_lab

DOM0 = Caller(0, privileged=True)


class ConsoleDriver(XenbusDriver):
    """A frontend driver that records what xenbus hands it."""
    devicetype = "console"

    def __init__(self, kernel):
        self.kernel = kernel
        self.probed: list[str] = []
        self.closed = False

    async def probe(self, path: str) -> None:
        self.probed.append(path)

    async def close(self) -> None:
        self.closed = True


class RecordingAgent:
    def __init__(self):
        self.kernels: list[int] = []
        self.stopped = 0

    async def __call__(self, kernel):
        self.kernels.append(kernel.domid)
        return self

    async def stop(self) -> None:
        self.stopped += 1


def xs(lab, path: str) -> str | None:
    return lab.hv.xenstore.read(DOM0, path).decode() if lab.hv.xenstore.exists(path) else None


async def test_a_kernel_runs_the_drivers_and_agent_it_is_handed(hypervisor):
    agent = RecordingAgent()
    kernel = await hypervisor.boot_domain("web", drivers=lambda k: [ConsoleDriver(k)], agent=agent)
    driver, = kernel.drivers
    assert driver.kernel is kernel and kernel.agent is agent and agent.kernels == [kernel.domid]
    assert hypervisor.kernels == {kernel.domid: kernel}

    device = f"/local/domain/{kernel.domid}/device/console/0"
    await hypervisor.dom0.xenstore.Write(xenstore_pb2.WriteRequest(path=f"{device}/state",
                                                                   value=b"1"))
    await eventually(lambda: driver.probed, "the console driver's probe")
    assert driver.probed == [device]

    await hypervisor.close_kernel(kernel)
    assert driver.closed and agent.stopped == 1 and hypervisor.kernels == {}


async def test_without_an_agent_nothing_is_served_or_published(hypervisor):
    kernel = await hypervisor.boot_domain("quiet")
    assert kernel.agent is None and kernel.drivers == []
    assert xs(hypervisor, f"/local/domain/{kernel.domid}/data/kernel") == "xenlab-domain"
    assert xs(hypervisor, f"/local/domain/{kernel.domid}/{XENSTORE_KEY}") is None


async def test_the_real_agent_when_asked_is_published_and_withdrawn(hypervisor):
    kernel = await hypervisor.boot_domain("served", agent=start_guest_agent)
    key = f"/local/domain/{kernel.domid}/{XENSTORE_KEY}"
    assert xs(hypervisor, key).startswith("unix:")
    await hypervisor.close_kernel(kernel)
    assert xs(hypervisor, key) is None


async def test_a_kernel_that_fails_to_boot_is_closed_and_not_kept(hypervisor):
    class Refused(Exception):
        pass

    async def refusing_agent(kernel):
        raise Refused()
    with pytest.raises(Refused):
        await hypervisor.boot_domain("refused", drivers=lambda k: [ConsoleDriver(k)],
                                     agent=refusing_agent)
    assert hypervisor.kernels == {}


async def test_the_lab_without_pytest_closes_its_kernels_and_rundir():
    async with in_process_lab() as lab:
        dom0 = await lab.boot_dom0(drivers=lambda k: [ConsoleDriver(k)])
        web = await lab.boot_domain("web", drivers=lambda k: [ConsoleDriver(k)])
        drivers = dom0.drivers + web.drivers
        rundir = lab.rundir
        assert (rundir / "hv.sock").exists()
    assert all(d.closed for d in drivers) and lab.kernels == {}
    assert not rundir.exists()
