"""The hypervisor's Events stream: Domain-0's alone (every domain's
lifecycle and vifs), as its HypervisorSource publishes them."""
import asyncio
import json
import shutil

import grpc
import pytest_asyncio

from xenlab.client import HypervisorClient
from xenlab.events import topics as t
from xenlab.events.config import EventsConfig
from xenlab.events.sources import HypervisorSource, ServiceEvents
from xenlab.hypervisor.config import HypervisorConfig
from xenlab.hypervisor.server import HypervisorServer
from xenlab.toolstack.toolstack import Toolstack
from xenlab.proto import domains_pb2, events_pb2, events_pb2_grpc
from xenlab.testing import short_tempdir

TOPICS = t.Topics("hv")


@pytest_asyncio.fixture
async def served():
    """(server, Domain-0's client) with events on and no broker."""
    rundir = short_tempdir()
    config = HypervisorConfig(address=f"unix:{rundir}/hv.sock", rundir=rundir,
                              total_memory_mb=1024, launcher="none")
    async with ServiceEvents(EventsConfig(None, TOPICS), "hypervisor") as ev:
        server = HypervisorServer(config, Toolstack, events=ev.hub)
        await server.start()
        ev.add(HypervisorSource(server.hv, server.toolstack, ev.publisher))
        dom0 = HypervisorClient.connect(server.address, 0, server.hv.dom0_secret)
        try:
            yield server, dom0
        finally:
            await dom0.close()
            await ev.sources.pop().close()
            await server.stop(grace=0.5)
            shutil.rmtree(rundir, ignore_errors=True)


async def first(call):
    return await asyncio.wait_for(call.read(), 10)


async def test_domain0_sees_a_domain_created_an_unprivileged_domain_is_refused(served):
    server, dom0 = served
    stream = events_pb2_grpc.EventsStub(dom0.channel).Subscribe(events_pb2.SubscribeRequest(
        topics=["xenlab/hv/domain/+/state"], no_retained=True))
    await stream.initial_metadata()
    reply = await dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name="guest", memory_mb=16, launcher="none")))
    event = await first(stream)
    assert event.topic == TOPICS.domain_state(reply.info.domid) and not event.retained
    assert json.loads(event.payload)["name"] == "guest"
    stream.cancel()

    async with HypervisorClient.connect(server.address, reply.info.domid, reply.secret) as guest:
        refused = events_pb2_grpc.EventsStub(guest.channel).Subscribe(events_pb2.SubscribeRequest())
        try:
            await first(refused)
            raise AssertionError("an unprivileged domain got the event stream")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.insecure_channel(server.address) as anonymous:
        refused = events_pb2_grpc.EventsStub(anonymous).Subscribe(events_pb2.SubscribeRequest())
        try:
            await first(refused)
            raise AssertionError("a caller without credentials got the event stream")
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
