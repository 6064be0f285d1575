"""A lab file (TOML): which bridges and domains `xenlab up` starts.

    [lab]
    name = "demo"

    [hypervisor]
    memory = 4096            # MiB of emulated host RAM

    [[bridge]]
    name = "xenbr0"
    uplink = "tap:xltap0"    # optional: a real Linux TAP port (needs CAP_NET_ADMIN), or
                             # "vxlan:vni=42,remote=192.0.2.2:4789": a VXLAN tunnel to
                             # another host's bridge or a Linux vxlan device
    fdb_max = 1024           # optional: learned FDB entries at most (default 8192)
    fdb_policy = "ovs"       # optional: a full FDB learns nothing more ("linux", the
                             # default, as fdb_max_learned) or evicts from the port with
                             # the most entries ("ovs", Open vSwitch's fair eviction)
    vlan_filtering = true    # optional: 802.1Q, each vif in the VLANs of its vlan= key
    flood_limit = "1000/2000"  # optional: storm control, flooded frames/s (/burst) per port;
                             # 0 turns it off (default: the bridge service's, 1000)

    [[domain]]
    name = "web"
    config = "web.cfg"       # an xl.cfg file, relative to the lab file ...

    [[domain]]
    name = "db"              # ... or the xl.cfg keys inline
    memory = 32
    vif = ["ip=10.0.0.2/24"] # Domain-0's in Xen; the lab also writes it into the
                             # guest's kernel command line (see guest_addresses)
    netem = "delay 20ms loss 1%"   # optional: tc netem on Domain-0's vifD.N, frames to db
    netem_tx = "rate 10mbit"       # optional: on vethD.N, frames from db; either may also be
                                   # a table per vif: netem = { eth1 = "delay 5ms" }

    [[link]]                 # a cable between two bridges
    bridges = ["xenbr0", "xenbr1"]
    netem = "delay 5ms"      # optional: on both of its ends, each way

    [mqtt]                   # events (docs/EVENTS.md); every key optional
    broker = "embedded"      # a broker process of the lab (default), "none" (gRPC only), or "mqtt://HOST:PORT"
    engine = "auto"          # the embedded broker: mosquitto, amqtt, or auto (mosquitto if installed)
    prefix = "xenlab"        # topics are PREFIX/HOST/...
    host = "demo"            # HOST (default: the lab's name)
    interval = 5             # seconds between counter messages

Read once into frozen dataclasses; every error names the file, the line
and the entry. A key xenlab does not know, in any table, is an error naming
the key it most resembles (a typo such as `memroy = 32` would otherwise
leave the domain at the default 128 MiB); inside [[domain]] (and the xl.cfg
files it names) xl's own keys that xenlab does not use are still accepted.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from xenlab.bridge.uplink import check_uplink_spec
from xenlab.events.config import BrokerAddress
from xenlab.events.topics import check_level, check_prefix
from xenlab.hypervisor.page_sharing import MODES as PAGE_SHARING_MODES
from xenlab.lab.tomllines import KeyPosition, TomlLines, key_lines
from xenlab.net.ipconfig import check_guest_net, missing_ip_params, vif_address
from xenlab.net.netem import NetemError, parse_netem
from xenlab.toolstack.xlcfg import XlConfig, did_you_mean, load_xl_config, parse_xl_config
from xenlab.xen.cmdline import kernel_cmdline
from xenlab.xen.names import BRIDGE_NAME_RULE, DEFAULT_BRIDGE, IFNAME_RULE, IFNAMSIZ, is_bridge_name
from xenlab.xen.errors import ConfigError, XenError

TABLES = {"lab", "hypervisor", "bridge", "domain", "mqtt", "link", "host"}
LAB_KEYS = {"name", "rundir"}
HYPERVISOR_KEYS = {"memory", "listen", "launcher", "page_sharing"}
BRIDGE_KEYS = {"name", "uplink", "ageing", "fdb_max", "fdb_policy", "flood_limit", "vlan_filtering",
               "stp", "priority", "hello_time", "forward_delay", "max_age"}
LINK_KEYS = {"bridges", "netem"}
HOST_KEYS = {"name", "address"}
POOL_UNDERLAY = "10.231.0.0/24"     # the hosts' addresses unless [[host]] gives them
POOL_VNI_BASE = 100                 # a pool's bridge N (from 0) is joined as VNI 100 + N
POOL_GATEWAY_HOST = 254             # this machine's address on the underlay: .254 of its /24
_HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,11}")
DOMAIN_NETEM_KEYS = {"netem": "rx", "netem_tx": "tx"}     # lab keys, not xl.cfg keys
STP_TIMERS = {"hello_time": (2.0, 1.0, 10.0), "forward_delay": (15.0, 2.0, 30.0),
              "max_age": (20.0, 6.0, 40.0)}    # Linux's defaults and bounds, seconds
MQTT_KEYS = {"broker", "engine", "prefix", "host", "interval"}


@dataclass(frozen=True)
class HostSpec:
    """A host of a pool: its own hypervisor, Domain-0 and bridges, in a
    network namespace of its own with ``address`` on the pool's underlay."""
    name: str
    address: str


