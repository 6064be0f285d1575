"""The bridge service in-process: real veth links on unix sockets, the gRPC
API over a unix socket, and registration in a real hypervisor's xenstore."""
import asyncio
import errno
import os
import shutil

import grpc
import pytest
import pytest_asyncio

from xenlab.bridge.server import BridgeService
from xenlab.net.veth import VethError, connect_veth
from xenlab.proto import bridge_pb2, bridge_pb2_grpc, xenstore_pb2
from xenlab.testing import eventually, short_tempdir
from xenlab.xen.errors import XenError

BCAST = b"\xff" * 6
MACS = {name: bytes.fromhex(f"00163e0000{n:02x}") for n, name in enumerate(("vif1.0", "vif2.0", "vif3.0"), 1)}


def text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def arp_request(src: bytes) -> bytes:
    return BCAST + src + b"\x08\x06" + bytes(28)


def unicast(dst: bytes, src: bytes, tag: bytes = b"") -> bytes:
    return dst + src + b"\x08\x06" + tag + bytes(28)


class Lab:
    def __init__(self, service, tmp):
        self.service = service
        self.tmp = tmp
        self.channel = grpc.aio.insecure_channel(service.grpc_address)
        self.api = bridge_pb2_grpc.BridgeStub(self.channel)
        self.ends = {}
        self.got = {}

    async def connect(self, name, bridge="xenbr0"):
        end = await connect_veth(self.service.veth_address, name, {"bridge": bridge, "mac": text(MACS[name])})
        self.got[name] = []
        end.receiver = self.got[name].extend
        self.ends[name] = end
        await eventually(lambda: name in self.service.bridge(bridge).ports, f"{name} on {bridge}")
        return end

    async def quiet(self):
        """Let frames in flight land (a round trip through every link)."""
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def lab():
    tmp = short_tempdir()
    service = BridgeService(["xenbr0", "xenbr1"], listen=f"unix:{tmp}/veth.sock",
                            grpc=f"unix:{tmp}/bridge.sock")
    await service.start()
    lab = Lab(service, tmp)
    try:
        yield lab
    finally:
        for end in lab.ends.values():
            end.close()
        await lab.channel.close()
        await service.stop(grace=0.2)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest_asyncio.fixture
async def three(lab):
    for name in ("vif1.0", "vif2.0", "vif3.0"):
        await lab.connect(name)
    return lab


async def test_a_broadcast_floods_to_the_two_other_ends_only(three):
    request = arp_request(MACS["vif1.0"])
    three.ends["vif1.0"].transmit([request])
    await eventually(lambda: three.got["vif2.0"] and three.got["vif3.0"], "the flood at vif2.0 and vif3.0")
    await three.quiet()
    assert three.got == {"vif1.0": [], "vif2.0": [request], "vif3.0": [request]}


async def test_a_reply_reaches_only_the_learned_end(three):
    three.ends["vif1.0"].transmit([arp_request(MACS["vif1.0"])])
    await eventually(lambda: three.got["vif2.0"], "vif1.0's request at vif2.0")
    reply = unicast(MACS["vif1.0"], MACS["vif2.0"], b"reply")
    three.ends["vif2.0"].transmit([reply])
    await eventually(lambda: three.got["vif1.0"], "the reply at vif1.0")
    await three.quiet()
    assert three.got["vif1.0"] == [reply]
    assert reply not in three.got["vif3.0"] and reply not in three.got["vif2.0"]


async def test_batches_keep_order_and_go_out_once_per_port(three):
    for name in ("vif2.0", "vif3.0"):
        three.ends[name].transmit([arp_request(MACS[name])])
    await eventually(lambda: len(three.got["vif1.0"]) == 2, "the two requests at vif1.0")
    batch = [unicast(MACS["vif2.0" if i % 2 else "vif3.0"], MACS["vif1.0"], bytes([i])) for i in range(200)]
    three.ends["vif1.0"].transmit(batch)
    await eventually(lambda: len(three.got["vif2.0"]) + len(three.got["vif3.0"]) >= 202,
                     "the batch at vif2.0 and vif3.0")
    assert [f for f in three.got["vif2.0"] if f in batch] == batch[1::2]
    assert [f for f in three.got["vif3.0"] if f in batch] == batch[0::2]


