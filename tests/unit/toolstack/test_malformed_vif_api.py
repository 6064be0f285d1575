"""Malformed vif input through the toolstack API (issue "Hostile input and
faults", part 6), and a guest that lies in its own frontend directory.

Every refusal is a specific gRPC status with a message naming what is
wrong, and leaves nothing behind: no domain, no xenstore node, no memory,
no grant table or event channels (checked against a snapshot of the whole
hypervisor). The toolstack never takes the guest-writable frontend
directory's word for where a vif's backend is or what its MAC is.
"""
import asyncio

import grpc
import pytest

from xenlab.proto import common_pb2, domains_pb2, xenstore_pb2
from xenlab.testing import check_invariants

V = domains_pb2.VifSpec
MAC = "00:16:3e:00:00:01"


def snapshot(hv) -> dict:
    """Everything a refused request must leave as it was."""
    return {
        "domains": [(d.domid, d.name) for d in hv.domains],
        "xenstore": dict(hv.xenstore.nodes()),
        "free_pages": hv.memory.free_pages,
        "shm": hv.memory.shm_files(),
        "cores": (hv.memory.domains(), hv.grants.domains(), hv.evtchn.domains()),
    }


async def refused(lab, call, code: grpc.StatusCode, *words: str) -> str:
    before = snapshot(lab.hv)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    details = err.value.details()
    assert err.value.code() == code, (err.value.code(), details)
    for word in words:
        assert word in details, (word, details)
    assert snapshot(lab.hv) == before, "a refused request left something behind"
    check_invariants(lab.hv)
    return details


def create(lab, *vifs: V, **spec):
    spec.setdefault("name", "guest")
    spec.setdefault("launcher", "none")
    return lab.dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(vif=list(vifs), memory_mb=spec.pop("memory_mb", 16), **spec)))


def attach(lab, domid: int, vif: V):
    return lab.dom0.domains.NetworkAttach(domains_pb2.NetworkAttachRequest(
        domain=common_pb2.DomainRef(domid=domid), vif=vif))


async def register_bridge(lab, name: str) -> None:
    """What the bridge service writes when it starts (bridge/server.py)."""
    await lab.dom0.xenstore.Write(xenstore_pb2.WriteRequest(
        path=f"/tool/xenlab/bridges/{name}/address", value=b"unix:/nonexistent"))


BAD_VIFS = {
    "short mac": (V(mac="00:16:3e:00:01"), grpc.StatusCode.INVALID_ARGUMENT, "MAC"),
    "non-hex mac": (V(mac="00:16:3e:00:00:zz"), grpc.StatusCode.INVALID_ARGUMENT, "MAC"),
    "seven octets": (V(mac="00:16:3e:00:00:01:02"), grpc.StatusCode.INVALID_ARGUMENT, "MAC"),
    "dashes": (V(mac="00-16-3e-00-00-01"), grpc.StatusCode.INVALID_ARGUMENT, "MAC"),
    "multicast mac": (V(mac="01:00:5e:00:00:01"), grpc.StatusCode.INVALID_ARGUMENT, "multicast"),
    "broadcast mac": (V(mac="ff:ff:ff:ff:ff:ff"), grpc.StatusCode.INVALID_ARGUMENT, "multicast"),
    "bad ip": (V(ip="10.0.0.256"), grpc.StatusCode.INVALID_ARGUMENT, "ip"),
    "ipv6": (V(ip="fe80::1"), grpc.StatusCode.INVALID_ARGUMENT, "ip"),
    "mtu too small": (V(mtu=67), grpc.StatusCode.INVALID_ARGUMENT, "mtu"),
    "mtu too big": (V(mtu=65536), grpc.StatusCode.INVALID_ARGUMENT, "mtu"),
    "bad rate": (V(rate="fast"), grpc.StatusCode.INVALID_ARGUMENT, "rate"),
    "zero rate": (V(rate="0Mb/s"), grpc.StatusCode.INVALID_ARGUMENT, "rate"),
    "bad vlan": (V(vlan="10x"), grpc.StatusCode.INVALID_ARGUMENT, "vlan"),
    "two pvids": (V(vlan="10p/20p"), grpc.StatusCode.INVALID_ARGUMENT, "vlan"),
    "bridge with a slash": (V(bridge="br/0"), grpc.StatusCode.INVALID_ARGUMENT, "bridge"),
    "bridge too long": (V(bridge="b" * 16), grpc.StatusCode.INVALID_ARGUMENT, "bridge"),
    "vifname with a space": (V(vifname="vif 1"), grpc.StatusCode.INVALID_ARGUMENT, "vifname"),
    "vifname too long": (V(vifname="v" * 16), grpc.StatusCode.INVALID_ARGUMENT, "vifname"),
    "unknown backend": (V(backend="nosuchdomain"), grpc.StatusCode.NOT_FOUND, "nosuchdomain"),
}