@dataclass(frozen=True)
class BridgeSpec:
    name: str
    uplink: str | None = None       # "tap:NAME" or "vxlan:vni=N,remote=HOST[:PORT]..."
    ageing: float = 300.0
    fdb_max: int | None = None
    flood_limit: str | None = None  # storm control, "RATE[/BURST]"; None: the service's default
    fdb_policy: str = "linux"       # what a full FDB does: "linux" or "ovs"
    vlan_filtering: bool = False    # 802.1Q: ports forward only their VLANs (vif vlan=)
    stp: bool = False               # 802.1D spanning tree, as Linux's stp_state 1
    priority: int | None = None     # bridge priority (None: 32768)
    hello_time: float = 2.0
    forward_delay: float = 15.0
    max_age: float = 20.0


@dataclass(frozen=True)
class MqttSpec:
    broker: str = "embedded"        # "embedded", "none" or "mqtt://HOST:PORT"
    engine: str = "auto"            # the embedded broker's engine
    prefix: str = "xenlab"
    host: str | None = None         # None: the lab's name
    interval: float = 5.0

    @property
    def enabled(self) -> bool:
        return self.broker != "none"


@dataclass(frozen=True)
class Shaping:
    """A netem the lab sets at start, as `xenlab tc qdisc add` would: on a
    domain's vif (``direction`` "rx": Domain-0's vifD.N, frames to the
    guest; "tx": its vethD.N, frames from the guest), or on both ends of
    the ``link``-th [[link]] between two bridges."""

    args: tuple[str, ...]
    domain: str = ""
    devid: int | None = None          # None: every vif of the domain
    direction: str = "rx"
    link: int | None = None


@dataclass(frozen=True)
class LabSpec:
    name: str
    domains: tuple[XlConfig, ...]
    bridges: tuple[BridgeSpec, ...]
    memory_mb: int = 4096
    listen: str | None = None
    launcher: str = "local"
    page_sharing: str = "auto"        # the hypervisor's --page-sharing
    rundir: str | None = None
    source: str = "<built-in>"
    mqtt: MqttSpec = MqttSpec()
    links: tuple[tuple[str, str], ...] = ()     # [[link]]: cables between two bridges
    shaping: tuple[Shaping, ...] = ()           # netem set at start (xenlab tc)
    hosts: tuple[HostSpec, ...] = ()            # [[host]]: a pool of several hosts
    placement: tuple[tuple[str, str], ...] = () # (domain, host) for each domain of a pool

    def domain(self, name: str) -> XlConfig:
        return next(d for d in self.domains if d.name == name)


def _fail(source: str, message: str, line: int | None = None) -> ConfigError:
    return ConfigError(message, line=line, path=source)


