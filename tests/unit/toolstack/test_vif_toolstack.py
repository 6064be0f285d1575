"""The toolstack's vif nodes (libxl_nic.c): what Create and network-attach
write to xenstore, refusals that leave nothing half-created, detach, destroy."""
import grpc
import pytest

from xenlab.proto import common_pb2, domains_pb2, xenstore_pb2


async def read(client, path):
    return (await client.xenstore.Read(xenstore_pb2.PathRequest(path=path))).value.decode()


async def exists(client, path):
    try:
        await read(client, path)
        return True
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
        return False


async def create(lab, name, *vifs, **kw):
    return await lab.create_domain(name, vif=[domains_pb2.VifSpec(**v) for v in vifs], **kw)


async def test_create_writes_backend_and_frontend_dirs(hypervisor):
    domid, client = await create(hypervisor, "web", dict(mac="00:16:3e:00:00:01", ip="10.0.0.1/24"),
                                 dict(bridge="xenbr1", rate="10Mb/s", mtu=9000))
    dom0 = hypervisor.dom0
    back = f"/local/domain/0/backend/vif/{domid}/0"
    front = f"/local/domain/{domid}/device/vif/0"
    assert await read(dom0, f"{back}/frontend") == front
    assert await read(dom0, f"{back}/frontend-id") == str(domid)
    for key, value in {"online": "1", "state": "1", "mac": "00:16:3e:00:00:01", "bridge": "xenbr0",
                       "handle": "0", "type": "vif", "hotplug-status": "", "ip": "10.0.0.1/24",
                       "script": "vif-bridge"}.items():
        assert await read(dom0, f"{back}/{key}") == value, key
    for key, value in {"backend": back, "backend-id": "0", "state": "1", "handle": "0",
                       "mac": "00:16:3e:00:00:01", "mtu": "1500"}.items():
        assert await read(dom0, f"{front}/{key}") == value, key
    back1 = f"/local/domain/0/backend/vif/{domid}/1"
    assert await read(dom0, f"{back1}/bridge") == "xenbr1"
    assert await read(dom0, f"{back1}/rate") == "10Mb/s"
    assert await read(dom0, f"/local/domain/{domid}/device/vif/1/mtu") == "9000"
    # A random MAC under Xen's OUI, 4th octet masked with 0x7f, stable in xenstore.
    mac = await read(dom0, f"/local/domain/{domid}/device/vif/1/mac")
    assert mac.startswith("00:16:3e:") and int(mac.split(":")[3], 16) <= 0x7F
    # The frontend may read its own dir and the backend dir, not write the backend's.
    assert await read(client, f"{back}/mac") == "00:16:3e:00:00:01"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.xenstore.Write(xenstore_pb2.WriteRequest(path=f"{back}/state", value=b"4"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await client.xenstore.Write(xenstore_pb2.WriteRequest(path=f"{front}/state", value=b"2"))


@pytest.mark.parametrize("vif, code, words", [
    (dict(mac="01:16:3e:00:00:01"), grpc.StatusCode.INVALID_ARGUMENT, "multicast"),
    (dict(mac="zz"), grpc.StatusCode.INVALID_ARGUMENT, "MAC"),
    (dict(ip="10.0.0.300"), grpc.StatusCode.INVALID_ARGUMENT, "ip"),
    (dict(mtu=20), grpc.StatusCode.INVALID_ARGUMENT, "mtu"),
    (dict(backend="nosuch"), grpc.StatusCode.NOT_FOUND, "nosuch"),
])
async def test_bad_vifs_are_refused_and_nothing_is_left(hypervisor, vif, code, words):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(hypervisor, "bad", dict(mac="00:16:3e:00:00:09"), vif)
    assert err.value.code() == code and words in err.value.details()
    listing = await hypervisor.dom0.domains.List(common_pb2.Empty())
    assert [d.name for d in listing.domains] == ["Domain-0"]
    assert not await exists(hypervisor.dom0, "/local/domain/0/backend/vif/1")


async def test_duplicate_mac_on_one_bridge_is_refused_but_fine_on_another(hypervisor):
    await create(hypervisor, "a", dict(mac="00:16:3e:00:00:01"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(hypervisor, "b", dict(mac="00:16:3e:00:00:01"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "xenbr0" in err.value.details()
    await create(hypervisor, "c", dict(mac="00:16:3e:00:00:01", bridge="xenbr1"))


async def test_network_attach_list_detach_and_destroy(hypervisor):
    domid, _ = await create(hypervisor, "web", dict(mac="00:16:3e:00:00:01"))
    dom0 = hypervisor.dom0
    ref = common_pb2.DomainRef(name="web")
    info = await dom0.domains.NetworkAttach(domains_pb2.NetworkAttachRequest(
        domain=ref, vif=domains_pb2.VifSpec(mac="00:16:3e:00:00:02", ip="10.0.0.2")))
    assert (info.devid, info.mac, info.bridge, info.vifname) == (1, "00:16:3e:00:00:02", "xenbr0", f"vif{domid}.1")
    listing = await dom0.domains.NetworkList(ref)
    assert [(v.devid, v.state, v.backend_state, v.evtchn) for v in listing.vifs] == [(0, 1, 1, -1), (1, 1, 1, -1)]
    # No backend is running to close the devices: detach waits, then removes
    # the device forcibly (libxl's remove after its timeout); -f as well.
    await dom0.domains.NetworkDetach(domains_pb2.NetworkDetachRequest(
        domain=ref, device="00:16:3e:00:00:02", force=True, timeout=0.2))
    assert [v.devid for v in (await dom0.domains.NetworkList(ref)).vifs] == [0]
    await dom0.domains.NetworkDetach(domains_pb2.NetworkDetachRequest(domain=ref, device="0", timeout=0.2))
    assert not (await dom0.domains.NetworkList(ref)).vifs
    assert not await exists(dom0, f"/local/domain/0/backend/vif/{domid}/0")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await dom0.domains.NetworkDetach(domains_pb2.NetworkDetachRequest(domain=ref, device="7"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await dom0.domains.Destroy(ref)


async def test_network_list_of_another_domain_needs_privilege(hypervisor):
    await create(hypervisor, "a", dict())
    _, b = await create(hypervisor, "b", dict())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await b.domains.NetworkList(common_pb2.DomainRef(name="a"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
