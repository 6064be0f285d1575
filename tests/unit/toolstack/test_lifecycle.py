"""The toolstack's part of a domain's life, through the Domains API: xl
shutdown and reboot, a crash, the domain's own SCHEDOP_shutdown (each
SHUTDOWN_* reason), the signals Xen gives Domain-0 (VIRQ_DOM_EXC,
@releaseDomain), the xl.cfg action applied to each (on_poweroff, on_reboot,
on_crash, on_watchdog; every action), and the pause count."""
from __future__ import annotations

import re

import grpc
import pytest

from xenlab.hypervisor.caller import DOM0
from xenlab.proto import common_pb2, domains_pb2, evtchn_pb2, xenstore_pb2
from xenlab.testing import check_invariants
from xenlab.xen import abi


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


# -- Xen's signals: the reason recorded, VIRQ_DOM_EXC, @releaseDomain ----------------

async def test_a_shutdown_raises_virq_dom_exc_in_domain0(hypervisor):
    """VIRQ_DOM_EXC was never raised: Domain-0 (xenstored, in Xen) could not
    hear of a domain that shut down."""
    port = (await hypervisor.dom0.evtchn.BindVirq(
        evtchn_pb2.BindVirqRequest(virq=abi.VIRQ_DOM_EXC))).port
    status = evtchn_pb2.StatusRequest(dom=0, port=port)
    assert not (await hypervisor.dom0.evtchn.Status(status)).pending
    domid, _ = await create(hypervisor, "web", on_poweroff="preserve")
    await shutdown(hypervisor, domid, "poweroff")
    assert (await hypervisor.dom0.evtchn.Status(status)).pending


class Watcher:
    def __init__(self):
        self.events = []

    def fire(self, path, token):
        self.events.append(path)


async def test_release_domain_fires_when_a_domain_shuts_down_not_only_when_it_goes(hypervisor):
    """As xenstored's do_check_domain: the shut-down domain is still there
    (on_poweroff=preserve) and @releaseDomain has fired for it."""
    domid, _ = await create(hypervisor, "web", on_poweroff="preserve")
    watcher = Watcher()
    hypervisor.hv.xenstore.watch(DOM0, watcher, "@releaseDomain", "t")
    watcher.events.clear()                  # the event every new watch fires once
    await shutdown(hypervisor, domid, "poweroff")
    assert watcher.events == ["@releaseDomain"]
    assert (await info(hypervisor, "web")).state == "---s--"
    hypervisor.hv.xenstore.drop_connection(watcher)


@pytest.mark.parametrize("reason", ["poweroff", "reboot", "crash", "watchdog"])
async def test_each_reason_is_recorded_and_its_own_policy_applied(hypervisor, reason):
    """Every on_* but the one for ``reason`` would remove the domain."""
    policies = {f"on_{r}": "destroy" for r in ("poweroff", "reboot", "crash", "watchdog")}
    policies[f"on_{reason}"] = "preserve"
    domid, client = await create(hypervisor, "web", **policies)
    await client.domains.SchedShutdown(domains_pb2.SchedShutdownRequest(reason=reason))
    await settled(hypervisor, domid)
    kept = await info(hypervisor, "web")
    assert (kept.domid, kept.shutdown_reason) == (domid, reason)
    assert kept.state == ("---sc-" if reason == "crash" else "---s--")


async def test_watchdog_gets_on_watchdog_not_on_crash(hypervisor):
    """on_watchdog was dropped and a watchdog shutdown got on_crash's action."""
    domid, client = await create(hypervisor, "web", on_crash="preserve", on_watchdog="destroy")
    await client.domains.SchedShutdown(domains_pb2.SchedShutdownRequest(reason="watchdog"))
    await settled(hypervisor, domid)
    assert await gone(hypervisor, domid)
    assert "web" not in [d.name for d in (await hypervisor.dom0.domains.List(common_pb2.Empty())).domains]


async def test_watchdog_defaults_to_destroy(hypervisor):
    domid, client = await create(hypervisor, "web", on_crash="preserve")
    await client.domains.SchedShutdown(domains_pb2.SchedShutdownRequest(reason="watchdog"))
    await settled(hypervisor, domid)
    assert await gone(hypervisor, domid)


async def test_a_suspended_domain_is_left_alone(hypervisor):
    """handle_domain_death: 'Domain has suspended', whatever the on_* say."""
    domid, client = await create(hypervisor, "web")
    await client.domains.SchedShutdown(domains_pb2.SchedShutdownRequest(reason="suspend"))
    await settled(hypervisor, domid)
    kept = await info(hypervisor, "web")
    assert (kept.domid, kept.state, kept.shutdown_reason) == (domid, "---s--", "suspend")


async def settled(lab, domid):
    dom = lab.hv.domains.find(domid)
    if dom is None:
        return                      # shut down and destroyed already
    await lab.hv.wait_gone_or_stopped(dom, 10.0)
    await lab.toolstack.monitor.settled(dom)


# -- each on_* action ---------------------------------------------------------------

async def names(lab):
    return {d.name: d for d in (await lab.dom0.domains.List(common_pb2.Empty())).domains}


@pytest.mark.parametrize("action", ["destroy", "coredump-destroy"])
async def test_destroy_actions(hypervisor, action):
    domid, _ = await create(hypervisor, "web", on_crash=action)
    await shutdown(hypervisor, domid, "crash")
    assert "web" not in await names(hypervisor)
    assert await gone(hypervisor, domid)