def _unknown(source: str, where: str, table: dict, known: set, lines: TomlLines,
             at: tuple) -> None:
    for key in table:
        if key not in known:
            if at == ():        # a table, or a key outside any
                line = lines.line((key,)) or lines.line((key, 0)) or lines.line((), key)
            else:
                line = lines.line(at, key)
            raise _fail(source, f"{where}: unknown {'table' if at == () else 'key'} {key!r}"
                                f"{did_you_mean(key, known)} (expected one of {', '.join(sorted(known))})",
                        line)


def _xl_text(entry: dict, positions: dict[str, KeyPosition], source: str) -> str:
    """Inline domain keys as xl.cfg text, so that one parser checks both
    forms: each setting on the line it has in the lab file, each list item
    on its own line, so that the parser's errors name the lab file's lines."""
    rows: dict[int, list[str]] = {}
    end = max((p.line for p in positions.values()), default=0)
    for key, value in entry.items():
        position = positions.get(key)
        if position is None:                  # not located (it should be): after the others
            end += 1
            position = KeyPosition(end)
        if isinstance(value, dict):
            raise _fail(source, f"{key}: a table is not an xl.cfg value (expected a string, "
                                f"a number or a list)", position.line)
        if isinstance(value, list):
            items = position.items if len(position.items) == len(value) else (position.line,) * len(value)
            rows.setdefault(position.line, []).append(f"{key} = [")
            for item, line in zip(value, items):
                rows.setdefault(line, []).append(_quote(item) + ",")
            rows.setdefault(items[-1] if items else position.line, []).append("]")
        else:
            rows.setdefault(position.line, []).append(f"{key} = {_quote(value)}")
    last = max(rows, default=0)
    return "\n".join(" ".join(rows.get(n, ())) for n in range(1, last + 1)) + "\n"


def _quote(value) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def _domain(entry: dict, index: int, base: Path, source: str, lines: TomlLines) -> XlConfig:
    where = f"domain #{index + 1}"
    at = lines.line(("domain", index))
    if not isinstance(entry, dict):
        raise _fail(source, f"{where}: must be a table", at)
    positions = lines.table(("domain", index))
    entry = dict(entry)
    config = entry.pop("config", None)
    if config is not None:
        path = (base / config) if not Path(config).is_absolute() else Path(config)
        inline = (_xl_text(entry, positions, source), source) if entry else None
        try:
            return guest_addresses(load_xl_config(path, inline=inline, strict=True), source)
        except FileNotFoundError:
            raise _fail(source, f"{where}: config file {path} does not exist",
                        lines.line(("domain", index), "config")) from None
    if "name" not in entry:
        raise _fail(source, f"{where}: needs a name (or config = \"FILE.cfg\")", at)
    cfg = parse_xl_config(_xl_text(entry, positions, source), source, strict=True)
    # The config the domain keeps (xl list -l) without the lab file's other lines.
    cfg = dataclasses.replace(cfg, text="\n".join(line for line in cfg.text.splitlines() if line.strip()) + "\n")
    return guest_addresses(cfg, source)


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def guest_addresses(cfg: XlConfig, source: str = "<lab>") -> XlConfig:
    """The domain as the lab starts it: each vif's ip= also written into the
    guest's own kernel command line, as Linux's ip= (``extra=``, or
    ``cmdline=`` when the config sets that), for each interface the command
    line leaves without an address. In Xen a vif's ip= is Domain-0's
    (vif-route, the antispoofing rules) and a guest configures itself; this
    keeps lab files that give a guest its address on the vif working, by
    the guest's own configuration, never by the guest reading the backend."""
    addresses = {f"eth{vif.devid}": vif_address(vif.ip) for vif in cfg.vifs if vif.ip}
    if not addresses:
        return cfg
    keys = dict(cfg.extra)
    hostname = cfg.name if _HOSTNAME.fullmatch(cfg.name) else ""
    try:
        words = missing_ip_params(kernel_cmdline(keys), addresses, hostname)
    except ConfigError as err:
        raise _fail(source, f"domain {cfg.name}: {err.message}") from None
    if not words:
        return cfg
    key = "cmdline" if keys.get("cmdline") else "extra"
    keys[key] = " ".join([keys[key], *words]) if keys.get(key) else " ".join(words)
    return dataclasses.replace(cfg, extra=MappingProxyType(keys))


