"""`xenlab ip link`: the command line, good and bad, without a lab."""
import pytest

from xenlab.cli import ip
from xenlab.cli.bridge import Usage
from xenlab.cli.main import main
from xenlab.proto import agent_pb2


@pytest.mark.parametrize("argv, cmd", [
    (["link"], ip.IpCommand("", "show")),
    (["link", "show"], ip.IpCommand("", "show")),
    (["l", "sh", "vif1.0"], ip.IpCommand("", "show", "vif1.0")),
    (["link", "list", "dev", "veth1.0"], ip.IpCommand("", "show", "veth1.0")),
    (["link", "set", "dev", "vif1.0", "down"], ip.IpCommand("", "set", "vif1.0", False)),
    (["link", "set", "vif1.0", "up"], ip.IpCommand("", "set", "vif1.0", True)),
    (["l", "s", "vif1.0", "up"], ip.IpCommand("", "set", "vif1.0", True)),
    (["link", "set", "up", "dev", "vif1.0"], ip.IpCommand("", "set", "vif1.0", True)),
    (["-n", "web", "link", "set", "eth0", "down"], ip.IpCommand("web", "set", "eth0", False)),
    (["-netns", "3", "link", "show"], ip.IpCommand("3", "show")),
    (["-n", "Domain-0", "link"], ip.IpCommand("", "show")),
    (["-n", "0", "link"], ip.IpCommand("", "show")),
])
def test_good_command_lines(argv, cmd):
    assert ip.parse(argv) == cmd


@pytest.mark.parametrize("argv, message, status", [
    ([], "Usage: xenlab ip", 255),
    (["route"], 'Object "route" is unknown, try "xenlab ip help".', 255),
    (["link", "add", "x"], 'Command "add" is unknown, try "xenlab ip link help".', 255),
    (["link", "set", "down"], 'Not enough information: "dev" argument is required.', 255),
    (["link", "set", "vif1.0"], 'Error: nothing to set on "vif1.0": say "up" or "down".', 255),
    (["link", "set", "vif1.0", "up", "down"], 'Error: either "up" is duplicate, or "down" is a garbage.', 255),
    (["link", "set", "vif1.0", "vif2.0", "up"], 'Error: either "dev" is duplicate, or "vif2.0" is a garbage.', 255),
    (["link", "set", "dev"], 'Error: argument "dev" needs a device name.', 255),
    (["link", "show", "a", "b"], 'Error: either "dev" is duplicate, or "b" is a garbage.', 255),
    (["-n"], 'Option "-n" needs an argument', 255),
    (["-n", "", "link"], "the domain's name or id is empty", 255),
    (["-x", "link"], 'Option "-x" is unknown', 255),
    (["--help"], "Usage: xenlab ip [-n DOMAIN] link show", 0),
    (["link", "help"], "Usage: xenlab ip [-n DOMAIN] link show", 0),
])
def test_bad_command_lines_are_one_clear_message(argv, message, status):
    with pytest.raises(Usage) as err:
        ip.parse(argv)
    assert message in str(err.value) and err.value.status == status


def test_a_mistake_is_reported_before_any_lab_is_looked_for(tmp_path, capsys):
    # No lab in this rundir: the usage error still comes first, in one line.
    assert main(["ip", "--rundir", str(tmp_path), "link", "set", "vif1.0", "sideways"],
                {}) == 255
    err = capsys.readouterr().err.strip()
    assert err == 'Error: either "dev" is duplicate, or "sideways" is a garbage.'


def test_help_needs_no_lab(tmp_path, capsys):
    assert main(["ip", "--rundir", str(tmp_path), "--help"], {}) == 0
    assert capsys.readouterr().out.startswith("Usage: xenlab ip")


def test_no_lab_is_one_line(tmp_path, capsys):
    assert main(["ip", "--rundir", str(tmp_path), "link"], {}) == 1
    err = capsys.readouterr().err
    assert err.startswith("xenlab ip: ") and err.count("\n") == 1


def test_links_print_in_index_order():
    stats = [agent_pb2.InterfaceStats(name="veth2.0", ifindex=4, mtu=1500, admin_up=True,
                                      carrier=False, mac="00:00:00:00:00:00"),
             agent_pb2.InterfaceStats(name="vif2.0", ifindex=3, mtu=1500, admin_up=True,
                                      carrier=True, mac="00:16:3e:00:00:02", master="xenbr0")]
    assert ip.format_links(stats, driver_domain=True).splitlines() == [
        "3: vif2.0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master xenbr0 state UP mode DEFAULT group default",
        "    link/ether fe:ff:ff:ff:ff:ff brd ff:ff:ff:ff:ff:ff",
        "4: veth2.0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 state DOWN mode DEFAULT group default",
        "    link/ether 00:00:00:00:00:00 brd ff:ff:ff:ff:ff:ff",
    ]
