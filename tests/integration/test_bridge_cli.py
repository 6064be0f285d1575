"""`xenlab bridge` and `xenlab brctl` as a user runs them: real processes
against a bridge service registered in a hypervisor's xenstore; their output
against iproute2's for a Linux bridge on this machine."""
from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
import pytest_asyncio

from xenlab.bridge import output
from xenlab.bridge.server import BridgeService
from xenlab.cli.bridge import parse_json_fdb
from xenlab.proto import bridge_pb2

import linux_bridge

BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes.fromhex("00163e0000") + bytes([n])


def frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x88\xb5" + bytes(46)


@pytest_asyncio.fixture
async def lab(hypervisor, sock_dir):
    service = BridgeService(["xenbr0", "xenbr1"], f"unix:{sock_dir}/veth.sock",
                            f"unix:{sock_dir}/api.sock", rundir=hypervisor.rundir)
    await service.start()
    for n, port in ((1, "vif1.0"), (2, "vif2.0"), (3, "vif3.0")):
        service.add_port("xenbr0", port, mac(n))
        service.inject("xenbr0", port, [frame(BCAST, mac(n))])
    service.add_port("xenbr1", "vif4.0", mac(4))
    service.inject("xenbr1", "vif4.0", [frame(BCAST, mac(4))])
    service.env = {**os.environ, "XENLAB_RUNDIR": str(hypervisor.rundir)}
    try:
        yield service
    finally:
        await service.stop(grace=0)


async def run(lab, *args: str, command: str = "bridge") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xenlab.cli.main", command, *args, env=lab.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_fdb_show_lists_every_bridge_as_iproute2(lab):
    rc, out, err = await run(lab, "fdb", "show")
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        "00:16:3e:00:00:01 dev vif1.0 master xenbr0 ",
        "00:16:3e:00:00:02 dev vif2.0 master xenbr0 ",
        "00:16:3e:00:00:03 dev vif3.0 master xenbr0 ",
        "00:16:3e:00:00:04 dev vif4.0 master xenbr1 ",
    ]
    rc, out, _ = await run(lab, "-j", "fdb", "show", "br", "xenbr0")
    entries = parse_json_fdb(out)
    assert [(e["mac"], e["ifname"], e["master"], e["state"]) for e in entries] == [
        ("00:16:3e:00:00:0%d" % n, f"vif{n}.0", "xenbr0", "") for n in (1, 2, 3)]
    rc, out, _ = await run(lab, "f", "sh", "dev", "vif2.0")          # abbreviated, as iproute2
    assert out == "00:16:3e:00:00:02 master xenbr0 \n"


async def test_fdb_add_replace_del(lab):
    assert (await run(lab, "fdb", "add", "00:16:3e:00:00:09", "dev", "vif3.0", "master", "static"))[0] == 0
    rc, _, err = await run(lab, "fdb", "add", "00:16:3e:00:00:09", "dev", "vif3.0", "master", "static")
    assert (rc, err) == (255, "RTNETLINK answers: File exists\n")
    assert (await run(lab, "fdb", "replace", "00:16:3e:00:00:09", "dev", "vif2.0", "static", "sticky"))[0] == 0
    entry = lab.bridge("xenbr0").fdb.get(mac(9))
    assert (entry.port, entry.static, entry.sticky) == ("vif2.0", True, True)
    rc, out, _ = await run(lab, "fdb", "show", "br", "xenbr0", "state", "static")
    assert out == "00:16:3e:00:00:09 dev vif2.0 sticky master xenbr0 static\n"
    assert (await run(lab, "fdb", "add", "00:16:3e:00:00:0a", "dev", "vif1.0"))[0] == 0
    assert lab.bridge("xenbr0").fdb.get(mac(10)).local                 # iproute2's default: permanent
    assert (await run(lab, "fdb", "del", "00:16:3e:00:00:09", "dev", "vif2.0", "master"))[0] == 0
    rc, _, err = await run(lab, "fdb", "del", "00:16:3e:00:00:09", "dev", "vif2.0", "master")
    assert (rc, err) == (255, "RTNETLINK answers: No such file or directory\n")


