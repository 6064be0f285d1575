"""The example from the README's "Testing your own lab" section, kept
passing: a user's test of a two-domain lab with the shipped fixtures."""
import pytest

from xenlab.proto import agent_pb2

pytestmark = pytest.mark.integration

LAB = """
[[domain]]
name = "client"
memory = 32
vif = ["ip=192.168.50.10/24"]

[[domain]]
name = "server"
memory = 32
vif = ["ip=192.168.50.20/24"]
"""


async def test_client_reaches_server(lab_factory):
    lab = await lab_factory(LAB)
    client = await lab.agent("client")
    try:
        ping = await client.Ping(agent_pb2.PingRequest(dst="192.168.50.20", count=3, interval=0.05, timeout=10))
        assert ping.received == 3
        echo = await client.SendUdp(agent_pb2.SendUdpRequest(
            dst="192.168.50.20", dport=7, payload=b"hello", wait_reply=True, timeout=10))
        assert echo.reply == b"hello"
    finally:
        await client.close()
