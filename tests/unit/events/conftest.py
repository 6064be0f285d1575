"""A real MQTT broker on a free loopback port, that a test can stop and
start again on the same port: amqtt in this process, or mosquitto as a
process when it is installed."""
import asyncio
import subprocess
import sys
import time

import pytest
import pytest_asyncio

from xenlab.events.broker import EmbeddedBroker, broker_ready, mosquitto_binary
from xenlab.events.config import BrokerAddress
from xenlab.osutil import free_port


@pytest.fixture
def closed_port() -> int:
    """A TCP port nothing listens on (free_port takes it below the kernel's
    ephemeral range, where a connect cannot be given it as its own source
    port and connect to itself)."""
    return free_port()


class MosquittoBroker:
    def __init__(self, port: int):
        self.address = BrokerAddress("127.0.0.1", port)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xenlab.cli.main", "mqtt-broker", "--engine", "mosquitto",
             "--listen", f"127.0.0.1:{self.address.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not await broker_ready(self.address):
            assert self.proc.poll() is None, "mosquitto exited"
            assert time.monotonic() < deadline, "mosquitto did not start"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest_asyncio.fixture(params=["amqtt", "mosquitto"])
async def broker(request):
    if request.param == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    b = EmbeddedBroker(port=free_port()) if request.param == "amqtt" else MosquittoBroker(free_port())
    await b.start()
    try:
        yield b
    finally:
        if b.running:
            await b.stop()
