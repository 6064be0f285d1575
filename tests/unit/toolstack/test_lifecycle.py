"""The toolstack's part of a domain's life, through the Domains API: xl
shutdown and reboot, a crash, the domain's own SCHEDOP_shutdown, and the
xl.cfg policy applied to each (on_poweroff, on_reboot, on_crash)."""
from __future__ import annotations

import grpc
import pytest

from xenlab.proto import common_pb2, domains_pb2, xenstore_pb2
from xenlab.testing import check_invariants


async def create(lab, name, **spec):
    vif = [domains_pb2.VifSpec(mac="00:16:3e:00:00:07")]
    return await lab.create_domain(name, vif=vif, **spec)


async def shutdown(lab, domid, reason):
    await lab.dom0.domains.Shutdown(domains_pb2.ShutdownRequest(
        domain=common_pb2.DomainRef(domid=domid), reason=reason, wait=True, timeout=10.0))


async def info(lab, name):
    return await lab.dom0.domains.Info(common_pb2.DomainRef(name=name))


async def exists(lab, path):
    try:
        await lab.dom0.xenstore.Read(xenstore_pb2.PathRequest(path=path))
        return True
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
        return False


async def gone(lab, domid):
    """Nothing of the domain is left: not its tree, its record or its vif's backend."""
    return not any([await exists(lab, f"/local/domain/{domid}"),
                    await exists(lab, f"/libxl/{domid}"),
                    await exists(lab, f"/local/domain/0/backend/vif/{domid}")])


@pytest.mark.parametrize("reason", ["poweroff", "crash"])
async def test_destroy_policy_removes_every_trace(hypervisor, reason):
    domid, _ = await create(hypervisor, "web")
    await shutdown(hypervisor, domid, reason)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await info(hypervisor, "web")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await gone(hypervisor, domid)
    check_invariants(hypervisor.hv)


@pytest.mark.parametrize("reason, key, letters", [("poweroff", "on_poweroff", "---s--"),
                                                  ("crash", "on_crash", "---sc-")])
async def test_preserve_keeps_the_domain_stopped(hypervisor, reason, key, letters):
    domid, _ = await create(hypervisor, "web", **{key: "preserve"})
    await shutdown(hypervisor, domid, reason)
    kept = await info(hypervisor, "web")
    assert (kept.domid, kept.state, kept.shutdown_reason) == (domid, letters, reason)
    assert await exists(hypervisor, f"/local/domain/{domid}/device/vif/0")
    await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=domid))
    assert await gone(hypervisor, domid)


async def test_reboot_restarts_it_from_its_spec_as_a_new_domain(hypervisor):
    domid, _ = await create(hypervisor, "web", on_reboot="restart")
    await shutdown(hypervisor, domid, "reboot")
    again = await info(hypervisor, "web")
    assert again.domid != domid and again.state == "-b----"
    assert await gone(hypervisor, domid)
    vifs = (await hypervisor.dom0.domains.NetworkList(common_pb2.DomainRef(domid=again.domid))).vifs
    assert [(v.devid, v.mac) for v in vifs] == [(0, "00:16:3e:00:00:07")]
    check_invariants(hypervisor.hv)


async def test_the_domains_own_shutdown_gets_its_policy(hypervisor):
    domid, client = await create(hypervisor, "web", on_poweroff="preserve")
    await client.domains.SchedShutdown(domains_pb2.SchedShutdownRequest(reason="poweroff"))
    dom = hypervisor.hv.domains.get(domid)
    await hypervisor.hv.wait_gone_or_stopped(dom, 10.0)
    assert (await info(hypervisor, "web")).state == "---s--"


async def test_domain0_cannot_be_shut_down_or_destroyed(hypervisor):
    for call in (hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=0)),
                 hypervisor.dom0.domains.Shutdown(domains_pb2.ShutdownRequest(
                     domain=common_pb2.DomainRef(domid=0), reason="poweroff"))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