@pytest.mark.parametrize("action", ["restart", "coredump-restart"])
async def test_restart_actions(hypervisor, action):
    domid, _ = await create(hypervisor, "web", on_crash=action)
    await shutdown(hypervisor, domid, "crash")
    web = (await names(hypervisor))["web"]
    assert web.domid != domid and web.state == "-b----" and not web.shutdown_reason
    assert await gone(hypervisor, domid)


async def test_rename_restart_keeps_the_old_domain_under_a_dated_name(hypervisor):
    """xl's preserve_domain: NAME-YYYYMMDDTHHMMZ with a new uuid, shut down
    as it was, and a new NAME started."""
    domid, _ = await create(hypervisor, "web", on_reboot="rename-restart")
    old_uuid = (await info(hypervisor, "web")).uuid
    await shutdown(hypervisor, domid, "reboot")
    doms = await names(hypervisor)
    [kept] = [d for d in doms.values() if d.domid == domid]
    assert re.fullmatch(r"web-\d{8}T\d{4}Z", kept.name)
    assert (kept.state, kept.shutdown_reason) == ("---s--", "reboot")
    assert kept.uuid != old_uuid
    assert doms["web"].domid != domid and doms["web"].state == "-b----"
    name = await hypervisor.dom0.xenstore.Read(xenstore_pb2.PathRequest(path=f"/local/domain/{domid}/name"))
    assert name.value.decode() == kept.name
    vm = (await hypervisor.dom0.xenstore.Read(xenstore_pb2.PathRequest(path=f"/local/domain/{domid}/vm"))).value.decode()
    assert vm == f"/vm/{kept.uuid}" and not await exists(hypervisor, f"/vm/{old_uuid}")
    check_invariants(hypervisor.hv)


async def test_soft_reset_is_refused_at_create(hypervisor):
    before = [d.domid for d in hypervisor.hv.domains]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(hypervisor, "web", on_reboot="soft-reset")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "soft reset" in err.value.details() and "not emulated" in err.value.details()
    assert [d.domid for d in hypervisor.hv.domains] == before


# -- the pause count ----------------------------------------------------------------

async def test_pauses_nest_as_xen_counts_them(hypervisor):
    """Two pauses, one unpause: the domain ran again."""
    domid, _ = await create(hypervisor, "web")
    ref = common_pb2.DomainRef(domid=domid)
    await hypervisor.dom0.domains.Pause(ref)
    await hypervisor.dom0.domains.Pause(ref)
    await hypervisor.dom0.domains.Unpause(ref)
    assert (await info(hypervisor, "web")).state == "--p---"
    await hypervisor.dom0.domains.Unpause(ref)
    assert (await info(hypervisor, "web")).state == "-b----"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hypervisor.dom0.domains.Unpause(ref)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not paused" in err.value.details()


async def test_the_pause_count_stops_at_255(hypervisor):
    domid, _ = await create(hypervisor, "web")
    ref = common_pb2.DomainRef(domid=domid)
    for _ in range(255):
        await hypervisor.dom0.domains.Pause(ref)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hypervisor.dom0.domains.Pause(ref)
    assert "255" in err.value.details()


async def test_a_created_paused_domain_runs_after_one_unpause(hypervisor):
    reply = await hypervisor.dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name="web", memory_mb=16, launcher="none"), paused=True))
    ref = common_pb2.DomainRef(domid=reply.info.domid)
    assert (await info(hypervisor, "web")).state == "--p---"
    await hypervisor.dom0.domains.Unpause(ref)
    assert (await info(hypervisor, "web")).state == "-b----"


# -- SCHEDOP_watchdog -------------------------------------------------------------------

async def test_a_watchdog_left_to_expire_shuts_the_domain_down_with_on_watchdog(hypervisor):
    domid, client = await create(hypervisor, "web", on_watchdog="preserve", on_crash="destroy")
    reply = await client.domains.SchedWatchdog(domains_pb2.SchedWatchdogRequest(id=0, timeout=1))
    assert reply.id == 1
    dom = hypervisor.hv.domains.get(domid)
    await hypervisor.hv.wait_gone_or_stopped(dom, 10.0)
    kept = await info(hypervisor, "web")
    assert (kept.state, kept.shutdown_reason) == ("---s--", "watchdog")


async def test_a_stopped_watchdog_does_not_fire(hypervisor):
    domid, client = await create(hypervisor, "web")
    wid = (await client.domains.SchedWatchdog(domains_pb2.SchedWatchdogRequest(id=0, timeout=1))).id
    await client.domains.SchedWatchdog(domains_pb2.SchedWatchdogRequest(id=wid, timeout=0))
    assert hypervisor.hv.watchdogs.armed(domid) == []


async def test_watchdog_requests_are_checked(hypervisor):
    _, client = await create(hypervisor, "web")
    for request, code in ((dict(id=3, timeout=1), grpc.StatusCode.INVALID_ARGUMENT),
                          (dict(id=1, timeout=1), grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.domains.SchedWatchdog(domains_pb2.SchedWatchdogRequest(**request))
        assert err.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hypervisor.dom0.domains.SchedWatchdog(domains_pb2.SchedWatchdogRequest(id=0, timeout=1))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