@pytest.mark.parametrize("args,message,status", [
    (["-x", "fdb", "show"], 'Option "-x" is unknown, try "bridge help".', 255),
    (["foo"], 'Object "foo" is unknown, try "bridge help".', 255),
    (["fdb", "foo"], 'Command "foo" is unknown, try "bridge fdb help".', 255),
    (["fdb", "add", "00:16:3e:00:00:09"], "Device and address are required arguments.", 255),
    (["fdb", "add", "00:16:3e:00:00", "dev", "vif1.0"], "Invalid mac address 00:16:3e:00:00", 255),
    (["fdb", "add", "00:16:3e:00:00:09", "dev", "nope"], 'Cannot find device "nope"', 255),
    (["fdb", "add", "00:16:3e:00:00:09", "dev", "vif1.0", "bogus"],
     'Error: either "to" is duplicate, or "bogus" is a garbage.', 255),
    (["fdb", "replace", "00:16:3e:00:00:09", "dev", "vif1.0", "sticky"], "RTNETLINK answers: Invalid argument", 255),
    (["fdb", "show", "br", "nope"], 'Cannot find bridge device "nope"', 255),
    (["link", "set", "dev", "vif1.0", "learning", "maybe"],
     'Error: argument of "learning" must be one of "off", "on", not "maybe"', 234),
    (["link", "set", "dev", "vif1.0", "state", "bogus"], "Error: invalid STP port state", 255),
    (["link", "set", "dev", "vif1.0", "state", "9"], "RTNETLINK answers: Invalid argument", 255),
    (["link", "set", "dev", "vif1.0", "priority", "99"], "RTNETLINK answers: Numerical result out of range", 255),
    (["link", "set", "dev", "nope", "learning", "on"], 'Cannot find bridge device "nope"', 255),
    (["link", "show", "dev", "nope"], 'Cannot find device "nope"', 255),
    (["monitor", "bogus"], 'Argument "bogus" is unknown, try "bridge monitor help".', 255),
])
async def test_mistakes_are_one_line_as_iproute2(lab, args, message, status):
    rc, out, err = await run(lab, *args)
    assert (rc, out, err) == (status, "", message + "\n")


async def test_link_show_and_set(lab):
    rc, out, _ = await run(lab, "link", "show")
    assert out.splitlines()[0] == ("1: vif1.0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master xenbr0 "
                                   "state forwarding priority 32 cost 2 ")
    assert len(out.splitlines()) == 4
    for args in (["learning", "off", "bcast_flood", "off", "hairpin", "on"], ["state", "disabled"],
                 ["priority", "40", "cost", "100"], ["isolated", "on", "locked", "on"]):
        assert (await run(lab, "link", "set", "dev", "vif2.0", *args))[0] == 0
    rc, out, _ = await run(lab, "-d", "-j", "link", "show", "dev", "vif2.0")
    (port,) = json.loads(out)
    assert {k: port[k] for k in ("state", "priority", "cost", "learning", "bcast_flood", "hairpin",
                                 "isolated", "locked", "flood")} == {
        "state": "disabled", "priority": 40, "cost": 100, "learning": False, "bcast_flood": False,
        "hairpin": True, "isolated": True, "locked": True, "flood": True}
    rc, out, _ = await run(lab, "-d", "link", "show")
    assert "fdb_policy linux" in out.splitlines()[0]


async def test_monitor_shows_fdb_and_link_changes(lab):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xenlab.cli.main", "bridge", "monitor", "fdb", "link", env=lab.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        br = lab.bridge("xenbr0")
        # The monitor is in place once its stream has subscribed.
        for _ in range(500):
            if len(lab._subscriptions) == 2:          # one stream per bridge
                break
            await asyncio.sleep(0.02)
        lab.inject("xenbr0", "vif1.0", [frame(BCAST, mac(21))])
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line.decode() == "[NEIGH]00:16:3e:00:00:15 dev vif1.0 master xenbr0 \n"
        br.set_port_flags("vif3.0", state="disabled")
        lab.publish(br)
        br.fdb.delete(mac(21))
        lab.publish(br)
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 10)).decode() for _ in range(2)]
        assert lines[0].startswith("[LINK]3: vif3.0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 "
                                   "master xenbr0 state disabled")
        assert lines[1] == "[NEIGH]Deleted 00:16:3e:00:00:15 dev vif1.0 master xenbr0 \n"
    finally:
        proc.terminate()
        await proc.wait()


async def test_brctl_show_and_showmacs(lab):
    rc, out, _ = await run(lab, "show", command="brctl")
    lines = out.splitlines()
    assert lines[0] == output.BRCTL_SHOW_HEADER
    assert lines[1].startswith("xenbr0\t\t8000.00163e000001\tno\t\tvif1.0")
    rc, out, _ = await run(lab, "showmacs", "xenbr1", command="brctl")
    assert out.splitlines()[1].startswith("  1\t00:16:3e:00:00:04\tno\t\t")
    rc, _, err = await run(lab, "showmacs", "nope", command="brctl")
    assert rc == 1 and err.count("\n") == 1