def parse_lab(text: str, source: str = "<lab>", base: Path | None = None) -> LabSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _fail(source, f"not valid TOML: {err}") from None
    lines = key_lines(text)
    base = base or Path(".")
    _unknown(source, "top level", data, TABLES, lines, ())
    tables = {}
    for name in ("lab", "hypervisor", "mqtt"):
        tables[name] = data.get(name, {})
        if not isinstance(tables[name], dict):
            raise _fail(source, f"[{name}] must be a table", lines.line((), name))
    for name in ("bridge", "domain"):
        if not isinstance(data.get(name, []), list):
            raise _fail(source, f"{name} must be an array of tables: [[{name}]]", lines.line((name,)))
    lab, hv, mqtt = tables["lab"], tables["hypervisor"], tables["mqtt"]
    _unknown(source, "[lab]", lab, LAB_KEYS, lines, ("lab",))
    _unknown(source, "[hypervisor]", hv, HYPERVISOR_KEYS, lines, ("hypervisor",))
    bridges = []
    for i, entry in enumerate(data.get("bridge", [])):
        _unknown(source, f"bridge #{i + 1}", entry, BRIDGE_KEYS, lines, ("bridge", i))
        bridges.append(_bridge(entry, i, source, _lines_of(lines, ("bridge", i))))
    shaping: list[Shaping] = []
    hosts = _hosts(data.get("host", []), source, lines)
    domains, placement = [], []
    for i, entry in enumerate(data.get("domain", [])):
        netem = {k: entry.pop(k) for k in DOMAIN_NETEM_KEYS if isinstance(entry, dict) and k in entry}
        host = entry.pop("host", None) if isinstance(entry, dict) else None
        dom = _domain(entry, i, base, source, lines)
        domains.append(dom)
        placement.append((dom.name, _placed(host, hosts, dom.name, source,
                                            lines.line(("domain", i), "host"))))
        for key, value in netem.items():
            shaping += _domain_netem(dom, key, value, source, lambda k=key, i=i: lines.line(("domain", i), k))
    domains = tuple(domains)
    _unknown(source, "[mqtt]", mqtt, MQTT_KEYS, lines, ("mqtt",))
    if not isinstance(data.get("link", []), list):
        raise _fail(source, "link must be an array of tables: [[link]]", lines.line(("link",)))
    links = []
    for i, entry in enumerate(data.get("link", [])):
        _unknown(source, f"link #{i + 1}", entry, LINK_KEYS, lines, ("link", i))
        pair = entry.get("bridges")
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(b, str) for b in pair)):
            raise _fail(source, f"link #{i + 1}: bridges = [\"BRIDGE\", \"BRIDGE\"], the two it joins",
                        lines.line(("link", i), "bridges") or lines.line(("link", i)))
        links.append(tuple(pair))
        if "netem" in entry:
            line = lines.line(("link", i), "netem")
            shaping.append(Shaping(_netem_args(entry["netem"], f"link #{i + 1}", source, line),
                                   link=i))
    page_sharing = hv.get("page_sharing", "auto")
    if page_sharing not in PAGE_SHARING_MODES:
        raise _fail(source, f"[hypervisor] page_sharing = {page_sharing!r}: expected one of "
                            f"{', '.join(map(repr, PAGE_SHARING_MODES))}",
                    lines.line(("hypervisor",), "page_sharing"))
    spec = LabSpec(name=str(lab.get("name", Path(source).stem)), domains=domains, links=tuple(links),
                   bridges=tuple(bridges) or (BridgeSpec(DEFAULT_BRIDGE),),
                   memory_mb=int(hv.get("memory", 4096)), listen=hv.get("listen"),
                   launcher=str(hv.get("launcher", "local")), page_sharing=page_sharing,
                   rundir=lab.get("rundir"),
                   source=source, mqtt=_mqtt(mqtt, source, _lines_of(lines, ("mqtt",))),
                   shaping=tuple(shaping), hosts=hosts,
                   placement=tuple(placement) if hosts else ())
    validate(spec)
    if hosts:
        _validate_pool(spec, lines)
    return spec


