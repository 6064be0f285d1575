"""What XenbusClient does the same on both of xenstore's wire carriers
(xenlab.domain.xenbus_ring): a guest's store ring and Domain-0's socket to
xenstored. Reads, writes, directories and removals; watches that fire and
stop; a transaction that conflicts, retried; a directory longer than one
payload, read a part at a time."""
from __future__ import annotations

import asyncio

import pytest

from xenlab.hypervisor.caller import Caller

pytestmark = pytest.mark.timeout(60)
DOM0 = Caller(0, True)


@pytest.fixture(params=["ring", "socket"])
async def kernel(request, hypervisor):
    if request.param == "socket":
        kernel = await hypervisor.boot_dom0()
        assert kernel._xenstore_carrier == "xenstored's socket"
        return kernel
    kernel = await hypervisor.boot_domain("ringed", store_ring=True)
    assert kernel._xenstore_carrier == "its store ring"
    return kernel


def home(kernel) -> str:
    return f"/local/domain/{kernel.domid}"


async def test_plain_calls(kernel):
    xb = kernel.xenbus
    assert await xb.read("data/missing") is None
    assert await xb.read("data/missing", default="dflt") == "dflt"
    await xb.write("data/a/b", "value")
    assert await xb.read("data/a/b") == "value"
    assert await xb.directory("data/a") == ["b"]
    assert await xb.directory("data/nothing") == []
    await xb.rm("data/a")
    await xb.rm("data/a")                   # already gone: fine
    assert await xb.read("data/a/b") is None


async def test_a_transaction_retried_after_a_conflict(hypervisor, kernel):
    xb, attempts = kernel.xenbus, []

    async def body(tx: int) -> None:
        attempts.append(tx)
        value = int(await xb.read("data/counter", default="0", tx=tx))
        if len(attempts) == 1:      # another writer gets in first
            hypervisor.hv.xenstore.write(DOM0, f"{home(kernel)}/data/counter", b"10")
        await xb.write("data/counter", str(value + 1), tx=tx)
    await xb.transaction(body)
    assert len(attempts) == 2
    assert await xb.read("data/counter") == "11"


async def test_watches_fire_and_stop(hypervisor, kernel):
    seen: asyncio.Queue = asyncio.Queue()
    token = await kernel.xenbus.watch("data/w", seen.put_nowait)
    assert await asyncio.wait_for(seen.get(), 10) == f"{home(kernel)}/data/w"
    hypervisor.hv.xenstore.write(DOM0, f"{home(kernel)}/data/w/x", b"1")
    assert await asyncio.wait_for(seen.get(), 10) == f"{home(kernel)}/data/w/x"
    await kernel.xenbus.unwatch(token)
    hypervisor.hv.xenstore.write(DOM0, f"{home(kernel)}/data/w/y", b"1")
    await kernel.xenbus.read("name")        # a round trip after the write
    assert seen.empty()


async def test_a_directory_longer_than_a_payload(hypervisor, kernel):
    names = [f"a-long-enough-child-name-{i:04d}" for i in range(200)]
    for name in names:
        hypervisor.hv.xenstore.write(DOM0, f"{home(kernel)}/data/many/{name}", b"")
    assert await kernel.xenbus.directory("data/many") == names