async def test_show_fdb_lists_each_mac_on_its_port(three):
    for name, end in three.ends.items():
        end.transmit([arp_request(MACS[name])])
    await eventually(lambda: len(three.service.bridge().fdb) == 3, "three learned MACs")
    table = await three.api.ShowFdb(bridge_pb2.ShowFdbRequest(bridge="xenbr0", stats=True))
    assert {(e.mac, e.port) for e in table.entries} == {(text(m), n) for n, m in MACS.items()}
    assert all(e.HasField("expires_in") and 0 < e.expires_in <= 300 for e in table.entries)
    assert f"{text(MACS['vif2.0'])} dev vif2.0 used 0/0 master xenbr0" in table.text
    shown = await three.api.ShowBridges(bridge_pb2.ShowBridgesRequest())
    assert [p.name for p in shown.bridges[0].ports] == ["vif1.0", "vif2.0", "vif3.0"]
    assert shown.bridges[0].ports[0].link == "veth"
    assert shown.bridges[0].bridge_id == "8000.00163e000001"      # the lowest port address
    assert "xenbr0\t\t8000.00163e000001\tno\t\tvif1.0\n\t\t\t\t\t\t\tvif2.0" in shown.text


async def test_a_closed_link_removes_its_port_and_flushes_its_entries(three):
    watch = three.api.WatchEvents(bridge_pb2.WatchFdbRequest(bridge="xenbr0"))
    assert (await watch.read()).kind == "sync"
    for name, end in three.ends.items():
        end.transmit([arp_request(MACS[name])])
    await eventually(lambda: len(three.service.bridge().fdb) == 3, "three learned MACs")
    await three.api.AddStatic(bridge_pb2.StaticFdbRequest(mac="00:16:3e:00:00:99", port="vif3.0"))
    three.ends.pop("vif3.0").close()
    await eventually(lambda: "vif3.0" not in three.service.bridge().ports, "vif3.0's port to go")
    table = await three.api.ShowFdb(bridge_pb2.ShowFdbRequest())
    assert {e.port for e in table.entries} == {"vif1.0", "vif2.0"}
    events = [await watch.read() for _ in range(6)]
    assert [(e.kind, e.port) for e in events[:3]] == [("learn", n) for n in ("vif1.0", "vif2.0", "vif3.0")]
    assert events[3].kind == "static"
    assert sorted((e.kind, e.mac, e.static) for e in events[4:]) == [
        ("flush", "00:16:3e:00:00:03", False), ("flush", "00:16:3e:00:00:99", True)]
    watch.cancel()
    # The name is free again.
    await three.connect("vif3.0")
    three.ends["vif1.0"].transmit([arp_request(MACS["vif1.0"])])
    await eventually(lambda: three.got["vif3.0"], "the flood at vif3.0")


async def test_stats_count_every_frame(three):
    three.ends["vif1.0"].transmit([arp_request(MACS["vif1.0"]), b"runt", arp_request(bytes(6))])
    await eventually(lambda: three.service.bridge().counters["rx"] == 3, "three frames counted")
    reply = await three.api.Stats(bridge_pb2.BridgeStatsRequest(bridge="xenbr0"))
    (br,) = reply.bridges
    assert br.counters["rx"] == 3 and br.counters["forwarded"] == 1
    assert dict(br.drops) == {"runt": 1, "bad_src_mac": 1}
    ports = {p.name: p for p in br.ports}
    assert ports["vif1.0"].rx_packets == 3 and dict(ports["vif1.0"].drops) == {"runt": 1, "bad_src_mac": 1}
    assert ports["vif2.0"].tx_packets == 1 and ports["vif2.0"].link["tx_packets"] == 1
    assert br.fdb["learned"] == 1 and br.fdb["entries"] == 1


async def test_the_veth_hello_is_checked(three):
    with pytest.raises(VethError, match="no bridge named 'xenbr9'"):
        await connect_veth(three.service.veth_address, "vif4.0", {"bridge": "xenbr9"})
    with pytest.raises(VethError, match="xenbr0 already has a port named vif1.0"):
        await connect_veth(three.service.veth_address, "vif1.0", {"bridge": "xenbr0"})
    with pytest.raises(VethError, match="bad port name"):
        await connect_veth(three.service.veth_address, "a/b", {"bridge": "xenbr0"})
    # The same name on another bridge of the service is fine.
    other = await connect_veth(three.service.veth_address, "vif1.0", {"bridge": "xenbr1"})
    assert other.peer_info == {"bridge": "xenbr1", "port": "vif1.0"}
    await eventually(lambda: "vif1.0" in three.service.bridge("xenbr1").ports, "vif1.0 on xenbr1")
    other.close()


async def test_port_flags_through_the_api(three):
    info = await three.api.SetPortFlags(bridge_pb2.SetPortFlagsRequest(port="vif3.0", bcast_flood=False))
    assert (info.flood, info.bcast_flood, info.learning, info.hairpin, info.state) == \
        (True, False, True, False, "forwarding")
    three.ends["vif1.0"].transmit([arp_request(MACS["vif1.0"])])
    await eventually(lambda: three.got["vif2.0"], "vif1.0's request at vif2.0")
    await three.quiet()
    assert three.got["vif3.0"] == []