def _hosts(entries, source: str, lines: TomlLines) -> tuple[HostSpec, ...]:
    """[[host]] tables: a name each (unique), an IPv4 address each (given,
    or the next of POOL_UNDERLAY), all on one /24."""
    if not isinstance(entries, list):
        raise _fail(source, "host must be an array of tables: [[host]]", lines.line(("host",)))
    if len(entries) == 1:
        raise _fail(source, "a pool needs two [[host]] tables or more (one host is a plain lab: "
                            "leave [[host]] out)", lines.line(("host", 0)))
    network = ipaddress.IPv4Network(POOL_UNDERLAY)
    hosts: list[HostSpec] = []
    for i, entry in enumerate(entries):
        at = _lines_of(lines, ("host", i))
        if not isinstance(entry, dict):
            raise _fail(source, f"host #{i + 1}: must be a table", at("name"))
        _unknown(source, f"host #{i + 1}", entry, HOST_KEYS, lines, ("host", i))
        name = entry.get("name")
        if not isinstance(name, str) or not _HOST_NAME.fullmatch(name):
            raise _fail(source, f"host #{i + 1}: needs a name of 1-12 lowercase letters, digits "
                                f"and '-', not starting with '-'", at("name"))
        address = entry.get("address", str(network.network_address + i + 1))
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            raise _fail(source, f"host {name}: address {address!r} is not an IPv4 address",
                        at("address")) from None
        if hosts and ipaddress.IPv4Network(f"{hosts[0].address}/24", strict=False) != \
                ipaddress.IPv4Network(f"{ip}/24", strict=False):
            raise _fail(source, f"host {name}: address {ip} is not on the /24 of host "
                                f"{hosts[0].name} ({hosts[0].address}): the hosts share one underlay",
                        at("address"))
        if ip.packed[3] in (0, 255):
            raise _fail(source, f"host {name}: address {ip} is the underlay's network or "
                                f"broadcast address", at("address"))
        if ip.packed[3] == POOL_GATEWAY_HOST:
            raise _fail(source, f"host {name}: address {ip} is this machine's on the underlay "
                                f"(.{POOL_GATEWAY_HOST}, where the pool's MQTT broker listens)",
                        at("address"))
        for other in hosts:
            if other.name == name:
                raise _fail(source, f"host #{i + 1}: a second host named {name!r}", at("name"))
            if other.address == str(ip):
                raise _fail(source, f"host {name}: address {ip} is host {other.name}'s too",
                            at("address"))
        hosts.append(HostSpec(name, str(ip)))
    return tuple(hosts)


def _placed(host, hosts: tuple[HostSpec, ...], domain: str, source: str, line) -> str:
    """The host a domain starts on: its ``host =``, else the pool's first."""
    if host is None:
        return hosts[0].name if hosts else ""
    if not hosts:
        raise _fail(source, f"domain {domain}: host = {host!r}, but the lab has no [[host]] "
                            f"tables (a pool names its hosts)", line)
    if host not in {h.name for h in hosts}:
        raise _fail(source, f"domain {domain}: host {host!r} is not a [[host]] of this lab "
                            f"({', '.join(h.name for h in hosts)})", line)
    return host


