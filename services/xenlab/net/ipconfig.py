"""The guest's network settings from its kernel command line, sans-I/O.

What a Linux guest takes from the command line xl gives it (xl.cfg's
``extra=``, ``root=`` and ``cmdline=``; libxl keeps it in
/vm/<uuid>/image/cmdline):

* ``ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>``,
  Linux's ipconfig (Documentation/admin-guide/nfs/nfsroot.rst), parsed as
  net/ipv4/ipconfig.c's ip_auto_config_setup parses it: fields may be left
  empty or left off; ``ip=off``/``ip=none`` turns it off; ``ip=dhcp``,
  ``on``, ``any``, ``bootp``, ``rarp``, ``both`` ask for autoconfiguration.
  Autoconfiguration here is the address the toolstack gave the vif (its
  ``ip=`` key), which is what the guest would get from a DHCP server told
  the same thing. A netmask left out is the address's class, as
  ic_defaults guesses it; a gateway off the configured subnet is refused,
  as ic_setup_routes refuses it.
* ``sysctl.net.ipv4.ip_forward=1`` (Linux 5.8's ``sysctl.*`` parameters,
  dots or slashes): the guest forwards IPv4 between its interfaces.

``parse_cmdline`` is the one place these are read: the lab file checks them
with it when it is loaded, the guest applies what it returns.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from xenlab.xen.errors import ConfigError

AUTOCONF_ON = ("on", "any", "dhcp", "bootp", "rarp", "both")
AUTOCONF_OFF = ("off", "none")
DEFAULT_DEVICE = "eth0"
IP_FORWARD_KEYS = ("sysctl.net.ipv4.ip_forward", "sysctl.net/ipv4/ip_forward")
IFNAMSIZ = 16


@dataclass(frozen=True)
class IpParam:
    """One ``ip=`` parameter. ``client`` None: the address comes from
    autoconfiguration (the vif's ip= key)."""
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
        given), or None when it comes from autoconfiguration."""
        if self.client is None:
            return None
        mask = self.netmask if self.netmask is not None else classful_netmask(self.client)
        try:
            return IPv4Interface(f"{self.client}/{mask}")
        except ValueError as err:
            raise ConfigError(f"ip=: netmask {mask} is not a netmask ({err})") from None


@dataclass(frozen=True)
class GuestNetConfig:
    """The network settings of one guest's command line."""
    ip: IpParam | None = None
    ip_forward: bool = False

    def gateway_for(self, device: str, address: IPv4Interface) -> IPv4Address | None:
        """The default gateway of ``device`` configured as ``address``: the
        ip= gateway when ip= names that device and the gateway is on its
        subnet (ic_setup_routes: "Gateway not on directly connected
        network" otherwise). Raises ConfigError for the latter."""
        if self.ip is None or not self.ip.enabled or self.ip.gateway is None:
            return None
        if self.ip.interface != device:
            return None
        if self.ip.gateway not in address.network:
            raise ConfigError(f"ip=: gateway {self.ip.gateway} is not on {device}'s network "
                              f"{address.network}")
        return self.ip.gateway

    def address_for(self, device: str) -> IPv4Interface | None:
        """The static address ip= gives ``device``, if any."""
        if self.ip is None or not self.ip.enabled or self.ip.interface != device:
            return None
        return self.ip.address()


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
    if device and (len(device) >= IFNAMSIZ or "/" in device or device in (".", "..")):
        raise ConfigError(f"ip={value}: device {device!r} is not an interface name")
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
    """The network settings of a kernel command line. The last ip= wins, as
    each __setup call overwrites the last; malformed ones are ConfigErrors."""
    ip, forward = None, False
    for name, value in split_cmdline(cmdline):
        if name in ("ip", "nfsaddrs") and value is not None:
            ip = parse_ip_param(value)
        elif name in IP_FORWARD_KEYS:
            if value is None or not value.strip().lstrip("-").isdigit():
                raise ConfigError(f"{name}={value or ''}: expected a number (1 forwards, 0 does not)")
            forward = int(value) != 0
    return GuestNetConfig(ip, forward)
