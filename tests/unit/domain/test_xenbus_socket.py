"""Domain-0's kernel reaches xenstore over xenstored's unix socket
(xenlab.domain.xenbus_ring.StoreSocket), in xs_wire.h messages as a guest
does over its store ring: XenbusClient's every call, xenstored's errno for
a refusal, the connection ending when xenstored goes, and gRPC when no
socket answers. Watches, transactions and long directories on either
carrier: test_xenbus_carriers."""
from __future__ import annotations

import asyncio
import errno
import logging
import shutil

import pytest

from xenlab.boot.dom0 import dom0_start_info
from xenlab.client import Rundir
from xenlab.rundir import short_tempdir
from xenlab.domain.xenbus_ring import StoreSocket, WireXenStore
from xenlab.xen import xs_wire as w
from xenlab.xen.errors import XenStoreError
from xenlab.xen.start_info import StartInfo

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def dom0(hypervisor):
    return await hypervisor.boot_dom0()


def socket_conns(hypervisor):
    return [client.conn for client in hypervisor.hv.xenstored_socket._clients]


async def test_domain0_boots_on_xenstoreds_socket(hypervisor, dom0):
    assert dom0._xenstore_carrier == "xenstored's socket"
    assert len(hypervisor.hv.xenstored_socket) == 1
    assert len(hypervisor.hv.xs_connections) == 0          # no gRPC WatchStream
    [conn] = socket_conns(hypervisor)
    # the kernel's own watches are the socket connection's (the toolstack
    # watches as Domain-0 too, in its own process: not on the socket)
    paths = {w.path for w in hypervisor.hv.xenstore.watches() if w.conn is conn}
    assert {"/local/domain/0/control/shutdown", "/local/domain/0/cpu"} <= paths
    ops = hypervisor.hv.ops
    before = (ops["xenstored/READ"], ops["XenStore/Read"])
    assert await dom0.xenbus.read("name") == "Domain-0"
    assert (ops["xenstored/READ"], ops["XenStore/Read"]) == (before[0] + 1, before[1])


async def test_a_refusal_over_the_socket_is_xenstoreds_errno(dom0):
    xb = dom0.xenbus
    with pytest.raises(XenStoreError) as info:
        await xb.write("data/not a path", "x")
    assert info.value.errno == errno.EINVAL
    assert info.value.message == "EINVAL: /local/domain/0/data/not a path"
    assert await xb.read("name") == "Domain-0"      # the connection goes on


async def test_xenstored_going_away_ends_the_xenbus_connection(hypervisor, dom0):
    """Every call outstanding and every later one fails ENOTCONN, and the
    kernel sees xenbus closed."""
    await hypervisor.hv.xenstored_socket.close()
    await asyncio.wait_for(dom0.xenbus.closed.wait(), 10)
    with pytest.raises(XenStoreError) as info:
        await dom0.xenbus.read("name")
    assert info.value.errno == errno.ENOTCONN
    assert "xenstored closed its socket" in info.value.message


async def test_no_socket_there_means_grpc_with_a_warning(hypervisor, caplog):
    start = StartInfo(domid=0, name="Domain-0", secret=hypervisor.hv.dom0_secret,
                      hypervisor=hypervisor.address, doorbell=str(hypervisor.rundir / "evtchn.sock"),
                      vcpus=1, console_log="", xenstored=str(hypervisor.rundir / "no-such-socket"))
    with caplog.at_level(logging.WARNING, logger="xenlab.domain.kernel"):
        kernel = await hypervisor.boot(start)
    assert kernel._xenstore_carrier == "gRPC"
    assert "xenstore over gRPC instead" in caplog.text
    assert len(hypervisor.hv.xenstored_socket) == 0
    assert await kernel.xenbus.read("name") == "Domain-0"


async def test_a_stream_that_is_not_xs_wire_loses_the_connection():
    """A header announcing more than XENSTORE_PAYLOAD_MAX cannot be
    resynchronised: the connection is lost, the call waiting fails."""
    where = short_tempdir()
    path = where / "xs.sock"

    async def liar(reader, writer):
        await reader.read(16)
        writer.write(w.HEADER.pack(int(w.XsType.READ), 1, 0, w.XENSTORE_PAYLOAD_MAX + 1))
        await writer.drain()
        await asyncio.sleep(5)
    server = await asyncio.start_unix_server(liar, path=str(path))
    try:
        store = await WireXenStore.connect(str(path))
        lost = []
        await store.open_watches(lambda p, t: None, lost.append)
        with pytest.raises(XenStoreError) as info:
            await asyncio.wait_for(store.read("/local/domain/0/name"), 10)
        assert info.value.errno == errno.ENOTCONN
        assert "not xs_wire" in info.value.message
        assert lost and lost[0].errno == errno.ENOTCONN
        await store.close()
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(where, ignore_errors=True)


async def test_a_socket_that_is_not_there_is_an_oserror():
    where = short_tempdir()
    try:
        with pytest.raises(OSError):
            await StoreSocket.connect(str(where / "absent.sock"))
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_dom0s_start_info_names_the_socket_only_where_one_is():
    run = Rundir(short_tempdir())
    try:
        run.create()
        run.publish_hypervisor("unix:/nowhere", "s3cret")
        assert dom0_start_info(run).xenstored == ""
        run.xenstored_socket.parent.mkdir(mode=0o700)
        run.xenstored_socket.touch()
        start = dom0_start_info(run)
        assert start.xenstored == str(run.xenstored_socket)
        assert (start.domid, start.secret) == (0, "s3cret")
    finally:
        shutil.rmtree(run.path, ignore_errors=True)