@pytest.mark.parametrize("kind", sorted(BAD_VIFS))
async def test_a_bad_vif_refuses_the_whole_domain(hypervisor, kind):
    vif, code, word = BAD_VIFS[kind]
    await refused(hypervisor, create(hypervisor, V(mac=MAC), vif), code, word)


@pytest.mark.parametrize("kind", sorted(BAD_VIFS))
async def test_a_bad_vif_is_refused_by_network_attach(hypervisor, kind):
    vif, code, word = BAD_VIFS[kind]
    domid, _ = await hypervisor.create_domain("guest")
    await refused(hypervisor, attach(hypervisor, domid, vif), code, word)


BAD_DOMAINS = {
    "no name": (dict(name=""), grpc.StatusCode.INVALID_ARGUMENT, "name"),
    "digits only": (dict(name="123"), grpc.StatusCode.INVALID_ARGUMENT, "digits"),
    "slash in name": (dict(name="a/b"), grpc.StatusCode.INVALID_ARGUMENT, "characters"),
    "maxmem below memory": (dict(memory_mb=64, maxmem_mb=32), grpc.StatusCode.INVALID_ARGUMENT,
                            "maxmem"),
    "more memory than the host": (dict(memory_mb=1 << 20), grpc.StatusCode.INVALID_ARGUMENT,
                                  "limit"),
    "more than the host has free": (dict(memory_mb=4000), grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    "free"),
    "vcpus above the maximum": (dict(vcpus=1000), grpc.StatusCode.INVALID_ARGUMENT, "vcpus"),
    "maxvcpus below vcpus": (dict(vcpus=4, maxvcpus=2), grpc.StatusCode.INVALID_ARGUMENT,
                             "maxvcpus"),
    "bad action": (dict(on_crash="explode"), grpc.StatusCode.INVALID_ARGUMENT, "on_crash"),
    "bad uuid": (dict(uuid="not-a-uuid"), grpc.StatusCode.INVALID_ARGUMENT, "uuid"),
    "bad launcher": (dict(launcher="teleport"), grpc.StatusCode.INVALID_ARGUMENT, "teleport"),
}


@pytest.mark.parametrize("kind", sorted(BAD_DOMAINS))
async def test_a_bad_domain_spec_leaves_nothing(hypervisor, kind):
    spec, code, word = BAD_DOMAINS[kind]
    await refused(hypervisor, create(hypervisor, V(mac=MAC), **spec), code, word)


async def test_a_domain_name_in_use_is_refused(hypervisor):
    await create(hypervisor, name="web")
    await refused(hypervisor, create(hypervisor, name="web"), grpc.StatusCode.ALREADY_EXISTS, "web")


# -- duplicate MACs on one bridge -------------------------------------------------------------------
async def test_duplicate_macs_within_one_spec(hypervisor):
    await refused(hypervisor, create(hypervisor, V(mac=MAC), V(mac=MAC.upper())),
                  grpc.StatusCode.ALREADY_EXISTS, MAC, "xenbr0")
    # the same address on two bridges is two hosts on two LANs: fine
    await create(hypervisor, V(mac=MAC), V(mac=MAC, bridge="xenbr1"))


async def test_duplicate_mac_against_another_domain_and_through_attach(hypervisor):
    await create(hypervisor, V(mac=MAC), name="a")
    await refused(hypervisor, create(hypervisor, V(mac=MAC), name="b"),
                  grpc.StatusCode.ALREADY_EXISTS, MAC, "xenbr0")
    domid, _ = await hypervisor.create_domain("c")
    await refused(hypervisor, attach(hypervisor, domid, V(mac=MAC)),
                  grpc.StatusCode.ALREADY_EXISTS, MAC)
    await attach(hypervisor, domid, V(mac=MAC, bridge="xenbr1"))


# -- unknown bridges ------------------------------------------------------------------------------------
async def test_a_bridge_nobody_runs_is_refused_once_bridges_are_registered(hypervisor):
    # With no bridge service registered (a hypervisor on its own), the
    # backend's hotplug is the judge; once bridges register, the toolstack
    # knows them and refuses any other at once, as a failed vif-bridge makes
    # xl create fail.
    await create(hypervisor, V(mac=MAC, bridge="anything"), name="early")
    await register_bridge(hypervisor, "xenbr0")
    await register_bridge(hypervisor, "xenbr1")
    details = await refused(hypervisor, create(hypervisor, V(bridge="xenbr7")),
                            grpc.StatusCode.NOT_FOUND, "xenbr7")
    assert "xenbr0" in details and "xenbr1" in details      # it says which bridges there are
    domid, _ = await hypervisor.create_domain("guest")
    await refused(hypervisor, attach(hypervisor, domid, V(bridge="nosuchbr")),
                  grpc.StatusCode.NOT_FOUND, "nosuchbr")
    await attach(hypervisor, domid, V(bridge="xenbr1"))