async def test_api_ports_flush_and_ageing(lab):
    info = await lab.api.AddPort(bridge_pb2.AddBridgePortRequest(bridge="xenbr1", port="tap0",
                                                                 mac="02:00:00:00:00:01"))
    assert (info.port_no, info.link, info.mac) == (1, "none", "02:00:00:00:00:01")
    await lab.api.AddStatic(bridge_pb2.StaticFdbRequest(bridge="xenbr1", mac="00:16:3e:00:00:05",
                                                        port="tap0"))
    await lab.api.SetAgeing(bridge_pb2.SetAgeingRequest(bridge="xenbr1", seconds=0))
    shown = await lab.api.ShowBridges(bridge_pb2.ShowBridgesRequest(bridge="xenbr1"))
    assert shown.bridges[0].ageing == 0 and shown.bridges[0].fdb_entries == 1
    flushed = await lab.api.Flush(bridge_pb2.FlushFdbRequest(bridge="xenbr1"))
    assert flushed.removed == 0
    flushed = await lab.api.Flush(bridge_pb2.FlushFdbRequest(bridge="xenbr1", include_static=True))
    assert flushed.removed == 1
    await lab.api.DeletePort(bridge_pb2.BridgePortRef(bridge="xenbr1", port="tap0"))
    shown = await lab.api.ShowBridges(bridge_pb2.ShowBridgesRequest(bridge="xenbr1"))
    assert list(shown.bridges[0].ports) == []


