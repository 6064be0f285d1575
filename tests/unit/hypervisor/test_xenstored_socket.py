"""xenstored's unix socket in a running hypervisor, through a client written
from xs_wire.h alone (tests/xs_client.py): every request type, the
toolstack's view of the lab, and malformed streams that each get XS_ERROR
or the connection closed while other connections keep being served."""
from __future__ import annotations

import asyncio
import logging
import os
import stat

import grpc
import pytest

import xs_client as xs
from xs_client import Closed, XsClient, XsError, z
from xenlab.hypervisor.xenstored import ConnectionLimits
from xenlab.proto import common_pb2, domains_pb2, xenstore_pb2 as xs_pb

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sock(hypervisor):
    return hypervisor.hv.rundir.xenstored_socket


@pytest.fixture
async def client(sock):
    c = await XsClient.connect(sock)
    yield c
    await c.close()


async def still_served(sock) -> None:
    other = await XsClient.connect(sock)
    try:
        assert await other.read("/local/domain/0/name") == b"Domain-0"
    finally:
        await other.close()


async def test_the_socket_is_the_owners_alone(hypervisor, sock):
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
    assert sock == hypervisor.rundir / "xenstored" / "socket"


async def test_it_lists_every_domain(hypervisor, client):
    ids = [(await hypervisor.create_domain(name))[0] for name in ("alpha", "beta")]
    assert await client.directory("/local/domain") == sorted(["0", *map(str, ids)])
    for domid, name in zip(ids, ("alpha", "beta")):
        assert await client.read(f"/local/domain/{domid}/name") == name.encode()
        assert await client.get_domain_path(domid) == f"/local/domain/{domid}"
        assert await client.is_domain_introduced(domid)
    assert not await client.is_domain_introduced(99)


async def test_write_read_and_the_grpc_service_see_the_same_store(hypervisor, client):
    await client.write("/tool/wire/v", b"bin\0ary\xff")
    assert await client.read("/tool/wire/v") == b"bin\0ary\xff"
    reply = await hypervisor.dom0.xenstore.Read(xs_pb.PathRequest(path="/tool/wire/v"))
    assert reply.value == b"bin\0ary\xff"
    await hypervisor.dom0.xenstore.Write(xs_pb.WriteRequest(path="/tool/wire/w", value=b""))
    assert await client.read("/tool/wire/w") == b""
    await client.mkdir("/tool/wire/dir")
    assert await client.directory("/tool/wire") == ["dir", "v", "w"]
    await client.write("name", "relative to /local/domain/0")
    assert await client.read("/local/domain/0/name") == b"relative to /local/domain/0"


