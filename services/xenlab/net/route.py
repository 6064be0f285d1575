"""IPv4 routes and the routing table a guest looks them up in, sans-I/O.

A ``Route`` is one line of ``ip route``: a destination prefix, a gateway (or
none: the prefix is on the link), the device and a metric. ``RoutingTable``
is Linux's FIB for one table: the longest matching prefix wins, then the
lowest metric, then the route added first (fib_table_lookup's order).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

DEFAULT = IPv4Network("0.0.0.0/0")
METRIC_MAX = 0xFFFFFFFF


@dataclass(frozen=True)
class Route:
    dst: IPv4Network
    gateway: IPv4Address | None = None      # None: on-link (a connected route, scope link)
    dev: str = ""
    metric: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.dst, IPv4Network):
            raise ValueError(f"route destination must be an IPv4Network, got {self.dst!r}")
        if self.gateway is not None and not isinstance(self.gateway, IPv4Address):
            raise ValueError(f"gateway must be an IPv4Address, got {self.gateway!r}")
        if not 0 <= self.metric <= METRIC_MAX:
            raise ValueError(f"metric {self.metric} is out of range 0..{METRIC_MAX}")

    def next_hop(self, dst: IPv4Address) -> IPv4Address:
        """The address to resolve on the link for a packet to ``dst``."""
        return self.gateway if self.gateway is not None else dst

    def __str__(self) -> str:
        """As ``ip route`` prints it."""
        words = ["default" if self.dst == DEFAULT else str(self.dst)]
        if self.gateway is not None:
            words += ["via", str(self.gateway)]
        if self.dev:
            words += ["dev", self.dev]
        if self.gateway is None:
            words += ["scope", "link"]
        if self.metric:
            words += ["metric", str(self.metric)]
        return " ".join(words)


def parse_route(text: str, dev: str = "") -> Route:
    """``PREFIX [via GATEWAY] [dev DEV] [metric N]`` as ``ip route add`` takes
    it; PREFIX is ``default`` or ``A.B.C.D[/LEN]`` (no length: a host, /32)."""
    words = text.split()
    if not words:
        raise ValueError("a route needs a destination (PREFIX or default)")
    prefix, rest = words[0], words[1:]
    try:
        dst = DEFAULT if prefix == "default" else IPv4Network(prefix)
    except ValueError as err:
        raise ValueError(f"route {text!r}: {prefix!r} is not a prefix ({err}; "
                         f"the host bits must be zero)") from None
    options: dict[str, str] = {}
    while rest:
        if len(rest) < 2 or rest[0] not in ("via", "dev", "metric"):
            raise ValueError(f"route {text!r}: expected 'via GATEWAY', 'dev DEV' or "
                             f"'metric N', got {' '.join(rest)!r}")
        if rest[0] in options:
            raise ValueError(f"route {text!r}: {rest[0]} given twice")
        options[rest[0]] = rest[1]
        rest = rest[2:]
    gateway = None
    if "via" in options:
        try:
            gateway = IPv4Address(options["via"])
        except ValueError:
            raise ValueError(f"route {text!r}: gateway {options['via']!r} is not an IPv4 "
                             f"address") from None
        if gateway.is_unspecified or gateway.is_multicast or gateway.is_loopback:
            raise ValueError(f"route {text!r}: {gateway} cannot be a gateway")
    metric = options.get("metric", "0")
    if not (metric.isascii() and metric.isdigit()) or int(metric) > METRIC_MAX:
        raise ValueError(f"route {text!r}: metric {metric!r} is not a number 0..{METRIC_MAX}")
    if gateway is None and "dev" not in options and not dev:
        raise ValueError(f"route {text!r}: needs a gateway (via A.B.C.D) or a device (dev NAME)")
    return Route(dst, gateway, options.get("dev", dev), int(metric))


class RoutingTable:
    """Routes, looked up by longest prefix, then metric, then age."""

    def __init__(self, routes=()):
        self._routes: list[Route] = []
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        """Add ``route``; the same prefix and metric twice is EEXIST, as
        ``ip route add`` says "File exists"."""
        for old in self._routes:
            if (old.dst, old.metric) == (route.dst, route.metric):
                raise OSError(errno.EEXIST, f"route {route.dst} metric {route.metric} exists "
                                            f"({old})")
        self._routes.append(route)

    def remove(self, route: Route) -> bool:
        try:
            self._routes.remove(route)
        except ValueError:
            return False
        return True

    def remove_dev(self, dev: str) -> list[Route]:
        """Drop every route through ``dev``, as Linux does when the device goes."""
        gone = [r for r in self._routes if r.dev == dev]
        self._routes = [r for r in self._routes if r.dev != dev]
        return gone

    def lookup(self, dst: IPv4Address) -> Route | None:
        best: Route | None = None
        for route in self._routes:
            if dst not in route.dst:
                continue
            if best is None or _better(route, best):
                best = route
        return best

    def gateways(self) -> frozenset[IPv4Address]:
        return frozenset(r.gateway for r in self._routes if r.gateway is not None)

    def __iter__(self):
        return iter(sorted(self._routes, key=lambda r: (-r.dst.prefixlen, r.metric)))

    def __len__(self) -> int:
        return len(self._routes)


def _better(route: Route, best: Route) -> bool:
    if route.dst.prefixlen != best.dst.prefixlen:
        return route.dst.prefixlen > best.dst.prefixlen
    return route.metric < best.metric
