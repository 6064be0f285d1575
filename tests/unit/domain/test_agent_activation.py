"""The guest agent's socket activation (xenlab.domain.agent_activation):
dormant on a plain socket, woken by a connection, dormant again after its
idle period, and no client ever refused on the way."""
from __future__ import annotations

import asyncio
import os
import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xenlab.domain.agent_activation import OnDemandServer
from xenlab.rpc import CHANNEL_OPTIONS, start_server
from xenlab.testing import eventually

IDLE = 0.3


async def serve(address: str, counter, options) -> grpc.aio.Server:
    server, _ = await start_server(address, [], [], interceptors=[counter],
                                   options=[*CHANNEL_OPTIONS, *options])
    return server


@pytest.fixture
async def agent(tmp_path):
    server = OnDemandServer(str(tmp_path / "agent-d7.sock"), serve, idle=IDLE)
    await server.start()
    yield server
    await server.stop(0)


async def check(path: str) -> int:
    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                 timeout=5)
        return reply.status


async def test_it_sleeps_until_a_call_comes_and_answers_that_call(agent):
    mode = os.stat(agent.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert not agent.live and agent.wakes == 0
    assert await check(agent.path) == health_pb2.HealthCheckResponse.SERVING
    assert agent.live and agent.wakes == 1
    assert stat.S_IMODE(os.stat(agent.path).st_mode) == 0o600     # gRPC's own socket now


async def test_after_its_idle_period_it_sleeps_and_a_channel_it_left_works_again(agent):
    async with grpc.aio.insecure_channel(f"unix:{agent.path}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        await eventually(lambda: not agent.live, "the agent to go dormant", timeout=5)
        assert os.path.exists(agent.path)
        # the same channel: its connection went with the server; the next
        # call connects again, wakes the agent and is answered
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert agent.wakes == 2


async def test_a_call_in_flight_keeps_it_awake(agent):
    async with grpc.aio.insecure_channel(f"unix:{agent.path}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await asyncio.sleep(IDLE * 4)
        assert agent.live and agent.wakes == 1
        assert watch.done() is False                # never cut
        watch.cancel()
    await eventually(lambda: not agent.live, "the agent to go dormant once the call ended",
                     timeout=5)


async def test_many_clients_at_once_wake_it_once_and_are_all_answered(agent):
    statuses = await asyncio.gather(*(check(agent.path) for _ in range(20)))
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 20
    assert agent.wakes == 1


async def test_clients_arriving_while_it_falls_asleep_are_answered(agent):
    for _ in range(5):
        await check(agent.path)
        await asyncio.sleep(IDLE * 0.95)        # around the moment it goes dormant
        assert await check(agent.path) == health_pb2.HealthCheckResponse.SERVING


async def test_once_stopped_nothing_listens(tmp_path):
    agent = OnDemandServer(str(tmp_path / "agent-d8.sock"), serve, idle=IDLE)
    await agent.start()
    await check(agent.path)
    await agent.stop(0)
    assert not os.path.exists(agent.path)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with grpc.aio.insecure_channel(f"unix:{agent.path}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=2)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_a_channel_kept_open_across_many_sleeps_never_sees_an_error(agent):
    """Calls spaced around the idle period, on one channel: each lands
    before, while or after the agent falls asleep, and all are answered."""
    async with grpc.aio.insecure_channel(f"unix:{agent.path}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for i in range(16):
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # idle period and drain: 0.45 s; the calls come 0.24 to 0.56 s apart
            await asyncio.sleep(IDLE * (0.8 + 0.15 * (i % 8)))
    assert agent.wakes > 1


async def test_stop_waiting_for_a_slow_wake_can_itself_be_cancelled(tmp_path):
    """A wake that never finishes (a server that does not start) keeps
    stop() waiting; cancelling whoever called stop() ends that wait (it
    is not taken for the wake's own ending)."""
    started = asyncio.Event()

    async def stuck(address, counter, options):
        started.set()
        await asyncio.Event().wait()

    agent = OnDemandServer(str(tmp_path / "agent-d9.sock"), stuck, idle=IDLE)
    await agent.start()
    client = asyncio.get_running_loop().create_task(check(agent.path))
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.get_running_loop().create_task(agent.stop(0))
    await asyncio.sleep(0.05)
    assert not stopping.done()
    stopping.cancel()
    await asyncio.wait([stopping], timeout=5)
    assert stopping.cancelled()
    client.cancel()
    await asyncio.gather(client, return_exceptions=True)
