"""A domain kernel whose start_info names its store ring reaches xenstore
over it (xenlab.domain.xenbus_ring): XenbusClient's every call, watches,
transactions retried on EAGAIN, long directories, the errors the gRPC
service would give, and the connection ending when xenstored lets go."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from xenlab.domain.kernel import DomainKernel
from xenlab.hypervisor.identity import Caller
from xenlab.proto import domains_pb2
from xenlab.testing_invariants import invariant_violations
from xenlab.xen import xs_wire as w
from xenlab.xen.start_info import StartInfo

pytestmark = pytest.mark.timeout(60)
DOM0 = Caller(0, True)


@pytest.fixture
async def kernel(hypervisor, monkeypatch):
    async def no_agent(kernel):
        return None
    monkeypatch.setattr("xenlab.domain.agent.start_guest_agent", no_agent)
    reply = await hypervisor.dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name="ringed", memory_mb=16, launcher="none")))
    domid = reply.info.domid
    store = hypervisor.hv.xenstored.domains[domid]
    start = StartInfo(domid=domid, name="ringed", secret=reply.secret, hypervisor=hypervisor.address,
                      doorbell=str(hypervisor.rundir / "evtchn.sock"), vcpus=1, console_log="",
                      store_gfn=store.gfn, store_port=store.port)
    k = DomainKernel(start, drivers=lambda k: [])
    await k.boot()
    yield k
    await k._close()


def ring_of(hypervisor, kernel):
    return hypervisor.hv.store_rings.rings[kernel.domid]


async def test_the_kernel_boots_on_its_store_ring(hypervisor, kernel):
    ring = ring_of(hypervisor, kernel)
    assert kernel._store_ring is not None
    assert ring.stats["bytes_in"] > 0 and ring.stats["bytes_out"] > 0
    # what boot wrote went over the ring, not over gRPC
    assert hypervisor.hv.xenstore.read(DOM0, f"/local/domain/{kernel.domid}/data/kernel") == \
        b"xenlab-domain"
    assert len(hypervisor.hv.xs_connections) == 0          # no gRPC WatchStream
    watches = [w for w in hypervisor.hv.xenstore.watches() if w.domid == kernel.domid]
    assert watches and all(w.conn is ring.conn for w in watches)


async def test_xenbus_calls_over_the_ring(hypervisor, kernel):
    xb = kernel.xenbus
    assert await xb.read("name") == "ringed"
    assert await xb.read("data/missing") is None
    assert await xb.read("data/missing", default="dflt") == "dflt"
    await xb.write("data/a/b", "value")
    assert await xb.directory("data/a") == ["b"]
    assert await xb.directory("data/nothing") == []
    await xb.rm("data/a")
    await xb.rm("data/a")                   # already gone: fine
    assert await xb.read("data/a/b") is None
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await xb.read("/local/domain/0/name")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await xb.write("name", "renamed")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_transaction_retried_after_a_conflict(hypervisor, kernel):
    xb, attempts = kernel.xenbus, []

    async def body(tx: int) -> None:
        attempts.append(tx)
        value = int(await xb.read("data/counter", default="0", tx=tx))
        if len(attempts) == 1:      # another writer gets in first
            hypervisor.hv.xenstore.write(DOM0, f"/local/domain/{kernel.domid}/data/counter", b"10")
        await xb.write("data/counter", str(value + 1), tx=tx)
    await xb.transaction(body)
    assert len(attempts) == 2
    assert await xb.read("data/counter") == "11"


async def test_watches_fire_over_the_ring(hypervisor, kernel):
    seen: asyncio.Queue = asyncio.Queue()
    token = await kernel.xenbus.watch("data/w", seen.put_nowait)
    assert await asyncio.wait_for(seen.get(), 10) == f"/local/domain/{kernel.domid}/data/w"
    hypervisor.hv.xenstore.write(DOM0, f"/local/domain/{kernel.domid}/data/w/x", b"1")
    assert await asyncio.wait_for(seen.get(), 10) == f"/local/domain/{kernel.domid}/data/w/x"
    await kernel.xenbus.unwatch(token)
    hypervisor.hv.xenstore.write(DOM0, f"/local/domain/{kernel.domid}/data/w/y", b"1")
    await kernel.xenbus.read("name")        # a round trip after the write
    assert seen.empty()


async def test_the_shutdown_watch_works_over_the_ring(hypervisor, kernel):
    hypervisor.hv.xenstore.write(DOM0, f"/local/domain/{kernel.domid}/control/shutdown", b"poweroff")
    await asyncio.wait_for(kernel._stop.wait(), 10)
    assert kernel.shutdown_reason == "poweroff"
    assert hypervisor.hv.xenstore.read(DOM0, f"/local/domain/{kernel.domid}/control/shutdown") == b""


async def test_a_directory_longer_than_a_payload(hypervisor, kernel):
    names = [f"a-long-enough-child-name-{i:04d}" for i in range(200)]
    for name in names:
        hypervisor.hv.xenstore.write(DOM0, f"/local/domain/{kernel.domid}/data/many/{name}", b"")
    assert await kernel.xenbus.directory("data/many") == names


async def test_a_watch_refused_is_an_error_of_that_watch(hypervisor, kernel):
    from xenlab.domain.xenbus import XenbusError
    with pytest.raises(XenbusError):
        await kernel.xenbus.watch("@releaseDomain", lambda path: None)
    assert await kernel.xenbus.read("name") == "ringed"


async def test_losing_the_ring_ends_the_xenbus_connection(hypervisor, kernel):
    """xenstored drops the connection (ignore_connection): the error field
    says so, every call outstanding fails, the kernel sees xenbus closed."""
    ring = ring_of(hypervisor, kernel)
    hypervisor.hv.xenstore.write(DOM0, f"/local/domain/{kernel.domid}/data/slow", b"x")
    ring._broken(w.XENSTORE_ERROR_COMM, "dropped by the test")
    ring._notify()
    await asyncio.wait_for(kernel.xenbus.closed.wait(), 10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await kernel.xenbus.read("name")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert invariant_violations(hypervisor.hv) == []


async def test_release_leaves_the_guest_unanswered_as_xenstored_does(hypervisor, kernel):
    """RELEASE unmaps the ring and unbinds the port without a word, as
    xenstored does: "if the domain is still running it won't be able to
    communicate with xenstored". Introduced again, it is answered again."""
    pending = asyncio.ensure_future(kernel.xenbus.read("name"))
    await asyncio.sleep(0)
    hypervisor.hv.xenstored.release(kernel.domid)
    later = asyncio.ensure_future(kernel.xenbus.read("domid"))
    done, _ = await asyncio.wait({later}, timeout=0.2)
    assert not done
    store = hypervisor.hv.xenstore
    hypervisor.hv.xenstored.introduce(kernel.domid, kernel.start_info.store_gfn,
                                      kernel.start_info.store_port)
    store.set_perms(DOM0, f"/local/domain/{kernel.domid}", [(0, "n"), (kernel.domid, "r")])
    store.set_perms(DOM0, f"/local/domain/{kernel.domid}/domid", [(0, "n"), (kernel.domid, "r")])
    assert await asyncio.wait_for(later, 10) == str(kernel.domid)
    assert pending.done()
