"""A domain kernel whose start_info names its store ring reaches xenstore
over it (xenlab.domain.xenbus_ring): XenbusClient's every call, xenstored's
errno for a refusal, and the connection ending when xenstored lets go.
Watches, transactions and long directories on either carrier:
test_xenbus_carriers."""
from __future__ import annotations

import asyncio
import errno

import pytest

from xenlab.hypervisor.caller import Caller
from xenlab.testing_invariants import invariant_violations
from xenlab.xen import xs_wire as w
from xenlab.xen.errors import XenStoreError

pytestmark = pytest.mark.timeout(60)
DOM0 = Caller(0, True)


@pytest.fixture
async def kernel(hypervisor):
    return await hypervisor.boot_domain("ringed", store_ring=True)


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


async def test_refusals_over_the_ring_are_xenstoreds_errno(hypervisor, kernel):
    xb = kernel.xenbus
    assert await xb.read("name") == "ringed"
    with pytest.raises(XenStoreError) as info:
        await xb.read("/local/domain/0/name")
    assert info.value.errno == errno.EACCES
    assert info.value.message == "EACCES: /local/domain/0/name"
    with pytest.raises(XenStoreError) as info:
        await xb.write("name", "renamed")
    assert info.value.errno == errno.EACCES


async def test_the_shutdown_watch_works_over_the_ring(hypervisor, kernel):
    hypervisor.hv.xenstore.write(DOM0, f"/local/domain/{kernel.domid}/control/shutdown", b"poweroff")
    await asyncio.wait_for(kernel._stop.wait(), 10)
    assert kernel.shutdown_reason == "poweroff"
    assert hypervisor.hv.xenstore.read(DOM0, f"/local/domain/{kernel.domid}/control/shutdown") == b""


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
    with pytest.raises(XenStoreError) as info:
        await kernel.xenbus.read("name")
    assert info.value.errno == errno.ENOTCONN
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
