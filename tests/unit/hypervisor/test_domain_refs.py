"""Domain references (DomainRef: an id, or a name) through every RPC that
takes one: what an unprivileged domain may learn from them, and names that
are not ASCII.

In Xen, getdomaininfo of another domain, like every domctl and sysctl, is
for the control domain. An unprivileged domain that names another one gets
the same refusal whether that domain exists or not; asking about itself
works. Names follow libxl: a reference made only of ASCII digits is an id
(libxl_domain_qualifier_to_domid tests C's isdigit()), anything else is a
name, so '²' and '٣' are names like any other.
"""
from __future__ import annotations

import grpc
import pytest

from xenlab.proto import common_pb2, domains_pb2, memory_pb2
from xenlab.testing import check_invariants
from xenlab.xen import abi


def ref(**kw) -> common_pb2.DomainRef:
    return common_pb2.DomainRef(**kw)


# Every RPC an unprivileged domain may call with a reference to a domain.
UNPRIVILEGED_REF_CALLS = {
    "Domains.Info": lambda c, r: c.domains.Info(r),
    "Domains.NetworkList": lambda c, r: c.domains.NetworkList(r),
    "Memory.GetReservation": lambda c, r: c.memory.GetReservation(r),
    "Memory.GetMemoryMap": lambda c, r: c.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(domain=r)),
    "GrantTable.Query": lambda c, r: c.grants.Query(r),
}


async def answer(call) -> tuple[str, str]:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details()
    return "OK", ""


@pytest.mark.parametrize("rpc", sorted(UNPRIVILEGED_REF_CALLS))
async def test_info_by_name_tells_an_unprivileged_domain_nothing_of_other_domains(hypervisor, rpc):
    call = UNPRIVILEGED_REF_CALLS[rpc]
    web, _ = await hypervisor.create_domain("web")
    me, client = await hypervisor.create_domain("me")
    ghost = web + 100
    for there, absent in ((ref(name="web"), ref(name="nosuch")),
                          (ref(domid=web), ref(domid=ghost)),
                          (ref(name=str(web)), ref(name=str(ghost)))):
        code, details = await answer(call(client, there))
        code_absent, details_absent = await answer(call(client, absent))
        asked = there.name or f"d{there.domid}"
        assert code == "PERMISSION_DENIED", (rpc, there, details)
        # the same answer, bar the reference the caller gave itself
        assert (code, details.replace(asked, "X")) == \
            (code_absent, details_absent.replace(absent.name or f"d{absent.domid}", "X"))
        if there.name == "web":
            assert str(web) not in details          # the name's id is not told
    for mine in (ref(name="me"), ref(domid=me), ref(name=str(me)), ref(name=f"00{me}")):
        assert (await answer(call(client, mine)))[0] == "OK", (rpc, mine)


async def test_an_unprivileged_domain_may_not_read_the_hosts_information(hypervisor):
    """physinfo is a sysctl: it counts the host's domains."""
    _, client = await hypervisor.create_domain("me")
    code, details = await answer(client.domains.GetHostInfo(common_pb2.Empty()))
    assert code == "PERMISSION_DENIED" and "privileged" in details
    assert (await answer(hypervisor.dom0.domains.GetHostInfo(common_pb2.Empty())))[0] == "OK"


NON_ASCII_NAMES = ["²", "٣", "１", "é", "web²", "ᛒ-1"]


@pytest.mark.parametrize("name", NON_ASCII_NAMES)
async def test_the_name_superscript_two_works_on_every_domain_call(hypervisor, name):
    """'²' is a digit to str.isdigit() and a ValueError to int(): five calls
    answered UNKNOWN. Any name that is not all ASCII digits is a name."""
    dom0 = hypervisor.dom0
    reply = await dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name=name, memory_mb=16, launcher="none")))
    domid, r = reply.info.domid, ref(name=name)
    assert reply.info.name == name
    assert (await dom0.domains.Info(r)).domid == domid
    assert name in [d.name for d in (await dom0.domains.List(common_pb2.Empty())).domains]
    await dom0.domains.Pause(r)
    await dom0.domains.Unpause(r)
    await dom0.domains.SetVcpus(domains_pb2.VcpuSetRequest(domain=r, vcpus=1))
    assert (await dom0.memory.GetReservation(r)).domid == domid
    await dom0.memory.SetTarget(memory_pb2.MemSetRequest(domain=r, kb=16 * 1024))
    assert (await dom0.grants.Query(r)) is not None
    vif = await dom0.domains.NetworkAttach(domains_pb2.NetworkAttachRequest(
        domain=r, vif=domains_pb2.VifSpec(mac="00:16:3e:00:00:01")))
    assert [v.devid for v in (await dom0.domains.NetworkList(r)).vifs] == [vif.devid]
    await dom0.domains.NetworkDetach(domains_pb2.NetworkDetachRequest(
        domain=r, device=str(vif.devid), force=True, timeout=0.1))
    assert not (await dom0.domains.NetworkList(r)).vifs
    check_invariants(hypervisor.hv)         # backend/vif/DOMID went with its last vif
    await dom0.domains.Destroy(r)
    assert domid not in hypervisor.hv.domains
    check_invariants(hypervisor.hv)


async def test_an_arabic_indic_digit_is_a_name_not_domain_three(hypervisor):
    """int('٣') == 3: the name '٣' reached d3."""
    for n in ("a", "b", "c"):
        await hypervisor.create_domain(n)
    three = hypervisor.hv.domains.get(3)
    code, details = await answer(hypervisor.dom0.domains.Destroy(ref(name="٣")))
    assert code == "NOT_FOUND" and "no domain named" in details
    assert hypervisor.hv.domains.get(3) is three


@pytest.mark.parametrize("name, words", [
    ("", "needs a name"), ("42", "all digits"), ("0042", "all digits"), ("a b", "characters"),
    ("a\u202eb", "characters"), ("x" * 65, "longer"), ("a\x00", "characters"),
])
async def test_names_xenlab_refuses_are_invalid_argument(hypervisor, name, words):
    code, details = await answer(hypervisor.dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name=name, memory_mb=16, launcher="none"))))
    assert code == "INVALID_ARGUMENT" and words in details


@pytest.mark.parametrize("name", ["9" * 5000, "9" * 11, str(abi.DOMID_SELF)])
async def test_a_reference_of_many_digits_is_no_such_domain(hypervisor, name):
    code, _ = await answer(hypervisor.dom0.domains.Info(ref(name=name)))
    assert code == "NOT_FOUND"