def _validate_pool(spec: LabSpec, lines: TomlLines) -> None:
    """What a pool does not take (yet): an uplink of its own on a bridge
    (a pool's bridges are joined by VXLAN), cables, netem."""
    for i, bridge in enumerate(spec.bridges):
        if bridge.uplink is not None:
            raise _fail(spec.source, f"bridge {bridge.name}: in a pool, a bridge's uplink is the "
                                     f"VXLAN that joins it across the hosts; leave uplink out",
                        lines.line(("bridge", i), "uplink"))
    if spec.links:
        raise _fail(spec.source, "[[link]] cables are not supported in a pool yet",
                    lines.line(("link", 0)))
    if spec.shaping:
        raise _fail(spec.source, "netem is not supported in a pool yet")


def pool_gateway(spec: LabSpec) -> str:
    """This machine's address on a pool's underlay (.254 of the hosts' /24)."""
    network = ipaddress.IPv4Network(f"{spec.hosts[0].address}/24", strict=False)
    return str(network.network_address + POOL_GATEWAY_HOST)


def host_lab(spec: LabSpec, host: str, broker: str | None = None) -> LabSpec:
    """The lab one host of a pool runs: the pool's bridges, each with a
    VXLAN uplink (VNI POOL_VNI_BASE + its index) from this host's address
    to every other host's; the domains placed on this host. Its MQTT
    broker is ``broker`` (the pool's, mqtt://HOST:PORT) when given; else
    the lab file's, an embedded one of its own being none (the runner
    starts the pool's: xenlab.lab.pool)."""
    me = next(h for h in spec.hosts if h.name == host)
    others = [h.address for h in spec.hosts if h.name != host]
    bridges = tuple(dataclasses.replace(b, uplink=check_uplink_spec(
        f"vxlan:vni={POOL_VNI_BASE + i},local={me.address}," + ",".join(f"remote={a}" for a in others)))
        for i, b in enumerate(spec.bridges))
    placed = dict(spec.placement)
    if broker is not None:
        mqtt = dataclasses.replace(spec.mqtt, broker=broker)
    elif spec.mqtt.broker == "embedded":
        mqtt = dataclasses.replace(spec.mqtt, broker="none")
    else:
        mqtt = spec.mqtt
    return dataclasses.replace(
        spec, name=f"{spec.name}-{host}", bridges=bridges, hosts=(), placement=(),
        domains=tuple(d for d in spec.domains if placed[d.name] == host), mqtt=mqtt)


def _netem_args(value, where: str, source: str, line) -> tuple[str, ...]:
    """A netem's options, as `tc ... netem` takes them, checked now."""
    if not isinstance(value, str) or not value.split():
        raise _fail(source, f"{where}: netem must be tc's netem options as a string, such as "
                            f"\"delay 20ms loss 1%\", got {value!r}", line)
    try:
        parse_netem(value.split())
    except NetemError as err:
        raise _fail(source, f"{where}: netem: {err}", line) from None
    return tuple(value.split())


def _domain_netem(dom: XlConfig, key: str, value, source: str, line) -> list[Shaping]:
    where = f"domain {dom.name}"
    direction = DOMAIN_NETEM_KEYS[key]
    if not dom.vifs:
        raise _fail(source, f"{where}: {key} needs a vif to shape (the domain has none)", line())
    if not isinstance(value, dict):
        return [Shaping(_netem_args(value, where, source, line()), dom.name, None, direction)]
    out = []
    devids = {v.devid for v in dom.vifs}
    for iface, options in value.items():
        devid = int(iface[3:]) if iface.startswith("eth") and iface[3:].isdigit() else None
        if devid not in devids:
            raise _fail(source, f"{where}: {key}: no interface {iface!r} (the domain has "
                                f"{', '.join(f'eth{d}' for d in sorted(devids))})", line())
        out.append(Shaping(_netem_args(options, f"{where} {iface}", source, line()),
                           dom.name, devid, direction))
    return out


def _lines_of(lines: TomlLines, table: tuple):
    """The line of a key of ``table``, else of its header."""
    return lambda key: lines.line(table, key) or lines.line(table)


