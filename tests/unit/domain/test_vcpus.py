"""A domain's vCPUs as threads: named for the host, parked offline, busy on
request (the guest agent's Spin)."""
from __future__ import annotations

import asyncio
import os

import pytest

from xenlab.domain.agent import GuestAgentServicer
from xenlab.domain.vcpus import Vcpus
from xenlab.launchers import tasks
from xenlab.proto import agent_pb2
from xenlab.testing import eventually


def thread_named(name: str):
    return next((t for t in tasks.read_tasks(os.getpid()) if t.name == name), None)


async def test_vcpu_threads_carry_their_names_and_spin_while_asked():
    vcpus = Vcpus(3)
    vcpus.start()
    try:
        await eventually(lambda: thread_named("vcpu1") and thread_named("vcpu2"), "named threads")
        before = thread_named("vcpu1").time
        assert vcpus.spin([1], 0.3) == [1]
        await eventually(lambda: thread_named("vcpu1").time > before, "vCPU 1 burning CPU")
    finally:
        vcpus.stop()


async def test_an_offline_vcpu_takes_no_work_and_vcpu0_stays_online():
    vcpus = Vcpus(2)
    vcpus.start()
    try:
        vcpus.set_online(1, False)
        vcpus.set_online(0, False)          # the boot CPU never goes down
        assert vcpus.online == {0} and vcpus.spin([0, 1], 0.05) == [0]
        vcpus.set_online(1, True)
        assert vcpus.spin([1], 0.05) == [1]
        vcpus.set_online(7, True)           # no such vCPU: nothing happens
    finally:
        vcpus.stop()


async def test_vcpu0_spins_in_slices_and_the_loop_keeps_running():
    vcpus = Vcpus(1)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)
    task = asyncio.get_running_loop().create_task(ticker())
    try:
        vcpus.spin([0], 0.2)
        await asyncio.sleep(0.25)
        assert ticks > 10                    # the event loop ran between the slices
    finally:
        task.cancel()
        vcpus.stop()


class Aborted(Exception):
    pass


class Context:
    async def abort(self, code, details, trailers=None):
        raise Aborted(code, details)


@pytest.mark.parametrize("request_, says", [
    (agent_pb2.SpinRequest(vcpus=[5], seconds=1), "vCPU 5 does not exist"),
    (agent_pb2.SpinRequest(seconds=-1), "seconds -1"),
    (agent_pb2.SpinRequest(seconds=3601), "seconds 3601"),
])
async def test_spin_refuses_what_it_cannot_do(request_, says):
    servicer = GuestAgentServicer(net=None, domid=1, vcpus=Vcpus(2))
    with pytest.raises(Aborted) as err:
        await servicer.Spin(request_, Context())
    assert says in err.value.args[1]


async def test_spin_without_vcpu_threads_is_not_supported():
    with pytest.raises(Aborted) as err:
        await GuestAgentServicer(net=None, domid=1).Spin(agent_pb2.SpinRequest(), Context())
    assert "no vCPU threads" in err.value.args[1]


async def test_spin_of_every_vcpu_by_default():
    vcpus = Vcpus(2)
    vcpus.start()
    try:
        reply = await GuestAgentServicer(net=None, domid=1, vcpus=vcpus).Spin(
            agent_pb2.SpinRequest(seconds=0.05), Context())
        assert list(reply.vcpus) == [0, 1]
    finally:
        vcpus.stop()