@pytest.mark.parametrize("call,request_,code", [
    ("ShowFdb", bridge_pb2.ShowFdbRequest(bridge="nope"), grpc.StatusCode.NOT_FOUND),
    ("ShowFdb", bridge_pb2.ShowFdbRequest(port="vif9.9"), grpc.StatusCode.NOT_FOUND),
    ("AddPort", bridge_pb2.AddBridgePortRequest(port="vif1.0"), grpc.StatusCode.ALREADY_EXISTS),
    ("AddPort", bridge_pb2.AddBridgePortRequest(port="bad name"), grpc.StatusCode.INVALID_ARGUMENT),
    ("AddPort", bridge_pb2.AddBridgePortRequest(port="p", mac="zz"), grpc.StatusCode.INVALID_ARGUMENT),
    ("DeletePort", bridge_pb2.BridgePortRef(port="vif9.9"), grpc.StatusCode.NOT_FOUND),
    ("AddStatic", bridge_pb2.StaticFdbRequest(mac="ff:ff:ff:ff:ff:ff", port="vif1.0"),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("AddStatic", bridge_pb2.StaticFdbRequest(mac="00:16:3e:00:00:01", port="nope"),
     grpc.StatusCode.NOT_FOUND),
    ("AddStatic", bridge_pb2.StaticFdbRequest(mac="00:16:3e:00:00:01"), grpc.StatusCode.INVALID_ARGUMENT),
    ("DeleteStatic", bridge_pb2.StaticFdbRequest(mac="00:16:3e:00:00:01"), grpc.StatusCode.NOT_FOUND),
    ("DeleteStatic", bridge_pb2.StaticFdbRequest(mac="00:16:3e:00:00"), grpc.StatusCode.INVALID_ARGUMENT),
    ("SetAgeing", bridge_pb2.SetAgeingRequest(seconds=-1), grpc.StatusCode.INVALID_ARGUMENT),
    ("SetPortFlags", bridge_pb2.SetPortFlagsRequest(port="vif1.0", state="stalled"),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("SetPortFlags", bridge_pb2.SetPortFlagsRequest(port="nope", learning=False), grpc.StatusCode.NOT_FOUND),
    ("SetPortFlags", bridge_pb2.SetPortFlagsRequest(port="vif1.0", priority=64),
     grpc.StatusCode.OUT_OF_RANGE),
    ("FdbAdd", bridge_pb2.FdbEntryRequest(mac="00:16:3e:00:00:01", port="nope"), grpc.StatusCode.NOT_FOUND),
    ("FdbAdd", bridge_pb2.FdbEntryRequest(mac="00:16:3e:00:00:01", port="vif1.0", state="sticky"),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("FdbDelete", bridge_pb2.FdbEntryRequest(mac="00:16:3e:00:00:77"), grpc.StatusCode.NOT_FOUND),
    ("SetBridge", bridge_pb2.SetBridgeRequest(fdb_policy="lru"), grpc.StatusCode.INVALID_ARGUMENT),
    ("SetBridge", bridge_pb2.SetBridgeRequest(group_fwd_mask=1), grpc.StatusCode.INVALID_ARGUMENT),
    ("Flush", bridge_pb2.FlushFdbRequest(port="nope"), grpc.StatusCode.NOT_FOUND),
    ("Stats", bridge_pb2.BridgeStatsRequest(bridge="nope"), grpc.StatusCode.NOT_FOUND),
])
async def test_bad_requests_get_specific_status_codes(three, call, request_, code):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(three.api, call)(request_)
    assert err.value.code() == code and err.value.details()
    # The service keeps serving, links included.
    shown = await three.api.ShowBridges(bridge_pb2.ShowBridgesRequest(bridge="xenbr0"))
    assert len(shown.bridges[0].ports) == 3


async def test_watching_an_unknown_bridge_is_refused(lab):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in lab.api.WatchEvents(bridge_pb2.WatchFdbRequest(bridge="nope")):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_slow_watcher_is_cut_off(lab):
    sub = lab.service.subscribe("xenbr0", backlog=3)
    br = lab.service.bridge()
    br.add_port("p")
    for n in range(5):
        br.fdb.learn(bytes.fromhex("00163e0000") + bytes([n]), "p")
    lab.service.publish(br)
    for _ in range(3):
        assert (await sub.get())[0].kind == "learn"
    with pytest.raises(XenError, match="fell more than 3 events behind") as err:
        await sub.get()
    assert err.value.errno == errno.ENOSPC


async def test_registration_in_xenstore(hypervisor):
    tmp = short_tempdir()
    service = BridgeService(["xenbr0"], listen=f"unix:{tmp}/veth.sock", grpc=f"unix:{tmp}/bridge.sock",
                            rundir=hypervisor.rundir)
    await service.start()
    try:
        xs = hypervisor.dom0.xenstore
        base = "/tool/xenlab/bridges/xenbr0"
        read = lambda key: xs.Read(xenstore_pb2.PathRequest(path=f"{base}/{key}"))  # noqa: E731
        assert (await read("address")).value == f"unix:{tmp}/veth.sock".encode()
        assert (await read("grpc")).value == f"unix:{tmp}/bridge.sock".encode()
        assert (await read("pid")).value == str(os.getpid()).encode()
        # A driver domain other than dom0 may read it, not change it.
        domid, domu = await hypervisor.create_domain("driver")
        assert (await domu.xenstore.Read(xenstore_pb2.PathRequest(path=f"{base}/address"))).value
        with pytest.raises(grpc.aio.AioRpcError):
            await domu.xenstore.Write(xenstore_pb2.WriteRequest(path=f"{base}/address", value=b"x"))
    finally:
        await service.stop(grace=0.2)
        shutil.rmtree(tmp, ignore_errors=True)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await xs.Read(xenstore_pb2.PathRequest(path=base))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_registration_without_a_hypervisor_is_a_clear_error():
    tmp = short_tempdir()
    service = BridgeService(["xenbr0"], listen=f"unix:{tmp}/veth.sock", grpc=f"unix:{tmp}/bridge.sock",
                            rundir=tmp)
    with pytest.raises(FileNotFoundError, match="no lab is running"):
        await service.start()
    assert not os.path.exists(f"{tmp}/veth.sock")
    shutil.rmtree(tmp, ignore_errors=True)


async def test_stp_and_bridge_settings_through_the_api(lab):
    api = lab.api
    info = await api.SetBridge(bridge_pb2.SetBridgeRequest(bridge="xenbr1", stp=True, priority=4096,
                                                           hello_time=1, forward_delay=2, max_age=6,
                                                           fdb_policy="ovs", fdb_max=64))
    assert (info.stp, info.priority, info.forward_delay, info.fdb_policy, info.fdb_max) == \
        (True, 4096, 2, "ovs", 64)
    assert info.root_id.startswith("1000.") and info.root_port == 0
    port = await api.AddPort(bridge_pb2.AddBridgePortRequest(bridge="xenbr1", port="p9",
                                                             mac="02:00:00:00:00:09"))
    assert (port.state, port.role) == ("listening", "designated")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.SetPortFlags(bridge_pb2.SetPortFlagsRequest(bridge="xenbr1", port="p9", state="forwarding"))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION        # EBUSY: STP owns the states
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.SetBridge(bridge_pb2.SetBridgeRequest(bridge="xenbr1", forward_delay=1, fdb_max=32))
    assert err.value.code() is grpc.StatusCode.OUT_OF_RANGE
    shown = (await api.ShowBridges(bridge_pb2.ShowBridgesRequest(bridge="xenbr1"))).bridges[0]
    assert (shown.forward_delay, shown.fdb_max) == (2, 64)           # nothing of the refused call
    info = await api.SetBridge(bridge_pb2.SetBridgeRequest(bridge="xenbr1", stp=False))
    assert not info.stp and info.ports[0].state == "forwarding"
