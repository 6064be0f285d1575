"""A domain started by the launcher, as its own process, reaches xenstore
over its store ring: its boot, its drivers' watches, and xl shutdown all
go over the ring, none over the gRPC XenStore service."""
from __future__ import annotations

import pytest

from xenlab.hypervisor.caller import Caller
from xenlab.proto import common_pb2, domains_pb2
from xenlab.testing import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
DOM0 = Caller(0, True)


def read(hv, path: str) -> bytes | None:
    try:
        return hv.xenstore.read(DOM0, path)
    except Exception:
        return None


async def test_a_domain_process_speaks_xenstore_over_its_ring(hypervisor):
    hv = hypervisor.hv
    domid, _ = await hypervisor.create_domain("ringed", memory_mb=32, launcher="local")
    await eventually(lambda: read(hv, f"/local/domain/{domid}/data/kernel") == b"xenlab-domain",
                     "the domain to boot", timeout=30)
    ring = hv.store_rings.rings[domid]
    assert ring.stats["bytes_in"] > 0 and ring.stats["bytes_out"] > 0
    watches = [w for w in hv.xenstore.watches() if w.domid == domid]
    assert watches and all(w.conn is ring.conn for w in watches)
    assert not len(hv.xs_connections)          # no gRPC WatchStream from anyone
    await hypervisor.dom0.domains.Shutdown(domains_pb2.ShutdownRequest(
        domain=common_pb2.DomainRef(domid=domid), reason="poweroff", wait=True))
    await eventually(lambda: domid not in hv.domains, "the domain to go", timeout=30)
    assert domid not in hv.store_rings.rings