def _bridge(entry: dict, index: int, source: str, line) -> BridgeSpec:
    name = entry.get("name")
    if not isinstance(name, str) or not is_bridge_name(name):
        raise _fail(source, f"bridge #{index + 1}: needs a name of {BRIDGE_NAME_RULE}", line("name"))
    uplink = entry.get("uplink")
    if uplink is not None:
        if not isinstance(uplink, str) or not uplink.startswith(("tap:", "vxlan:")):
            raise _fail(source, f"bridge {name}: uplink must be \"tap:NAME\" (NAME: {IFNAME_RULE}) "
                                f"or \"vxlan:vni=N,remote=HOST[:PORT]\"", line("uplink"))
        try:
            uplink = check_uplink_spec(uplink)
        except (ValueError, XenError) as err:
            raise _fail(source, f"bridge {name}: uplink {entry['uplink']!r}: "
                                f"{getattr(err, 'message', None) or err}", line("uplink")) from None
    flood = entry.get("flood_limit")
    if flood is not None:
        if isinstance(flood, bool) or not isinstance(flood, (int, float, str)):
            raise _fail(source, f"bridge {name}: flood_limit must be RATE or \"RATE/BURST\" "
                                f"(frames per second, frames), got {flood!r}", line("flood_limit"))
        flood = f"{flood:g}" if isinstance(flood, (int, float)) else flood
    policy = entry.get("fdb_policy", "linux")
    if policy not in ("linux", "ovs"):
        raise _fail(source, f"bridge {name}: fdb_policy must be \"linux\" (learn nothing more when "
                            f"full) or \"ovs\" (evict from the port with the most), got {policy!r}")
    vlan_filtering = entry.get("vlan_filtering", False)
    if not isinstance(vlan_filtering, bool):
        raise _fail(source, f"bridge {name}: vlan_filtering must be true or false, got {vlan_filtering!r}")
    stp = entry.get("stp", False)
    if not isinstance(stp, bool):
        raise _fail(source, f"bridge {name}: stp must be true or false, got {stp!r}")
    priority = entry.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                 or not 0 <= priority <= 0xFFFF):
        raise _fail(source, f"bridge {name}: priority must be a whole number 0..65535, got {priority!r}")
    timers = {}
    for key, (default, low, high) in STP_TIMERS.items():
        value = entry.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise _fail(source, f"bridge {name}: {key} must be {low:g}..{high:g} seconds, got {value!r}")
        timers[key] = float(value)
    return BridgeSpec(name, uplink, float(entry.get("ageing", 300.0)), entry.get("fdb_max"), flood,
                      policy, vlan_filtering, stp, priority, **timers)


def _mqtt(entry: dict, source: str, line=lambda key: None) -> MqttSpec:
    spec = MqttSpec(broker=str(entry.get("broker", "embedded")), engine=str(entry.get("engine", "auto")),
                    prefix=str(entry.get("prefix", "xenlab")),
                    host=None if entry.get("host") is None else str(entry["host"]),
                    interval=entry.get("interval", 5.0))
    if spec.broker not in ("embedded", "none"):
        try:
            BrokerAddress.parse(spec.broker)
        except ConfigError as err:
            raise _fail(source, f"[mqtt] broker: {err.message} (or \"embedded\", \"none\")", line("broker")) from None
    if spec.engine not in ("auto", "mosquitto", "amqtt"):
        raise _fail(source, f"[mqtt] engine {spec.engine!r}: expected auto, mosquitto or amqtt", line("engine"))
    if not isinstance(spec.interval, (int, float)) or isinstance(spec.interval, bool) or spec.interval <= 0:
        raise _fail(source, f"[mqtt] interval must be a positive number of seconds, got {spec.interval!r}", line("interval"))
    for key, check in (("prefix", check_prefix), ("host", lambda host: check_level(host, "host"))):
        if getattr(spec, key) is not None:
            try:
                check(getattr(spec, key))
            except ConfigError as err:
                raise _fail(source, f"[mqtt] {err.message}", line(key)) from None
    return spec


