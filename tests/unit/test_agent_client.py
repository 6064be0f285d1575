"""The client side of a guest agent: a call its socket-activated server
dropped unanswered is made again; a call it refused is not."""
from __future__ import annotations

import grpc
import pytest

from xenlab.agent_client import AGENT_TOKEN_MD, AgentStub, agent_channel
from xenlab.proto import agent_pb2, agent_pb2_grpc
from xenlab.rpc import start_server


class Flaky(agent_pb2_grpc.GuestAgentServicer):
    """Fails the first ``failures`` calls with ``code``, then answers."""

    def __init__(self, failures: int, code: grpc.StatusCode):
        self.failures = failures
        self.code = code
        self.attempts = 0
        self.tokens: list[str] = []

    async def InterfaceStats(self, request, context):
        self.attempts += 1
        self.tokens.append(dict(context.invocation_metadata()).get(AGENT_TOKEN_MD, ""))
        if self.attempts <= self.failures:
            await context.abort(self.code, f"attempt {self.attempts} dropped")
        return agent_pb2.StatsReply()


@pytest.fixture
async def serve(tmp_path):
    servers = []

    async def start(servicer: Flaky) -> AgentStub:
        address = f"unix:{tmp_path}/agent-d3.sock"
        server, _ = await start_server(address, [lambda s: agent_pb2_grpc.add_GuestAgentServicer_to_server(
            servicer, s)], ["xenlab.proto.GuestAgent"])
        servers.append(server)
        return AgentStub(agent_channel(address, "secret"), address)

    yield start
    for server in servers:
        await server.stop(None)


async def test_a_call_dropped_unavailable_is_made_again_with_its_token(serve):
    servicer = Flaky(2, grpc.StatusCode.UNAVAILABLE)
    async with await serve(servicer) as agent:
        await agent.InterfaceStats(agent_pb2.StatsRequest(), timeout=10)
    assert servicer.attempts == 3
    assert servicer.tokens == ["secret"] * 3


async def test_an_agent_that_stays_unavailable_fails_the_call_after_a_few_attempts(serve):
    servicer = Flaky(100, grpc.StatusCode.UNAVAILABLE)
    async with await serve(servicer) as agent:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent.InterfaceStats(agent_pb2.StatsRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts == 4


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.PERMISSION_DENIED])
async def test_a_call_the_agent_refused_is_not_made_again(serve, code):
    servicer = Flaky(1, code)
    async with await serve(servicer) as agent:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent.InterfaceStats(agent_pb2.StatsRequest(), timeout=10)
    assert err.value.code() == code and servicer.attempts == 1