# -- a guest that lies in its frontend directory -------------------------------------------------------------
async def guest_writes(client, path: str, value: str) -> None:
    await client.xenstore.Write(xenstore_pb2.WriteRequest(path=path, value=value.encode()))


async def test_destroying_a_guest_never_follows_its_own_backend_key(hypervisor):
    """The frontend directory is the guest's to write; a guest that points
    its ``backend`` key at another domain's backend (or at /local) must not
    make the toolstack remove that on its destruction."""
    victim, _ = await hypervisor.create_domain("victim", vif=[V(mac=MAC)])
    liar, client = await hypervisor.create_domain("liar", vif=[V(mac="00:16:3e:00:00:02")])
    victim_backend = f"/local/domain/0/backend/vif/{victim}/0"
    await guest_writes(client, f"/local/domain/{liar}/device/vif/0/backend", victim_backend)
    await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=liar))
    assert hypervisor.hv.xenstore.exists(victim_backend)
    assert not hypervisor.hv.xenstore.exists(f"/local/domain/0/backend/vif/{liar}")
    liar2, client2 = await hypervisor.create_domain("liar2", vif=[V(mac="00:16:3e:00:00:03")])
    await guest_writes(client2, f"/local/domain/{liar2}/device/vif/0/backend", "/local")
    await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=liar2))
    assert hypervisor.hv.xenstore.exists(victim_backend)
    assert hypervisor.hv.xenstore.exists(f"/local/domain/{victim}/device/vif/0")
    check_invariants(hypervisor.hv)


async def test_network_detach_never_follows_the_guests_backend_key(hypervisor):
    victim, _ = await hypervisor.create_domain("victim", vif=[V(mac=MAC)])
    liar, client = await hypervisor.create_domain("liar", vif=[V(mac="00:16:3e:00:00:02")])
    victim_backend = f"/local/domain/0/backend/vif/{victim}/0"
    await guest_writes(client, f"/local/domain/{liar}/device/vif/0/backend", victim_backend)
    await hypervisor.dom0.domains.NetworkDetach(domains_pb2.NetworkDetachRequest(
        domain=common_pb2.DomainRef(domid=liar), device="0", force=True, timeout=0.2))
    xs = hypervisor.hv.xenstore
    assert xs.exists(victim_backend)
    read = hypervisor.dom0.xenstore.Read
    for key, value in (("online", b"1"), ("state", b"1")):
        assert (await read(xenstore_pb2.PathRequest(path=f"{victim_backend}/{key}"))).value == value
    assert not xs.exists(f"/local/domain/0/backend/vif/{liar}/0")


async def test_the_toolstack_keeps_its_own_record_of_a_vifs_mac(hypervisor):
    """A guest rewriting the mac in its frontend directory neither frees its
    address on the bridge for another domain nor blocks the one it names."""
    liar, client = await hypervisor.create_domain("liar", vif=[V(mac=MAC)])
    await guest_writes(client, f"/local/domain/{liar}/device/vif/0/mac", "00:16:3e:00:00:99")
    await refused(hypervisor, create(hypervisor, V(mac=MAC), name="b"),
                  grpc.StatusCode.ALREADY_EXISTS, MAC)
    await create(hypervisor, V(mac="00:16:3e:00:00:99"), name="c")
    listing = await hypervisor.dom0.domains.NetworkList(common_pb2.DomainRef(domid=liar))
    assert [v.mac for v in listing.vifs] == [MAC]
    await hypervisor.dom0.domains.NetworkDetach(domains_pb2.NetworkDetachRequest(
        domain=common_pb2.DomainRef(domid=liar), device=MAC, force=True, timeout=0.2))
    assert not (await hypervisor.dom0.domains.NetworkList(common_pb2.DomainRef(domid=liar))).vifs


async def test_detaching_a_vif_whose_backend_already_closed_does_not_wait(hypervisor, caplog):
    """libxl__initiate_device_generic_remove leaves a Closed backend Closed
    (say, netback disabled the vif after a fatal error): the detach then
    completes without force instead of waiting for a Closed that was
    overwritten with Closing (and then removing the device forcibly)."""
    domid, _ = await hypervisor.create_domain("guest", vif=[V(mac=MAC)])
    backend = f"/local/domain/0/backend/vif/{domid}/0"
    await hypervisor.dom0.xenstore.Write(xenstore_pb2.WriteRequest(path=f"{backend}/state",
                                                                   value=b"6"))
    await asyncio.wait_for(hypervisor.dom0.domains.NetworkDetach(domains_pb2.NetworkDetachRequest(
        domain=common_pb2.DomainRef(domid=domid), device="0", timeout=1.0)), 30)
    assert not any("forcibly" in r.getMessage() for r in caplog.records)
    assert not hypervisor.hv.xenstore.exists(backend)
    assert not hypervisor.hv.xenstore.exists(f"/local/domain/{domid}/device/vif/0")
    check_invariants(hypervisor.hv)
