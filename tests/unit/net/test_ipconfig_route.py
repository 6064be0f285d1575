"""The guest's network settings from its kernel command line (Linux's ip=
and sysctl.*), and the routing table they feed."""
from __future__ import annotations

import errno
import re
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from xenlab.net.ipconfig import (check_guest_net, classful_netmask, ip_param_text, missing_ip_params,
                                 parse_cmdline, parse_ip_param, split_cmdline, vif_address)
from xenlab.net.route import DEFAULT, Route, RoutingTable, parse_route
from xenlab.xen.cmdline import kernel_cmdline
from xenlab.xen.errors import ConfigError


def test_ip_param_fields_in_linux_order():
    param = parse_ip_param("10.0.1.2::10.0.1.1:255.255.255.0:web:eth0:off")
    assert param.client == IPv4Address("10.0.1.2") and param.server is None
    assert param.gateway == IPv4Address("10.0.1.1")
    assert param.address() == IPv4Interface("10.0.1.2/24")
    assert (param.hostname, param.interface, param.autoconf, param.enabled) == ("web", "eth0", "off", True)


def test_ip_param_left_off_fields_and_classful_netmask():
    param = parse_ip_param("172.16.3.4")
    assert param.address() == IPv4Interface("172.16.3.4/16")
    assert param.gateway is None and param.interface == "eth0"
    assert classful_netmask(IPv4Address("10.1.2.3")) == IPv4Address("255.0.0.0")
    assert parse_ip_param(":::::eth1").address() is None            # the vif's address, on eth1
    assert parse_ip_param(":::::eth1").interface == "eth1"


@pytest.mark.parametrize("value", ["off", "none", ""])
def test_ip_off(value):
    assert not parse_ip_param(value).enabled


@pytest.mark.parametrize("value", ["dhcp", "on", "any", "bootp"])
def test_ip_autoconf_takes_the_vifs_address(value):
    param = parse_ip_param(value)
    assert param.enabled and param.client is None and param.autoconf == value


@pytest.mark.parametrize("value, words", [
    ("10.0.1.300", "client-ip '10.0.1.300' is not an IPv4 address"),
    ("10.0.1.2::10.0.1.1:255.0.255.0", "not a netmask"),
    ("10.0.1.2:::::eth0:sometimes", "autoconf 'sometimes'"),
    ("10.0.1.2:::::averyveryverylongname0", "not an interface name"),
    ("230.0.0.1", "cannot guess the netmask"),
])
def test_malformed_ip_params_are_config_errors_naming_the_field(value, words):
    with pytest.raises(ConfigError, match=words):
        parse_ip_param(value)


def test_cmdline_last_ip_per_interface_wins_and_sysctl_ip_forward():
    net = parse_cmdline('console=hvc0 ip=10.0.0.5 quiet ip="10.0.1.2::10.0.1.1:255.255.255.0" '
                        "ip=10.0.2.1:::255.255.255.0::eth1:off sysctl.net.ipv4.ip_forward=1")
    assert net.address_for("eth0") == IPv4Interface("10.0.1.2/24") and net.ip_forward
    assert net.address_for("eth1") == IPv4Interface("10.0.2.1/24")
    assert net.gateway_for("eth1", IPv4Interface("10.0.2.1/24")) is None
    assert parse_cmdline("ip=10.0.0.5 ip=off").ips == {}
    assert parse_cmdline("sysctl.net/ipv4/ip_forward=0").ip_forward is False
    with pytest.raises(ConfigError, match="expected a number"):
        parse_cmdline("sysctl.net.ipv4.ip_forward=yes")


def test_gateway_off_the_subnet_is_refused_as_ic_setup_routes():
    net = parse_cmdline("ip=10.0.1.2::10.0.9.1:255.255.255.0")
    with pytest.raises(ConfigError, match="not a neighbour on eth0's network 10.0.1.0/24"):
        net.gateway_for("eth0", IPv4Interface("10.0.1.2/24"))
    assert net.gateway_for("eth1", IPv4Interface("10.0.1.2/24")) is None


