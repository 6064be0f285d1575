"""brctl show and bridge fdb show layouts."""
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


def test_bridge_fdb_show_lines():
    learned = bridge_pb2.FdbRecord(mac="00:16:3e:00:00:01", bridge="xenbr0", port="vif1.0",
                                   used=3.7, updated=12.2, expires_in=287.8)
    static = bridge_pb2.FdbRecord(mac="00:16:3e:00:00:09", bridge="xenbr0", port="vif2.0",
                                  static=True, used=0, updated=40)
    assert output.format_fdb_show([learned, static]) == (
        "00:16:3e:00:00:01 dev vif1.0 master xenbr0\n"
        "00:16:3e:00:00:09 dev vif2.0 master xenbr0 static\n")
    assert output.format_fdb_show([learned, static], stats=True) == (
        "00:16:3e:00:00:01 dev vif1.0 used 3/12 master xenbr0\n"
        "00:16:3e:00:00:09 dev vif2.0 used 0/40 master xenbr0 static\n")
    assert output.format_fdb_show([]) == ""


def test_brctl_showmacs():
    rec = bridge_pb2.FdbRecord(mac="00:16:3e:00:00:01", port_no=2, updated=4.5)
    assert output.format_showmacs([rec]).splitlines() == [
        "port no\tmac addr\t\tis local?\tageing timer",
        "  2\t00:16:3e:00:00:01\tno\t\t   4.50",
    ]
