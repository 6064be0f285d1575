"""The guest's network settings from its kernel command line, sans-I/O.

What a Linux guest takes from the command line xl gives it (xl.cfg's
``extra=``, ``root=`` and ``cmdline=``; libxl keeps it in
/vm/<uuid>/image/cmdline):

* ``ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>``,
  Linux's ipconfig (Documentation/admin-guide/nfs/nfsroot.rst), parsed as
  net/ipv4/ipconfig.c's ip_auto_config_setup parses it: fields may be left
  empty or left off; ``ip=off``/``ip=none`` turns it off; ``ip=dhcp``,
  ``on``, ``any``, ``bootp``, ``rarp``, ``both`` ask for autoconfiguration.
  It may come once per interface (``...:eth1:off``), as dracut takes it.
  xenlab's guests run no DHCP client: an interface whose ip= gives no
  address (``ip=dhcp``, ``ip=::GW``) or that has no ip= stays unaddressed.
  A netmask left out is the address's class, as ic_defaults guesses it; a
  gateway off the configured subnet is refused, as ic_setup_routes
  refuses it.
* ``rd.route=<net>/<prefix>:<gateway>[:<interface>]``, dracut's static
  route (dracut.cmdline(7)), once per route; without an interface, the
  route leaves by the one whose subnet holds the gateway.
* ``sysctl.net.ipv4.ip_forward=1`` (Linux 5.8's ``sysctl.*`` parameters,
  dots or slashes): the guest forwards IPv4 between its interfaces.

``parse_cmdline`` is the one place these are read: the lab file checks them
with it when it is loaded, the guest applies what it returns.

A vif's ``ip=`` key is Domain-0's, as in Xen (vif-route's routes, the
antispoofing rules of vif-bridge): the guest never reads it. A lab file
that gives a guest its address there gets it written into the guest's own
command line (``missing_ip_params``, applied by the lab file's loader).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import MappingProxyType

from xenlab.net.route import Route
from xenlab.xen.errors import ConfigError
from xenlab.xen.names import IFNAME_RULE, is_ifname

AUTOCONF_ON = ("on", "any", "dhcp", "bootp", "rarp", "both")
AUTOCONF_OFF = ("off", "none")
DEFAULT_DEVICE = "eth0"
IP_FORWARD_KEYS = ("sysctl.net.ipv4.ip_forward", "sysctl.net/ipv4/ip_forward")


@dataclass(frozen=True)
class IpParam:
    """One ``ip=`` parameter. ``client`` None: no static address (Linux
    would autoconfigure one; xenlab's guests run no DHCP client)."""
    client: IPv4Address | None = None
    server: IPv4Address | None = None
    gateway: IPv4Address | None = None
    netmask: IPv4Address | None = None
    hostname: str = ""
    device: str = ""
    autoconf: str = ""
    enabled: bool = True                  # False: ip=off / ip=none

    @property
    def interface(self) -> str:
        return self.device or DEFAULT_DEVICE

    def address(self) -> IPv4Interface | None:
        """The static address with its netmask (the class's when none was
        given), or None when it gives none."""
        if self.client is None:
            return None
        mask = self.netmask if self.netmask is not None else classful_netmask(self.client)
        try:
            return IPv4Interface(f"{self.client}/{mask}")
        except ValueError as err:
            raise ConfigError(f"ip=: netmask {mask} is not a netmask ({err})") from None


@dataclass(frozen=True)
class StaticRoute:
    """One rd.route=: ``dst`` via ``gateway``, out of ``device`` ("": the
    interface whose subnet holds the gateway)."""
    dst: IPv4Network
    gateway: IPv4Address
    device: str = ""


def parse_rd_route(value: str) -> StaticRoute:
    """dracut's ``rd.route=<net>/<netmask>:<gateway>[:<interface>]``."""
    fields = value.split(":")
    if len(fields) not in (2, 3):
        raise ConfigError(f"rd.route={value}: expected NET/PREFIX:GATEWAY[:INTERFACE]")
    try:
        dst = IPv4Network(fields[0])
    except ValueError as err:
        raise ConfigError(f"rd.route={value}: {fields[0]!r} is not a network ({err}; the host "
                          f"bits must be zero)") from None
    try:
        gateway = IPv4Address(fields[1])
    except ValueError:
        raise ConfigError(f"rd.route={value}: gateway {fields[1]!r} is not an IPv4 address") from None
    if gateway.is_unspecified or gateway.is_multicast or gateway.is_loopback:
        raise ConfigError(f"rd.route={value}: {gateway} cannot be a gateway")
    device = fields[2] if len(fields) == 3 else ""
    if device and not is_ifname(device):
        raise ConfigError(f"rd.route={value}: {device!r} is not an interface name ({IFNAME_RULE})")
    return StaticRoute(dst, gateway, device)


@dataclass(frozen=True)
class GuestNetConfig:
    """The network settings of one guest's command line: an ip= per
    interface, and whether it forwards."""
    ips: Mapping[str, IpParam] = field(default_factory=dict)    # interface -> its ip=
    ip_forward: bool = False
    routes: tuple[StaticRoute, ...] = ()                          # rd.route=, in order

    def routes_for(self, device: str, address: IPv4Interface) -> tuple[Route, ...]:
        """The static routes that leave by ``device`` configured as
        ``address``: those naming it, and those naming no interface whose
        gateway is on its subnet."""
        def leaves_here(route: StaticRoute) -> bool:
            if route.device:
                return route.device == device
            return route.gateway in address.network and route.gateway != address.ip
        return tuple(Route(r.dst, r.gateway, device) for r in self.routes if leaves_here(r))

    def param(self, device: str) -> IpParam | None:
        param = self.ips.get(device)
        return param if param is not None and param.enabled else None

    def gateway_for(self, device: str, address: IPv4Interface) -> IPv4Address | None:
        """The default gateway of ``device`` configured as ``address``: the
        gateway of the ip= naming that device, when it is on the device's
        subnet (ic_setup_routes: "Gateway not on directly connected
        network" otherwise: a ConfigError here)."""
        param = self.param(device)
        if param is None or param.gateway is None:
            return None
        if param.gateway not in address.network or param.gateway == address.ip:
            raise ConfigError(f"ip=: gateway {param.gateway} is not a neighbour on {device}'s "
                              f"network {address.network}")
        return param.gateway

    def address_for(self, device: str) -> IPv4Interface | None:
        """The static address ip= gives ``device``, if any."""
        param = self.param(device)
        return param.address() if param is not None else None


def classful_netmask(address: IPv4Address) -> IPv4Address:
    """The netmask of the address's class, as Linux's ic_defaults guesses it."""
    first = address.packed[0]
    if first < 128:
        return IPv4Address("255.0.0.0")
    if first < 192:
        return IPv4Address("255.255.0.0")
    if first < 224:
        return IPv4Address("255.255.255.0")
    raise ConfigError(f"ip=: cannot guess the netmask of {address} (give one)")


def split_cmdline(cmdline: str) -> list[tuple[str, str | None]]:
    """``param=value`` words, as Linux's next_arg splits them: whitespace
    outside double quotes separates, and quotes around a value go."""
    words: list[tuple[str, str | None]] = []
    i, n = 0, len(cmdline)
    while i < n:
        while i < n and cmdline[i].isspace():
            i += 1
        if i >= n:
            break
        start, quoted = i, False
        while i < n and (quoted or not cmdline[i].isspace()):
            if cmdline[i] == '"':
                quoted = not quoted
            i += 1
        word = cmdline[start:i]
        name, eq, value = word.partition("=")
        name = name.replace('"', "")
        if eq and len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        words.append((name, value.replace('"', "") if eq else None))
    return words


def parse_ip_param(value: str) -> IpParam:
    if value in AUTOCONF_ON or value.startswith("dhcp,"):
        return IpParam(autoconf=value)
    if value in ("", *AUTOCONF_OFF):
        return IpParam(enabled=False)
    fields = value.split(":")
    addresses = [_address(fields, i, name) for i, name in
                 enumerate(("client-ip", "server-ip", "gw-ip", "netmask"))]
    client, server, gateway, netmask = addresses
    hostname, device, autoconf = (fields[i] if i < len(fields) else "" for i in (4, 5, 6))
    if netmask is not None:
        try:
            IPv4Network(f"0.0.0.0/{netmask}")
        except ValueError:
            raise ConfigError(f"ip={value}: netmask {netmask} is not a netmask") from None
    if device and not is_ifname(device):
        raise ConfigError(f"ip={value}: device {device!r} is not an interface name ({IFNAME_RULE})")
    if autoconf and autoconf not in AUTOCONF_ON + AUTOCONF_OFF and not autoconf.startswith("dhcp,"):
        raise ConfigError(f"ip={value}: autoconf {autoconf!r} is not one of "
                          f"{', '.join(AUTOCONF_OFF + AUTOCONF_ON)}")
    # ip_auto_config_setup: autoconf off with no address of its own turns ipconfig off.
    enabled = not (autoconf in AUTOCONF_OFF and client is None)
    param = IpParam(client, server, gateway, netmask, hostname, device, autoconf, enabled)
    if client is not None:
        param.address()                     # a netmask that cannot be guessed fails here
    return param


def _address(fields: list[str], index: int, name: str) -> IPv4Address | None:
    text = fields[index] if index < len(fields) else ""
    if not text:
        return None
    try:
        address = IPv4Address(text)
    except ValueError:
        raise ConfigError(f"ip={':'.join(fields)}: {name} {text!r} is not an IPv4 address") from None
    # in_aton's ANY is "not given", as ip_auto_config_setup reads it.
    return None if address.is_unspecified else address


def parse_cmdline(cmdline: str) -> GuestNetConfig:
    """The network settings of a kernel command line; malformed ones are
    ConfigErrors. ip= may come once per interface, as dracut takes it (the
    kernel's own ipconfig takes one: one interface's is the same either
    way); a later one for the same interface wins, and ip=off with no
    device turns off what came before."""
    ips: dict[str, IpParam] = {}
    routes: list[StaticRoute] = []
    forward = False
    for name, value in split_cmdline(cmdline):
        if name in ("ip", "nfsaddrs") and value is not None:
            param = parse_ip_param(value)
            if not param.enabled and not param.device:
                ips.clear()
            else:
                ips[param.interface] = param
        elif name == "rd.route" and value is not None:
            routes.append(parse_rd_route(value))
        elif name in IP_FORWARD_KEYS:
            if value is None or not value.strip().lstrip("-").isdigit():
                raise ConfigError(f"{name}={value or ''}: expected a number (1 forwards, 0 does not)")
            forward = int(value) != 0
    return GuestNetConfig(MappingProxyType(ips), forward, tuple(routes))


MAX_GUEST_CMDLINE = 1024     # xen.h: start_info's cmd_line, NUL included


def check_guest_net(cmdline: str, devices: Iterable[str]) -> GuestNetConfig:
    """The command line's network settings, checked against the guest's
    interfaces (``devices``: ``eth<devid>`` of each vif), as the toolstack
    checks them before it starts the guest: ip= naming a device the guest
    will not have, a gateway with no address to reach it from, or a
    gateway off the subnet is a ConfigError here, where Linux would only
    log it at boot."""
    devices = list(devices)
    if len(cmdline.encode()) >= MAX_GUEST_CMDLINE:
        raise ConfigError(f"the kernel command line is {len(cmdline.encode())} bytes; Xen's "
                          f"start_info holds {MAX_GUEST_CMDLINE - 1}")
    net = parse_cmdline(cmdline)
    for device, param in net.ips.items():
        if not param.enabled:
            continue
        if device not in devices:
            raise ConfigError(f"ip=: the guest has no {device} (its interfaces: "
                              f"{', '.join(devices) or 'none'})")
        address = net.address_for(device)
        if address is None:
            if param.gateway is not None:
                raise ConfigError(f"ip=: gateway {param.gateway} but {device} has no address "
                                  f"(give one in ip=: a vif's ip= is Domain-0's)")
            continue
        net.gateway_for(device, address)
    _check_routes(net, devices)
    return net


def _check_routes(net: GuestNetConfig, devices: list[str]) -> None:
    """Each rd.route= leaves by one interface, through a gateway on its
    subnet (Linux: "Nexthop has invalid gateway"), and no two go to the same
    network ("File exists")."""
    addresses = {device: net.address_for(device) for device in devices}
    seen = set()
    for route in net.routes:
        text = f"rd.route={route.dst}:{route.gateway}" + (f":{route.device}" if route.device else "")
        if route.dst in seen:
            raise ConfigError(f"{text}: a route to {route.dst} is already given")
        seen.add(route.dst)
        if route.device:
            address = addresses.get(route.device)
            if route.device not in addresses:
                raise ConfigError(f"{text}: the guest has no {route.device} (its interfaces: "
                                  f"{', '.join(devices) or 'none'})")
            if address is None or route.gateway not in address.network \
                    or route.gateway == address.ip:
                raise ConfigError(f"{text}: gateway {route.gateway} is not a neighbour on "
                                  f"{route.device}" + (f" ({address.network})" if address else
                                                       " (it has no address)"))
        elif not any(a is not None and route.gateway in a.network and route.gateway != a.ip
                     for a in addresses.values()):
            raise ConfigError(f"{text}: gateway {route.gateway} is on none of the guest's "
                              f"subnets")
        for device, address in addresses.items():
            if address is not None and route.dst == address.network:
                raise ConfigError(f"{text}: {route.dst} is {device}'s own subnet")


def vif_address(vif_ip: str) -> IPv4Interface:
    """The first address of a vif's ip= key (xl takes several, separated by
    spaces); a bare address is on a /24, as xenlab documents."""
    text = vif_ip.split()[0] if vif_ip.split() else vif_ip
    try:
        return IPv4Interface(text if "/" in text else text + "/24")
    except ValueError as err:
        raise ConfigError(f"ip={vif_ip} is not an IPv4 address ({err})") from None


def ip_param_text(address: IPv4Interface, device: str, gateway: IPv4Address | None = None,
                  hostname: str = "") -> str:
    """Linux's ip= for a static address on ``device``:
    ``ip=<client>::<gw>:<netmask>:<hostname>:<device>:off``."""
    return f"ip={address.ip}::{gateway or ''}:{address.netmask}:{hostname}:{device}:off"


def missing_ip_params(cmdline: str, addresses: Mapping[str, IPv4Interface],
                      hostname: str = "") -> list[str]:
    """The ip= words that give each interface of ``addresses`` its address,
    for the interfaces ``cmdline`` leaves without one: no ip= of their own,
    or one with no address (``ip=::GW``, ``ip=dhcp``), whose gateway and
    hostname are kept. An interface the command line turns off (its own
    ip=...:off with no address, or ip=off for all) is left off. Appended
    to the command line, each is the last ip= of its interface: it wins."""
    net = parse_cmdline(cmdline)
    all_off = any(not param.enabled and not param.device
                  for param in (parse_ip_param(value) for name, value in split_cmdline(cmdline)
                                if name in ("ip", "nfsaddrs") and value is not None))
    words = []
    for device, address in addresses.items():
        param = net.ips.get(device)
        if param is None and all_off:
            continue
        if param is not None and (not param.enabled or param.client is not None):
            continue
        gateway = param.gateway if param is not None else None
        host = param.hostname if param is not None and param.hostname else hostname
        words.append(ip_param_text(address, device, gateway, host))
    return words
