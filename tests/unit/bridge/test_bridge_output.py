"""brctl and iproute2 bridge(8) layouts, checked against what iproute2 6.1
prints for a Linux bridge (recorded from `bridge fdb show`, `bridge -s fdb
show`, `bridge -j [-p] fdb show`, `bridge [-d] [-j] link show`)."""
import json

from xenlab.bridge import output
from xenlab.proto import bridge_pb2


def bridge(name, ports, mac="feffffffffff"):
    return bridge_pb2.BridgeInfo(name=name, bridge_id=f"8000.{mac}",
                                 ports=[bridge_pb2.BridgePortInfo(name=p) for p in ports])


def test_brctl_show_puts_the_first_port_on_the_bridge_line():
    text = output.format_brctl_show([bridge("xenbr0", ["vif1.0", "vif2.0", "vif3.0"]),
                                     bridge("xenbr1", [], "000000000000")])
    assert text.splitlines() == [
        "bridge name\tbridge id\t\tSTP enabled\tinterfaces",
        "xenbr0\t\t8000.feffffffffff\tno\t\tvif1.0",
        "\t\t\t\t\t\t\tvif2.0",
        "\t\t\t\t\t\t\tvif3.0",
        "xenbr1\t\t8000.000000000000\tno",
    ]


DYNAMIC = bridge_pb2.FdbRecord(mac="02:00:00:00:00:0c", bridge="br0", port="p1", used=4.9, updated=3.2)
PERMANENT = bridge_pb2.FdbRecord(mac="02:00:00:00:00:0b", bridge="br0", port="p1", state="permanent",
                                 static=True)
STICKY = bridge_pb2.FdbRecord(mac="02:00:00:00:00:0a", bridge="br0", port="p2", state="static",
                              static=True, sticky=True)


def test_bridge_fdb_show_lines_are_iproute2s():
    assert output.format_fdb_show([DYNAMIC, PERMANENT, STICKY]) == (
        "02:00:00:00:00:0c dev p1 master br0 \n"
        "02:00:00:00:00:0b dev p1 master br0 permanent\n"
        "02:00:00:00:00:0a dev p2 sticky master br0 static\n")
    assert output.format_fdb_show([DYNAMIC], stats=True) == "02:00:00:00:00:0c dev p1 used 4/3 master br0 \n"
    vlan = bridge_pb2.FdbRecord(mac="02:00:00:00:00:0d", bridge="br0", port="p1", vlan=10, state="static")
    assert output.format_fdb_show([vlan]) == "02:00:00:00:00:0d dev p1 vlan 10 master br0 static\n"
    assert output.format_fdb_show([]) == ""


def test_bridge_fdb_json_is_iproute2s_byte_for_byte():
    assert output.fdb_json([DYNAMIC, STICKY]) == (
        '[{"mac":"02:00:00:00:00:0c","ifname":"p1","flags":[],"master":"br0","state":""},'
        '{"mac":"02:00:00:00:00:0a","ifname":"p2","flags":["sticky"],"master":"br0","state":"static"}]\n')
    # -s -j ... dev p1: no ifname, used/updated before the flags.
    assert output.fdb_json([PERMANENT], stats=True, show_dev=False) == (
        '[{"mac":"02:00:00:00:00:0b","used":0,"updated":0,"flags":[],"master":"br0","state":"permanent"}]\n')


def test_pretty_json_is_json_writers():
    recorded = ('[ {\n'
                '        "mac": "33:33:00:00:00:01",\n'
                '        "ifname": "br0",\n'
                '        "flags": [ "self" ],\n'
                '        "state": "permanent"\n'
                '    },{\n'
                '        "mac": "02:00:00:00:00:0c",\n'
                '        "ifname": "p1",\n'
                '        "flags": [ ],\n'
                '        "master": "br0",\n'
                '        "state": ""\n'
                '    } ]')
    assert output.dumps(json.loads(recorded), pretty=True) == recorded
    assert output.dumps([]) == "[]" and output.dumps([], pretty=True) == "[ ]"


PORT = bridge_pb2.BridgePortInfo(name="p1", port_no=4, state="forwarding", priority=32, cost=2,
                                 mtu=1500, carrier=True, learning=True, flood=True, mcast_flood=True,
                                 bcast_flood=True)


def test_bridge_link_show_is_iproute2s():
    info = bridge_pb2.BridgeInfo(name="br0", ports=[PORT])
    assert output.link_show([info]) == (
        "4: p1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master br0 state forwarding priority 32 cost 2 \n")
    assert output.link_show([info], as_json=True) == (
        '[{"ifindex":4,"ifname":"p1","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,'
        '"master":"br0","state":"forwarding","priority":32,"cost":2}]\n')
    detailed = output.link_show([info], port="p1", details=True)
    assert detailed.splitlines()[1] == ("    hairpin off learning on flood on mcast_flood on bcast_flood on "
                                        "isolated off locked off ")


def test_bridge_d_link_names_the_fdb_policy():
    info = bridge_pb2.BridgeInfo(name="xenbr0", ports=[PORT], ageing=300, fdb_max=8192, fdb_learned=3,
                                 fdb_policy="ovs", priority=32768, bridge_id="8000.00163e000001")
    lines = output.link_show([info], details=True).splitlines()
    assert lines[0] == ("xenbr0: bridge ageing_time 30000 stp_state 0 priority 32768 vlan_filtering 0 "
                        "bridge_id 8000.0:16:3e:0:0:1 group_fwd_mask 0 fdb_n_learned 3 "
                        "fdb_max_learned 8192 fdb_policy ovs ")
    info.stp, info.root_id, info.root_port, info.hello_time = True, "1000.020000000001", 2, 2
    info.forward_delay, info.max_age, info.root_path_cost = 15, 20, 4
    stp_line = output.link_show([info], details=True).splitlines()[0]
    assert stp_line.startswith("xenbr0: bridge forward_delay 1500 hello_time 200 max_age 2000 "
                               "ageing_time 30000 stp_state 1 ")
    assert "designated_root 1000.2:0:0:0:0:1 root_port 2 root_path_cost 4 topology_change 0 " in stp_line
    data = json.loads(output.link_show([info], details=True, as_json=True))
    assert data[0]["linkinfo"]["info_data"]["fdb_policy"] == "ovs"


def test_monitor_lines():
    learned = bridge_pb2.FdbEvent(kind="learn", bridge="br0", mac="02:00:00:00:00:07", port="p1")
    aged = bridge_pb2.FdbEvent(kind="age", bridge="br0", mac="02:00:00:00:00:07", port="p1")
    assert output.fdb_event_fields(learned).line() == "02:00:00:00:00:07 dev p1 master br0 "
    assert output.fdb_event_fields(aged).line() == "Deleted 02:00:00:00:00:07 dev p1 master br0 "
    gone = bridge_pb2.PortEvent(kind="deleted", bridge="br0", port=PORT)
    assert output.link_event_fields(gone).line().startswith("Deleted 4: p1: <BROADCAST")


def test_brctl_showmacs():
    rec = bridge_pb2.FdbRecord(mac="00:16:3e:00:00:01", port_no=2, updated=4.5)
    local = bridge_pb2.FdbRecord(mac="00:16:3e:00:00:02", port_no=2, updated=0, state="permanent")
    assert output.format_showmacs([rec, local]).splitlines() == [
        "port no\tmac addr\t\tis local?\tageing timer",
        "  2\t00:16:3e:00:00:01\tno\t\t   4.50",
        "  2\t00:16:3e:00:00:02\tyes\t\t   0.00",
    ]