def test_gateway_with_the_vifs_address():
    net = parse_cmdline("ip=::10.0.1.1")
    assert net.address_for("eth0") is None
    assert net.gateway_for("eth0", IPv4Interface("10.0.1.2/24")) == IPv4Address("10.0.1.1")


def test_split_cmdline_keeps_quoted_spaces():
    assert split_cmdline('a "b=c d" e="f g" h') == [("a", None), ("b", "c d"), ("e", "f g"), ("h", None)]


def test_kernel_cmdline_as_xl_builds_it():
    assert kernel_cmdline({"extra": "ip=dhcp"}) == "ip=dhcp"
    assert kernel_cmdline({"root": "/dev/xvda1", "extra": "ro"}) == "root=/dev/xvda1 ro"
    assert kernel_cmdline({"cmdline": "x", "extra": "y"}) == "x"
    assert kernel_cmdline({}) == ""


def test_routing_table_longest_prefix_then_metric_then_age():
    table = RoutingTable([Route(IPv4Network("10.0.0.0/8"), IPv4Address("10.9.9.9")),
                          Route(DEFAULT, IPv4Address("10.0.0.1"), metric=10),
                          Route(DEFAULT, IPv4Address("10.0.0.2"), metric=5)])
    assert table.lookup(IPv4Address("10.1.1.1")).gateway == IPv4Address("10.9.9.9")
    assert table.lookup(IPv4Address("8.8.8.8")).gateway == IPv4Address("10.0.0.2")
    with pytest.raises(OSError) as err:
        table.add(Route(DEFAULT, IPv4Address("10.0.0.3"), metric=5))
    assert err.value.errno == errno.EEXIST
    assert RoutingTable().lookup(IPv4Address("1.1.1.1")) is None


def test_parse_route_as_ip_route_add():
    route = parse_route("192.168.0.0/16 via 10.0.0.1 metric 7")
    assert (route.dst, route.gateway, route.metric) == (IPv4Network("192.168.0.0/16"),
                                                        IPv4Address("10.0.0.1"), 7)
    assert str(route) == "192.168.0.0/16 via 10.0.0.1 metric 7"
    assert str(parse_route("default via 10.0.0.1 dev eth0")) == "default via 10.0.0.1 dev eth0"
    for bad, words in [("10.0.0.1/8 via 1.2.3.4", "host bits"), ("default", "needs a gateway"),
                       ("default via 0.0.0.0", "cannot be a gateway"),
                       ("default via 1.2.3.4 metric x", "metric 'x'"),
                       ("default via 1.2.3.4 via 1.2.3.5", "given twice")]:
        with pytest.raises(ValueError, match=words):
            parse_route(bad)


def test_check_guest_net_against_the_guests_vifs():
    vifs = ["eth0", "eth1"]
    assert check_guest_net("ip=10.0.1.2::10.0.1.1:255.255.255.0", vifs).gateway_for(
        "eth0", IPv4Interface("10.0.1.2/24")) == IPv4Address("10.0.1.1")
    for cmdline, words in [("ip=::10.0.1.1:::eth2", "the guest has no eth2"),
                           ("ip=10.0.1.2::10.0.9.1:255.255.255.0", "not a neighbour"),
                           ("ip=::10.0.1.1", "eth0 has no address"),
                           ("ip=::10.0.1.1:::eth1", "eth1 has no address"),
                           ("x" * 1024, "start_info holds 1023")]:
        with pytest.raises(ConfigError, match=words):
            check_guest_net(cmdline, vifs)


def test_rd_route_as_dracut_takes_it():
    net = parse_cmdline("rd.route=10.0.3.0/24:10.0.2.254 rd.route=172.16.0.0/12:10.0.1.9:eth0")
    eth0, eth1 = IPv4Interface("10.0.1.1/24"), IPv4Interface("10.0.2.1/24")
    assert [str(r) for r in net.routes_for("eth1", eth1)] == ["10.0.3.0/24 via 10.0.2.254 dev eth1"]
    assert [str(r) for r in net.routes_for("eth0", eth0)] == ["172.16.0.0/12 via 10.0.1.9 dev eth0"]