def validate(spec: LabSpec) -> None:
    """Lab-wide rules: unique names, MACs and IPs per bridge, known bridges."""
    source = spec.source
    bridges = {b.name for b in spec.bridges}
    if len(bridges) != len(spec.bridges):
        raise _fail(source, "two bridges have the same name")
    for a, b in spec.links:
        for bridge in (a, b):
            if bridge not in bridges:
                raise _fail(source, f"link {a} - {b}: unknown bridge {bridge!r} "
                                    f"(the lab has {', '.join(sorted(bridges))})")
        if a == b:
            raise _fail(source, f"link {a} - {b}: a link joins two different bridges")
    names, macs, ips = set(), {}, {}
    for dom in spec.domains:
        if dom.name in names:
            raise _fail(source, f"two domains are named {dom.name!r}")
        names.add(dom.name)
        try:
            check_guest_net(kernel_cmdline(dom.extra), [f"eth{v.devid}" for v in dom.vifs])
        except ConfigError as err:
            raise _fail(source, f"domain {dom.name}: {err.message}") from None
        for vif in dom.vifs:
            if vif.bridge not in bridges:
                raise _fail(source, f"domain {dom.name} vif {vif.devid}: unknown bridge {vif.bridge!r} "
                                    f"(the lab has {', '.join(sorted(bridges))})")
            if vif.mac:
                other = macs.setdefault((vif.bridge, vif.mac.lower()), dom.name)
                if other != dom.name:
                    raise _fail(source, f"domains {other} and {dom.name} both use mac {vif.mac} on {vif.bridge}")
            if vif.ip:
                addr = ipaddress.IPv4Interface(vif.ip).ip
                other = ips.setdefault((vif.bridge, addr), dom.name)
                if other != dom.name:
                    raise _fail(source, f"domains {other} and {dom.name} both use ip {addr} on {vif.bridge}")


def link_ends(spec: LabSpec, index: int) -> tuple[str, str]:
    """The two ports (BRIDGE:PORT) of the index-th [[link]], as the bridge
    service names them: to-PEER on each bridge, to-PEER.N for the Nth
    further cable between the same two."""
    a, b = spec.links[index]
    nth = sum(1 for pair in spec.links[:index] if set(pair) == {a, b})

    def port(peer: str) -> str:
        base = f"to-{peer}"[:IFNAMSIZ - 1]
        if not nth:
            return base
        suffix = f".{nth}"
        return base[:IFNAMSIZ - 1 - len(suffix)] + suffix
    return f"{a}:{port(b)}", f"{b}:{port(a)}"


def shaping_devices(spec: LabSpec, domids: dict[str, int]) -> list[tuple[str, tuple[str, ...]]]:
    """(device, netem options) for every netem of the lab file, once its
    domains have their ids."""
    out = []
    for shape in spec.shaping:
        if shape.link is not None:
            out += [(end, shape.args) for end in link_ends(spec, shape.link)]
            continue
        domid = domids[shape.domain]
        for vif in spec.domain(shape.domain).vifs:
            if shape.devid is None or vif.devid == shape.devid:
                prefix = "vif" if shape.direction == "rx" else "veth"
                out.append((f"{prefix}{domid}.{vif.devid}", shape.args))
    return out


def load_lab(path: str | Path) -> LabSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"lab file {path} does not exist") from None
    return parse_lab(text, str(path), path.parent)


DEMO_LAB = """
[lab]
name = "demo"

[[bridge]]
name = "xenbr0"

[[domain]]
name = "web"
memory = 32
vif = ["mac=00:16:3e:00:00:01,ip=10.0.0.1/24"]

[[domain]]
name = "db"
memory = 32
vif = ["mac=00:16:3e:00:00:02,ip=10.0.0.2/24"]

[[domain]]
name = "cache"
memory = 32
vif = ["mac=00:16:3e:00:00:03,ip=10.0.0.3/24"]
"""


def demo_lab() -> LabSpec:
    return parse_lab(DEMO_LAB, "<demo lab>")