async def test_chmod_and_a_refusal(hypervisor, client):
    domid, guest = await hypervisor.create_domain("guest")
    path = f"/local/domain/{domid}/data/secret"
    await client.write(path, "s3cret")
    await client.set_perms(path, "n0")
    assert await client.get_perms(path) == ["n0"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await guest.xenstore.Read(xs_pb.PathRequest(path=path))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await client.set_perms(path, "n0", f"r{domid}")
    assert await client.get_perms(path) == ["n0", f"r{domid}"]
    assert (await guest.xenstore.Read(xs_pb.PathRequest(path=path))).value == b"s3cret"
    with pytest.raises(XsError) as err:
        await client.set_perms(path, "q0")
    assert err.value.name == "EINVAL"


async def test_watch_sees_a_vif_attached(hypervisor, client):
    domid, _ = await hypervisor.create_domain("watched")
    await client.watch(f"/local/domain/{domid}/device", "devices")
    assert await client.next_event() == (f"/local/domain/{domid}/device", "devices")
    await hypervisor.dom0.domains.NetworkAttach(domains_pb2.NetworkAttachRequest(
        domain=common_pb2.DomainRef(domid=domid), vif=domains_pb2.VifSpec(bridge="xenbr0")))
    path, token = await client.next_event()
    assert token == "devices" and path.startswith(f"/local/domain/{domid}/device/vif")
    await client.unwatch(f"/local/domain/{domid}/device", "devices")


async def test_rm(client):
    await client.write("/tool/gone/leaf", "x")
    await client.rm("/tool/gone")
    with pytest.raises(XsError) as err:
        await client.read("/tool/gone/leaf")
    assert err.value.name == "ENOENT"
    await client.rm("/tool/gone")                   # already gone: fine, the parent exists
    with pytest.raises(XsError) as err:
        await client.rm("/tool/gone/deeper")
    assert err.value.name == "ENOENT"


async def test_a_transaction_with_a_conflicting_writer_gets_eagain_then_commits(sock, client):
    rival = await XsClient.connect(sock)
    try:
        await client.write("/tool/tx/counter", "0")
        for attempt in range(3):
            tx = await client.transaction_start()
            value = int(await client.read("/tool/tx/counter", tx))
            await client.write("/tool/tx/counter", str(value + 1), tx)
            if attempt == 0:
                await rival.write("/tool/tx/counter", "41")
            try:
                await client.transaction_end(tx)
                break
            except XsError as err:
                assert err.name == "EAGAIN"
        assert attempt == 1
        assert await rival.read("/tool/tx/counter") == b"42"
        tx = await client.transaction_start()
        await client.write("/tool/tx/aborted", "x", tx)
        await client.transaction_end(tx, commit=False)
        with pytest.raises(XsError):
            await rival.read("/tool/tx/aborted")
    finally:
        await rival.close()


async def test_directory_part_lists_what_directory_cannot(client):
    names = [f"a-rather-long-child-name-number-{i:05d}" for i in range(300)]
    for name in names:
        await client.write(f"/tool/many/{name}", "")
    with pytest.raises(XsError) as err:
        await client.directory("/tool/many")
    assert err.value.name == "E2BIG"
    assert await client.directory_all("/tool/many") == names


async def test_domain_requests_and_control(hypervisor, client, caplog):
    caplog.set_level(logging.INFO, logger="xenlab.hypervisor.xenstored")
    domid, _ = await hypervisor.create_domain("intro")
    await client.watch("@releaseDomain", "rel")
    await client.watch("@introduceDomain", "intro")
    assert sorted([await client.next_event(), await client.next_event()]) == [
        ("@introduceDomain", "intro"), ("@releaseDomain", "rel")]
    await client.release(domid)
    assert await client.next_event() == ("@releaseDomain", "rel")
    assert not await client.is_domain_introduced(domid)
    gfn = int(await client.read(f"/local/domain/{domid}/store/ring-ref"))
    port = int(await client.read(f"/local/domain/{domid}/store/port"))
    await client.introduce(domid, gfn, port)
    assert await client.next_event() == ("@introduceDomain", "intro")
    await client.resume(domid)
    await client.set_target(domid, 0)
    for call, name in [(client.release(0), "EINVAL"), (client.release(999), "ENOENT"),
                       (client.control("no-such-command"), "EINVAL")]:
        with pytest.raises(XsError) as err:
            await call
        assert err.value.name == name
    assert await client.control("print", "hello from xs_client") == b"OK\0"
    assert "control: hello from xs_client" in caplog.text
    await client.reset_watches()
    await hypervisor.create_domain("after-reset")
    assert await client.get_domain_path(0) == "/local/domain/0"
    assert client.events == []


async def test_replies_carry_their_req_id_in_order(client):
    frames = [client.frame(xs.READ, z("/local/domain/0/name"), req_id=rid) for rid in (900, 5, 77)]
    await client.send_raw(b"".join(data for _, data in frames))
    for rid in (900, 5, 77):
        type_, got, tx, payload = await client.recv()
        assert (type_, got, payload) == (xs.READ, rid, b"Domain-0")


async def test_a_header_split_across_writes(sock, client):
    _, data = client.frame(xs.READ, z("/local/domain/0/name"), req_id=31)
    for i in range(len(data)):
        await client.send_raw(data[i:i + 1])
        await asyncio.sleep(0)
        if i == 7:
            await still_served(sock)
    type_, rid, _, payload = await client.recv()
    assert (type_, rid, payload) == (xs.READ, 31, b"Domain-0")


@pytest.mark.parametrize("type_", [20, xs.WATCH_EVENT, xs.ERROR, 23, 27, 4242, xs.INVALID])
async def test_an_unknown_type_is_enosys(sock, client, type_):
    with pytest.raises(XsError) as err:
        await client.request(type_, z("/"))
    assert err.value.name == "ENOSYS"
    assert await client.read("/local/domain/0/name") == b"Domain-0"


@pytest.mark.parametrize("type_,payload", [
    (xs.READ, b"/local/domain/0/name"), (xs.WRITE, b"/tool/x"), (xs.MKDIR, b"/tool/x"),
    (xs.RM, b"/tool"), (xs.DIRECTORY, b"/tool"), (xs.GET_PERMS, b"/tool"),
    (xs.WATCH, b"/tool\0tok"), (xs.TRANSACTION_END, b"T"), (xs.GET_DOMAIN_PATH, b"0")])
async def test_a_payload_without_its_nul_is_einval(client, type_, payload):
    with pytest.raises(XsError) as err:
        await client.request(type_, payload)
    assert err.value.name == "EINVAL"
    assert await client.read("/local/domain/0/name") == b"Domain-0"


async def test_a_length_over_4096_closes_the_connection(sock, client):
    _, data = client.frame(xs.WRITE, b"/tool/x\0" + b"v" * 5000)
    await client.send_raw(data[:16] + data[16:2000])
    with pytest.raises(Closed):
        await client.recv()
    await still_served(sock)


async def test_a_flood_of_watches(hypervisor, sock, client):
    """Watches without reading: the connection stalls itself (or, past its
    limits, gets E2BIG); it never takes the hypervisor down."""
    hypervisor.hv.xenstored.limits = ConnectionLimits(watches=500)
    before = len(hypervisor.hv.xenstore.watches())      # the toolstack's @releaseDomain
    flood = await XsClient.connect(sock)
    try:
        frames = [flood.frame(xs.WATCH, z(f"/tool/flood/{i}", f"t{i}"))[1] for i in range(3000)]
        await flood.send_raw(b"".join(frames))
        await still_served(sock)
        errors, acks, events = set(), 0, 0
        while acks + len(errors) < 3000:
            try:
                type_, rid, tx, payload = await flood.recv()
            except Closed:
                break
            if type_ == xs.WATCH_EVENT:
                events += 1
            elif type_ == xs.ERROR:
                errors.add(payload)
                acks += 1
            else:
                acks += 1
        assert events == 500 and errors == {b"E2BIG\0"}
        assert len(hypervisor.hv.xenstore.watches()) == before + 500
    finally:
        await flood.close()
    await still_served(sock)
    for _ in range(100):
        if len(hypervisor.hv.xenstore.watches()) == before:
            break
        await asyncio.sleep(0.01)
    assert len(hypervisor.hv.xenstore.watches()) == before     # they went with the connection


async def test_a_client_that_never_reads_its_events_is_dropped(hypervisor, sock, client):
    hypervisor.hv.xenstored.limits = ConnectionLimits(output=20_000)
    deaf = await XsClient.connect(sock)
    try:
        await deaf.watch("/tool/noisy", "t" * 3000)
        for i in range(400):        # 1.2 MB of events: past every socket buffer
            await client.write(f"/tool/noisy/n{i}", "x")
        with pytest.raises(Closed):
            while True:
                await deaf.recv(timeout=5)
    finally:
        await deaf.close()
    await still_served(sock)
    assert not [w for w in hypervisor.hv.xenstore.watches() if w.path == "/tool/noisy"]
