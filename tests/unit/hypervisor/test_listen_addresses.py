"""`--listen` given more than once: the first address is the one the rundir
publishes (the swarm stack gives the rundir's unix socket, which the bridge,
Domain-0 and the web view in their own containers reach through the shared
volume), the others are served as well (the node's TCP port for the host's
toolstack). An address that cannot be served stops the start, saying which."""
from __future__ import annotations

import argparse
import shutil
import socket

import pytest

from xenlab.client import HypervisorClient
from xenlab.hypervisor.__main__ import add_arguments, config_from_args
from xenlab.hypervisor.config import DEFAULT_ADDRESS
from xenlab.hypervisor.server import HypervisorServer
from xenlab.proto import common_pb2
from xenlab.osutil import free_port
from xenlab.rundir import Rundir
from xenlab.testing import short_tempdir
from xenlab.toolstack.toolstack import Toolstack


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_the_first_listen_address_is_published_and_the_others_served_too():
    config = parse("--listen", "unix:/run/xenlab/hv.sock", "--listen", "0.0.0.0:9770")
    assert config.address == "unix:/run/xenlab/hv.sock"
    assert config.also_listen == ("0.0.0.0:9770",)
    assert parse().address == DEFAULT_ADDRESS and parse().also_listen == ()


@pytest.fixture
def rundir():
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_both_addresses_answer_and_the_rundir_names_the_first(rundir):
    port = free_port()
    config = parse("--rundir", str(rundir), "--listen", f"unix:{rundir}/hv.sock",
                   "--listen", f"127.0.0.1:{port}", "--launcher", "local")
    server = HypervisorServer(config, Toolstack)
    await server.start()
    try:
        assert Rundir(rundir).read_address() == f"unix:{rundir}/hv.sock"
        for address in (f"unix:{rundir}/hv.sock", f"127.0.0.1:{port}"):
            async with HypervisorClient.connect(address, 0, server.hv.dom0_secret) as hv:
                info = await hv.domains.Info(common_pb2.DomainRef(domid=0))
                assert info.name == "Domain-0", address
    finally:
        await server.stop(grace=0.5)


async def test_a_second_address_that_cannot_be_served_stops_the_start(rundir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = parse("--rundir", str(rundir), "--listen", f"unix:{rundir}/hv.sock",
                       "--listen", f"127.0.0.1:{port}", "--launcher", "local")
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await HypervisorServer(config, Toolstack).start()
    assert Rundir(rundir).address_ready() is None