# -- against iproute2 ----------------------------------------------------------------------
@pytest.mark.skipif(linux_bridge.unavailable() is not None, reason=linux_bridge.unavailable() or "")
async def test_iproute2s_and_xenlabs_fdb_show_parse_the_same(lab):
    """`bridge -j fdb show` of a Linux bridge and `xenlab bridge -j fdb show`
    go through the same parser (json.loads + parse_json_fdb) to the same
    structure; and xenlab's text printer, fed the kernel's JSON, writes the
    kernel's `bridge fdb show` text byte for byte."""
    with linux_bridge.LinuxBridge(["p1", "p2"]) as kernel:
        kernel.wires["p1"].send(frame(BCAST, bytes.fromhex("020000000001")))
        kernel.bridge("fdb", "add", "02:00:00:00:00:09", "dev", "p2", "master", "static", "sticky")
        kernel.bridge("fdb", "add", "02:00:00:00:00:0a", "dev", "p2", "master")
        kernel.bridge("fdb", "add", "02:00:00:00:00:0b", "dev", "p1", "master", "dynamic")
        theirs = parse_json_fdb(kernel.bridge("-j", "fdb", "show", "br", "br0"))
        their_text = [line for line in kernel.bridge("fdb", "show", "br", "br0").splitlines()
                      if " master " in line]
        their_stats = [line for line in kernel.bridge("-s", "fdb", "show", "br", "br0").splitlines()
                       if " master " in line]
        their_pretty = kernel.bridge("-j", "-p", "fdb", "show", "br", "br0")
    await run(lab, "fdb", "add", "00:16:3e:00:00:09", "dev", "vif2.0", "master", "static", "sticky")
    await run(lab, "fdb", "add", "00:16:3e:00:00:0a", "dev", "vif2.0", "master")
    ours = parse_json_fdb((await run(lab, "-j", "fdb", "show"))[1])

    def shape(entries):
        return {(tuple(e), tuple(type(v).__name__ for v in e.values()), e["state"], tuple(e["flags"]))
                for e in entries}
    assert shape(theirs) == shape(ours)
    records = [bridge_pb2.FdbRecord(mac=e["mac"], port=e["ifname"], bridge=e["master"], state=e["state"],
                                    sticky="sticky" in e["flags"]) for e in theirs]
    assert output.format_fdb_show(records).splitlines() == their_text
    assert output.dumps(json.loads(their_pretty), pretty=True) + "\n" == their_pretty
    used = [line.split(" used ")[1].split(" ")[0] for line in their_stats]
    stats_records = [bridge_pb2.FdbRecord(mac=r.mac, port=r.port, bridge=r.bridge, state=r.state,
                                          sticky=r.sticky, used=float(u.split("/")[0]),
                                          updated=float(u.split("/")[1])) for r, u in zip(records, used)]
    assert output.format_fdb_show(stats_records, stats=True).splitlines() == their_stats


async def test_vlan_show_add_del(lab):
    rc, out, _ = await run(lab, "vlan", "show", "dev", "vif1.0")
    assert out == "port              vlan-id  \nvif1.0            1 PVID Egress Untagged\n\n"
    assert (await run(lab, "vlan", "add", "vid", "10", "dev", "vif1.0", "pvid", "untagged"))[0] == 0
    assert (await run(lab, "vlan", "add", "vid", "20-21", "dev", "vif1.0"))[0] == 0
    assert (await run(lab, "vlan", "del", "vid", "1", "dev", "vif1.0"))[0] == 0
    rc, out, _ = await run(lab, "vlan", "show", "dev", "vif1.0")
    assert out.splitlines() == ["port              vlan-id  ",
                                "vif1.0            10 PVID Egress Untagged",
                                "                  20",
                                "                  21",
                                ""]
    rc, out, _ = await run(lab, "-j", "vlan", "show", "dev", "vif1.0")
    assert json.loads(out) == [{"ifname": "vif1.0", "vlans": [
        {"vlan": 10, "flags": ["PVID", "Egress Untagged"]}, {"vlan": 20}, {"vlan": 21}]}]
    rc, _, err = await run(lab, "vlan", "add", "vid", "5000", "dev", "vif1.0")
    assert (rc, err) == (255, 'Invalid VLAN ID "5000"\n')
    rc, _, err = await run(lab, "vlan", "del", "vid", "30", "dev", "vif1.0")
    assert (rc, err) == (255, "RTNETLINK answers: No such file or directory\n")