@pytest.mark.parametrize("cmdline, says", [
    ("rd.route=10.0.3.0/24", "expected NET/PREFIX:GATEWAY[:INTERFACE]"),
    ("rd.route=10.0.3.1/24:10.0.2.254", "the host bits must be zero"),
    ("rd.route=10.0.3.0/24:nowhere", "gateway 'nowhere' is not an IPv4 address"),
    ("rd.route=10.0.3.0/24:10.0.9.254", "gateway 10.0.9.254 is on none of the guest's subnets"),
    ("rd.route=10.0.3.0/24:10.0.2.254:eth0", "gateway 10.0.2.254 is not a neighbour on eth0 (10.0.1.0/24)"),
    ("rd.route=10.0.3.0/24:10.0.2.254:eth7", "the guest has no eth7"),
    ("rd.route=10.0.3.0/24:10.0.2.254 rd.route=10.0.3.0/24:10.0.1.254", "is already given"),
    ("rd.route=10.0.2.0/24:10.0.1.254", "10.0.2.0/24 is eth1's own subnet"),
])
def test_bad_rd_routes_are_one_line_errors(cmdline, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        check_guest_net(cmdline + " ip=10.0.1.1:::255.255.255.0::eth0:off "
                                   "ip=10.0.2.1:::255.255.255.0::eth1:off", ["eth0", "eth1"])


# -- a vif's ip= written into the guest's own command line (the lab's) -----------------------
def test_ip_param_text_is_linuxs_static_form_and_reads_back():
    text = ip_param_text(IPv4Interface("10.0.1.2/20"), "eth1", IPv4Address("10.0.0.1"), "web")
    assert text == "ip=10.0.1.2::10.0.0.1:255.255.240.0:web:eth1:off"
    param = parse_ip_param(text.removeprefix("ip="))
    assert (param.address(), param.gateway, param.hostname, param.device) == \
        (IPv4Interface("10.0.1.2/20"), IPv4Address("10.0.0.1"), "web", "eth1")
    assert ip_param_text(IPv4Interface("10.0.1.2/24"), "eth0") == "ip=10.0.1.2:::255.255.255.0::eth0:off"


@pytest.mark.parametrize("vif_ip, address", [
    ("10.0.1.2", "10.0.1.2/24"), ("10.0.1.2/16", "10.0.1.2/16"),
    ("10.0.1.2/28 10.0.9.9", "10.0.1.2/28"),
])
def test_vif_address_is_the_first_address_a_bare_one_on_a_24(vif_ip, address):
    assert vif_address(vif_ip) == IPv4Interface(address)


def test_a_vif_address_that_is_none_is_a_config_error():
    with pytest.raises(ConfigError, match=re.escape("ip=10.0.1.300 is not an IPv4 address")):
        vif_address("10.0.1.300")


ETH0 = {"eth0": IPv4Interface("10.0.1.2/24")}


@pytest.mark.parametrize("cmdline, words", [
    ("", ["ip=10.0.1.2:::255.255.255.0:h:eth0:off"]),
    ("quiet", ["ip=10.0.1.2:::255.255.255.0:h:eth0:off"]),
    ("ip=dhcp", ["ip=10.0.1.2:::255.255.255.0:h:eth0:off"]),
    ("ip=::10.0.1.1", ["ip=10.0.1.2::10.0.1.1:255.255.255.0:h:eth0:off"]),
    ("ip=::10.0.1.1::box:eth0", ["ip=10.0.1.2::10.0.1.1:255.255.255.0:box:eth0:off"]),
    ("ip=10.0.3.1:::255.255.255.0::eth1:off", ["ip=10.0.1.2:::255.255.255.0:h:eth0:off"]),
    ("ip=10.0.1.9", []),                          # the guest's own address
    ("ip=:::::eth0:off", []),                     # eth0 turned off
    ("ip=off", []),                               # ipconfig off
    ("ip=none ip=10.0.3.1:::255.255.255.0::eth1:off", []),
    ("ip=10.0.3.1:::255.255.255.0::eth1:off ip=off", []),
])
def test_missing_ip_params_fill_in_only_what_the_guest_left_open(cmdline, words):
    assert missing_ip_params(cmdline, ETH0, "h") == words
    if words:
        net = parse_cmdline(" ".join([cmdline, *words]))
        assert net.address_for("eth0") == ETH0["eth0"]
