"""The console shell's core: the line discipline, each command parsed, bad
input answered as the Linux tools answer it, and the renderers' layouts."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest

from xenlab.domain import shell as sh
from xenlab.domain.netstack import PingError, PingResult


# -- the line discipline ------------------------------------------------------------

def test_a_line_ends_at_cr_lf_or_cr_lf_and_is_echoed():
    s = sh.Shell("web")
    fed = s.feed(b"ip addr\r\nuptime\nhelp\r")
    assert fed.lines == ["ip addr", "uptime", "help"]
    assert fed.echo == b"ip addr\r\nuptime\r\nhelp\r\n"
    # The LF of a CR LF split across two feeds is not a second, empty line.
    assert s.feed(b"\n").lines == []


def test_a_line_may_come_in_pieces():
    s = sh.Shell("web")
    assert s.feed(b"pi").lines == []
    assert s.feed(b"ng 10.0.0.2\r").lines == ["ping 10.0.0.2"]


def test_backspace_and_del_erase_a_character_and_ctrl_u_the_line():
    s = sh.Shell("web")
    fed = s.feed(b"ipx\x7f addr\x08\x08dr\r")
    assert fed.lines == ["ip addr"]
    assert b"\b \b" in fed.echo
    assert s.feed("héé\x7f\r".encode()).lines == ["hé"]       # a UTF-8 character, not a byte
    assert s.feed(b"rm -rf\x15uptime\r").lines == ["uptime"]
    assert s.feed(b"\x7f\x7f\r").lines == [""]                 # nothing to erase: no echo, no harm


def test_ctrl_c_abandons_the_line_and_shows_a_new_prompt():
    s = sh.Shell("web")
    fed = s.feed(b"ping 10.0.0.9\x03help\r")
    assert fed.lines == ["help"]
    assert b"^C\r\nroot@web:~# " in fed.echo


def test_other_control_characters_are_ignored_and_a_long_line_is_cut():
    s = sh.Shell("web")
    assert s.feed(b"he\x1b\x00lp\r").lines == ["help"]
    fed = s.feed(b"x" * 10000 + b"\r")
    assert fed.lines == ["x" * sh.LINE_MAX]


def test_the_prompt_names_the_host():
    assert sh.Shell("db").prompt() == b"root@db:~# "


# -- parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("line, command", [
    ("help", sh.Help()),
    ("uptime", sh.Uptime()),
    ("ip addr", sh.IpAddr()),
    ("ip a", sh.IpAddr()),
    ("ip address show", sh.IpAddr()),
    ("ip addr show dev eth0", sh.IpAddr("eth0")),
    ("ip addr show eth1", sh.IpAddr("eth1")),
    ("ip neigh", sh.IpNeigh()),
    ("ip n show dev eth0", sh.IpNeigh("eth0")),
    ("ip neighbour", sh.IpNeigh()),
    ("ping 10.0.0.2", sh.Ping("10.0.0.2", sh.PING_DEFAULT_COUNT)),
    ("ping 10.0.0.2 -c 3", sh.Ping("10.0.0.2", 3)),
    ("ping -c3 10.0.0.2", sh.Ping("10.0.0.2", 3)),
    ("  uptime  ", sh.Uptime()),
])
def test_commands_parse(line, command):
    assert sh.parse(line) == command


@pytest.mark.parametrize("line", ["", "   "])
def test_an_empty_line_is_no_command(line):
    assert sh.parse(line) is None


@pytest.mark.parametrize("line, message", [
    ("foo", "-sh: foo: command not found"),
    ("ls -l", "-sh: ls: command not found"),
    ("ping", "ping: usage error: Destination address required"),
    ("ping web", "ping: web: Name or service not known"),
    ("ping 10.0.0.2 -c", "ping: option requires an argument -- 'c'"),
    ("ping 10.0.0.2 -c 0", "ping: invalid argument: '0': out of range: 1 <= value <= 1000"),
    ("ping 10.0.0.2 -c x", "ping: invalid argument: 'x': out of range: 1 <= value <= 1000"),
    ("ping 10.0.0.2 -c 1001", "ping: invalid argument: '1001': out of range: 1 <= value <= 1000"),
    ("ping -f 10.0.0.2", "ping: invalid option -- 'f'"),
    ("ping 10.0.0.2 10.0.0.3", "ping: usage error: only one destination address"),
    ("ip link", 'Object "link" is unknown, try "ip help".'),
    ("ip addr add 10.0.0.9/24 dev eth0", 'Command "add" is unknown, try "ip addr help".'),
    ("ip addr show dev", 'Command line is not complete. Try option "help"'),
    ("ip addr show eth0 eth1", 'Error: either "dev" is duplicate, or "eth1" is a garbage.'),
    ("uptime -p", "uptime: invalid option -- '-p'"),
    ("echo 'unterminated", "-sh: syntax error: No closing quotation"),
])
def test_bad_input_is_answered_in_one_clear_line(line, message):
    assert sh.parse(line) == sh.Failed(message)


def test_ip_with_no_object_prints_its_usage():
    failed = sh.parse("ip")
    assert isinstance(failed, sh.Failed) and failed.message.startswith("Usage: ip OBJECT")


# -- renderers ---------------------------------------------------------------------------

ETH0 = sh.InterfaceView(1, "eth0", bytes.fromhex("00163e000001"), 1500, True,
                        IPv4Interface("10.0.0.1/24"))
ETH1 = sh.InterfaceView(2, "eth1", bytes.fromhex("00163e000101"), 9000, False, None)


def test_ip_addr_is_iproute2s_layout():
    assert sh.render_ip_addr([ETH0, ETH1]) == (
        "1: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default\n"
        "    link/ether 00:16:3e:00:00:01 brd ff:ff:ff:ff:ff:ff\n"
        "    inet 10.0.0.1/24 brd 10.0.0.255 scope global eth0\n"
        "       valid_lft forever preferred_lft forever\n"
        "2: eth1: <BROADCAST,MULTICAST> mtu 9000 qdisc noqueue state DOWN group default\n"
        "    link/ether 00:16:3e:00:01:01 brd ff:ff:ff:ff:ff:ff\n")
    assert sh.render_ip_addr([ETH0, ETH1], "eth1").startswith("2: eth1:")
    assert sh.render_ip_addr([ETH0], "eth7") == 'Device "eth7" does not exist.\n'


def test_a_point_to_point_address_has_no_broadcast():
    view = sh.InterfaceView(1, "eth0", bytes(6), 1500, True, IPv4Interface("10.0.0.1/31"))
    assert "    inet 10.0.0.1/31 scope global eth0\n" in sh.render_ip_addr([view])


def test_ip_neigh_is_iproute2s_layout():
    entries = [sh.NeighbourView(IPv4Address("10.0.0.3"), "eth0", bytes.fromhex("00163e000003")),
               sh.NeighbourView(IPv4Address("10.0.0.2"), "eth0", bytes.fromhex("00163e000002")),
               sh.NeighbourView(IPv4Address("10.0.0.9"), "eth0", None)]
    assert sh.render_ip_neigh(entries) == (
        "10.0.0.2 dev eth0 lladdr 00:16:3e:00:00:02 REACHABLE\n"
        "10.0.0.3 dev eth0 lladdr 00:16:3e:00:00:03 REACHABLE\n"
        "10.0.0.9 dev eth0 INCOMPLETE\n")
    assert sh.render_ip_neigh(entries, "eth0", ("eth0",)).startswith(
        "10.0.0.2 lladdr 00:16:3e:00:00:02 REACHABLE\n")
    assert sh.render_ip_neigh(entries, "eth9", ("eth0",)) == 'Cannot find device "eth9"\n'
    assert sh.render_ip_neigh([]) == ""


@pytest.mark.parametrize("seconds, text", [
    (59, " 12:00:00 up 0 min\n"),
    (5 * 60 + 30, " 12:00:00 up 5 min\n"),
    (3 * 3600 + 7 * 60, " 12:00:00 up  3:07\n"),
    (86400 + 60, " 12:00:00 up 1 day, 1 min\n"),
    (2 * 86400 + 3600, " 12:00:00 up 2 days,  1:00\n"),
])
def test_uptime_is_procps_layout(seconds, text):
    assert sh.render_uptime("12:00:00", seconds) == text


def test_ping_is_iputils_layout():
    result = PingResult(transmitted=3, received=2, rtts=[(1, 0.002), (3, 0.004)], src="10.0.0.1")
    assert sh.render_ping_header("10.0.0.2") == "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n"
    assert sh.render_ping("10.0.0.2", result, 2.0031) == (
        "64 bytes from 10.0.0.2: icmp_seq=1 time=2.000 ms\n"
        "64 bytes from 10.0.0.2: icmp_seq=3 time=4.000 ms\n"
        "\n"
        "--- 10.0.0.2 ping statistics ---\n"
        "3 packets transmitted, 2 received, 33% packet loss, time 2003ms\n"
        "rtt min/avg/max/mdev = 2.000/3.000/4.000/1.000 ms\n")


def test_ping_errors_and_unreachable_hosts_are_iputils_lines():
    # As GuestNetwork.ping reports it: the ARP error and the flag together
    # (the error alone was printed, as "ping: arp: ...", not iputils' lines).
    unreachable = PingResult(transmitted=2, received=0, rtts=[], src="10.0.0.1", unreachable=True,
                             error="arp: no reply from 10.0.0.9")
    text = sh.render_ping("10.0.0.9", unreachable, 1.0)
    assert "From 10.0.0.1 icmp_seq=1 Destination Host Unreachable\n" in text
    assert "2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 1000ms\n" in text
    assert "rtt" not in text
    routed = PingResult(transmitted=1, received=0, rtts=[],
                        errors=[PingError(seq=1, src="10.0.1.1", type=3, code=0)])
    assert "From 10.0.1.1 icmp_seq=1 Destination Net Unreachable\n" in sh.render_ping("10.9.0.1", routed, 0)
    failed = PingResult(transmitted=0, received=0, rtts=[], error="no route to host 10.9.0.1")
    assert sh.render_ping("10.9.0.1", failed, 0) == "ping: no route to host 10.9.0.1\n"


def test_replies_printed_as_they_came_are_not_printed_again():
    result = PingResult(transmitted=2, received=2, rtts=[(1, 0.001), (2, 0.003)])
    assert sh.render_ping_reply("10.0.0.2", 2, 0.003) == "64 bytes from 10.0.0.2: icmp_seq=2 time=3.000 ms\n"
    assert sh.render_ping("10.0.0.2", result, 1.0, replies_shown=True) == (
        "\n"
        "--- 10.0.0.2 ping statistics ---\n"
        "2 packets transmitted, 2 received, 0% packet loss, time 1000ms\n"
        "rtt min/avg/max/mdev = 1.000/2.000/3.000/1.000 ms\n")
