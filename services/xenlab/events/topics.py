"""xenlab's MQTT topic tree and JSON payloads. Pure: names and bytes, no I/O.

Every topic sits under ``PREFIX/HOST`` (``xenlab/<host>`` by default; HOST
is the lab's name, or the machine's hostname for a service started alone),
so that one broker can serve several hosts and a subscriber picks one with
``xenlab/HOST/#`` or all with ``xenlab/+/...``.

Every payload is a JSON object with the same envelope: ``schema`` (this
module's ``SCHEMA``; bumped when a field changes meaning or goes away, never
for an added field), ``type`` (which payload it is, as in ``TOPICS``),
``time`` (Unix time in seconds, when it happened or was measured) and
``host``. State topics are retained, so that a subscriber that comes late
still gets the current state; events and counters are not. A state topic
whose object is gone (a destroyed domain's, its vifs') is cleared after its
last message with an empty retained message, as MQTT 3.1.1 (3.3.1.3) says
a broker forgets a retained message (``cleared``).

``TOPICS`` documents every topic: docs/EVENTS.md is written from it, and
the tests check that every payload carries exactly its documented fields.
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from typing import Mapping

from xenlab.xen import abi
from xenlab.xen.errors import ConfigError

SCHEMA = 1
DEFAULT_PREFIX = "xenlab"
ENVELOPE = ("schema", "type", "time", "host")

# Lifecycle states of a domain as published: what `xl list` shows, plus the
# two edges that have no state of their own (created, destroyed).
DOMAIN_STATES = ("created", "running", "paused", "shutdown", "crashed", "dying", "destroyed")


@dataclass(frozen=True)
class TopicDoc:
    pattern: str            # below PREFIX/HOST; <x> is one topic level
    type: str
    retained: bool
    summary: str
    fields: Mapping[str, str]


_RATES = ("the counters per second, over the interval since this topic's previous message "
          "(none in the first)")


_VIF_ID = {
    "domid": "the guest (frontend) domain id",
    "devid": "the vif's device id in the guest (ethDEVID)",
    "vifname": "the backend interface's name (vifDOMID.DEVID unless vifname= was given)",
}

TOPICS: tuple[TopicDoc, ...] = (
    TopicDoc("domain/<domid>/state", "domain.state", True,
             "A domain's lifecycle state, published at each change, and again each time "
             "the hypervisor's publisher (re)connects.", {
                 "domid": "domain id",
                 "name": "domain name",
                 "uuid": "domain UUID",
                 "state": "one of " + ", ".join(DOMAIN_STATES) + " (created is followed by running "
                          "or paused once the domain's process runs; destroyed is the last message "
                          "for this domain, after its vifs' last)",
                 "memory_kb": "current reservation in KiB as of this state change (0 from dying on)",
                 "maxmem_kb": "maximum reservation in KiB",
                 "target_kb": "balloon target in KiB",
                 "vcpus": "online vCPUs",
                 "privileged": "true for Domain-0",
                 "shutdown_reason": "poweroff, reboot, crash... once the domain shut down, else empty",
                 "launcher": "how the domain runs: local, docker, none",
                 "pid": "the domain's process id (a container's main process for the docker "
                        "launcher), 0 when it has none: Domain-0, launcher none, or not started yet",
             }),
    TopicDoc("domain/<domid>/vif/<devid>/state", "vif.state", True,
             "A vif's xenbus handshake as xenstore shows it (frontend and backend "
             "XenbusState, hotplug-status), published at each change, and again each time "
             "the hypervisor's publisher (re)connects.", {
                 **_VIF_ID,
                 "backend_id": "the driver domain running netback for it",
                 "mac": "the guest's MAC address",
                 "bridge": "the bridge hotplug attaches it to",
                 "ip": "the ip= of the vif spec, if any",
                 "frontend_state": "XenbusState of /local/domain/D/device/vif/N/state "
                                   "(0 Unknown once the node is gone, as xenbus_read_driver_state)",
                 "frontend_state_name": "its name: Initialising, InitWait, Connected, Closed...",
                 "backend_state": "XenbusState of the backend directory's state node",
                 "backend_state_name": "its name",
                 "hotplug_status": "the backend's hotplug-status: empty, connected or error",
                 "present": "false once the vif's directories are gone (detached or domain destroyed)",
             }),
    TopicDoc("domain/<domid>/vif/<devid>/hotplug", "vif.hotplug", False,
             "The hotplug script's verdict, when hotplug-status changes to a value.", {
                 **_VIF_ID,
                 "bridge": "the bridge it was attached to",
                 "hotplug_status": "connected or error",
                 "hotplug_error": "the backend's hotplug-error node when the status is error, else empty",
             }),
    TopicDoc("domain/<domid>/vif/<devid>/link", "vif.link", True,
             "A vif's link, as each side of it set it (`xenlab ip link set`) and told the "
             "other through xenstore: published once at each change, and again each time "
             "the hypervisor's publisher (re)connects.", {
                 **_VIF_ID,
                 "backend_id": "the driver domain running netback for it",
                 "link": "up when both sides are up, else down: frames cross only then",
                 "backend": "the vif in the driver domain: up or down (`ip link set vifD.N`)",
                 "frontend": "the guest's interface: up or down (`ip -n DOMAIN link set ethN`)",
             }),
    TopicDoc("domain/<domid>/vif/<devid>/stats", "vif.stats", False,
             "A vif's counters as its backend (netback in the driver domain) counts them, as "
             "`ip -s link show vifD.N` in dom0: tx_* went to the guest, rx_* came from it. "
             "Once an interval while they move, once more when they stop (rates at 0), once "
             "when the vif appears; nothing while it is idle.", {
                 **_VIF_ID,
                 "backend_id": "the driver domain publishing it",
                 "link_state": "connected, down or disabled (netback disabled a misbehaving frontend)",
                 "counters": "tx_packets, tx_bytes, rx_packets, rx_bytes; with a netem on the vif "
                             "(`xenlab tc`), also qdisc_duplicated, qdisc_backlog (and "
                             "qdisc_corrupted, qdisc_reordered)",
                 "rates": _RATES,
                 "drops": "frames dropped, by reason (a netem's: netem_loss, netem_limit, "
                          "netem_flushed)",
             }),
    TopicDoc("bridge/<bridge>/fdb/<kind>", "fdb.event", False,
             "A forwarding-database change. kind is learn, move (a MAC seen on another port), "
             "age (expired), evict (pushed out by the size limit), flush (one per entry "
             "removed), static (a static entry added) or delete (a static entry removed).", {
                 "bridge": "the bridge",
                 "kind": "as in the topic",
                 "mac": "the station's MAC address",
                 "port": "the port it is (or was) on",
                 "old_port": "for move: the port it was on before, else empty",
                 "static": "whether the entry is static (or permanent)",
                 "vlan": "the entry's VLAN, 0 without VLAN filtering",
                 "sticky": "whether the entry never moves",
                 "permanent": "whether the entry is the bridge's own address",
                 "monitor": "the line `bridge monitor fdb` prints for it (\"Deleted ...\" when it went)",
             }),
    TopicDoc("bridge/<bridge>/port/<port>/state", "port.state", True,
             "A bridge port added, changed (a flag, its STP or administrative state) or "
             "removed, as RTM_NEWLINK / RTM_DELLINK: published at each change, and again "
             "each time the bridge's publisher (re)connects.", {
                 "bridge": "the bridge",
                 "port": "the port's name (the vif's name for a vif)",
                 "port_no": "the port number",
                 "state": "disabled, listening, learning, forwarding or blocking",
                 "role": "with STP: root, designated, alternate or disabled; else empty",
                 "carrier": "whether the port's link is up",
                 "flags": "learning, flood, mcast_flood, bcast_flood, hairpin, isolated, locked (booleans)",
                 "priority": "the port's STP priority",
                 "cost": "the port's STP path cost",
                 "present": "false once the port is gone",
                 "monitor": "the line `bridge monitor link` prints for it",
             }),
    TopicDoc("bridge/<bridge>/stats", "bridge.stats", False,
             "A bridge's counters, once an interval while frames cross it, once more when they "
             "stop (rates at 0); nothing while it is idle.", {
                 "bridge": "the bridge",
                 "counters": "rx, forwarded, flooded, unicast, tx",
                 "rates": _RATES,
                 "drops": "frames dropped, by reason",
                 "fdb": "FDB counters (learned, moved, aged, evicted, flushed...) and entries",
                 "ports": "the number of ports",
                 "stp": "with STP: root_id, root_port, topology_change and the BPDU counters "
                        "(config_sent, config_received, tcn_sent, tcn_received, bad_bpdu, "
                        "topology_changes); else empty",
             }),
    TopicDoc("bridge/<bridge>/port/<port>/stats", "port.stats", False,
             "One bridge port's counters, with its bridge's, in each interval they moved and the "
             "one after (rates at 0): the bridge's view (rx entered the "
             "bridge there, tx left it there) and its link's (the veth end or TAP).", {
                 "bridge": "the bridge",
                 "port": "the port's name (the vif's name for a vif)",
                 "port_no": "the port number",
                 "port_state": "forwarding, learning, blocking, disabled...",
                 "transitions": "how many times the port entered each state (state: count)",
                 "counters": "rx_packets, rx_bytes, tx_packets, tx_bytes",
                 "rates": _RATES,
                 "drops": "frames dropped at this port, by reason",
                 "link": "the link device's counters and drops (drop_REASON), and its netem's "
                         "qdisc_* counters if it has one",
             }),
    TopicDoc("service/<service>/status", "service.status", True,
             "A publishing service (hypervisor, bridge, dom0): online with its publisher's "
             "counters, refreshed an interval after it next publishes (never while it is idle); "
             "offline when it stops, or as its MQTT "
             "last will when it dies or loses the broker.", {
                 "service": "hypervisor, bridge or dom0",
                 "state": "online or offline",
                 "pid": "its process id",
                 "published": "messages sent to the broker",
                 "dropped": "messages dropped because the queue was full (the oldest go first)",
                 "reconnects": "connections made after the first one",
                 "queued": "messages waiting for the broker",
             }),
)
DOCS = {doc.type: doc for doc in TOPICS}


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


DEFAULT_RETAINED = 8192         # retained topics remembered (a broker keeps each one's last)


class RetainedStates(collections.OrderedDict):
    """What a broker keeps of retained topics, for a subscriber that comes
    later: each topic's last message, a cleared topic (an empty retained
    payload) forgotten, the least recently set dropped past ``limit``."""

    def __init__(self, limit: int = DEFAULT_RETAINED) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, message: Message) -> None:
        if not message.retain:
            return
        if not message.payload:
            self.pop(message.topic, None)
            return
        self[message.topic] = message
        self.move_to_end(message.topic)
        while len(self) > self.limit:
            self.popitem(last=False)


def check_level(text: str, what: str) -> str:
    """One MQTT topic level: not empty, no separator, no wildcard, no NUL
    (MQTT 3.1.1 section 4.7)."""
    if not text or any(c in text for c in "/+#\0") or len(text.encode()) > 128:
        raise ConfigError(f"{what} {text!r} cannot be an MQTT topic level: it must be 1..128 "
                          f"bytes without / + # or NUL")
    return text


def check_prefix(prefix: str) -> str:
    for level in prefix.split("/"):
        check_level(level, f"topic prefix {prefix!r}: level")
    return prefix


@dataclass(frozen=True)
class Topics:
    """The topic names of one host."""
    host: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_level(self.host, "host name")
        check_prefix(self.prefix)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.host}"

    def all(self) -> str:
        return f"{self.base}/#"

    def domain_state(self, domid: int) -> str:
        return f"{self.base}/domain/{domid}/state"

    def vif(self, domid: int, devid: int, leaf: str) -> str:
        return f"{self.base}/domain/{domid}/vif/{devid}/{leaf}"

    def fdb(self, bridge: str, kind: str) -> str:
        return f"{self.base}/bridge/{_level(bridge)}/fdb/{_level(kind)}"

    def bridge_stats(self, bridge: str) -> str:
        return f"{self.base}/bridge/{_level(bridge)}/stats"

    def port_state(self, bridge: str, port: str) -> str:
        return f"{self.base}/bridge/{_level(bridge)}/port/{_level(port)}/state"

    def port_stats(self, bridge: str, port: str) -> str:
        return f"{self.base}/bridge/{_level(bridge)}/port/{_level(port)}/stats"

    def service_status(self, service: str) -> str:
        return f"{self.base}/service/{_level(service)}/status"


def _level(name: str) -> str:
    # Bridge and port names are IFNAMSIZ names that may not contain '/';
    # anything else that cannot be a level is replaced, not refused, so
    # that an odd name never stops the publisher.
    return "".join("_" if c in "/+#\0" else c for c in name) or "_"


def cleared(topic: str) -> Message:
    """An empty retained message: the broker forgets the topic's retained
    message (MQTT 3.1.1, 3.3.1.3), so a late subscriber is not told about
    something long gone."""
    return Message(topic, b"", True)


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _message(topics: Topics, topic: str, type_: str, now: float, fields: dict) -> Message:
    payload = {"schema": SCHEMA, "type": type_, "time": round(now, 6), "host": topics.host, **fields}
    return Message(topic, encode(payload), DOCS[type_].retained)


def state_name(value: int) -> str:
    try:
        return abi.XenbusState(value).name
    except ValueError:
        return str(value)


# -- payload builders ---------------------------------------------------------------
def domain_state(topics: Topics, info: Mapping, state: str, now: float) -> Message:
    """`info`: Hypervisor.domain_info's fields; `state`: one of DOMAIN_STATES."""
    if state not in DOMAIN_STATES:
        raise ValueError(f"unknown domain state {state!r}")
    fields = {k: info.get(k, d) for k, d in (
        ("domid", 0), ("name", ""), ("uuid", ""), ("memory_kb", 0), ("maxmem_kb", 0),
        ("target_kb", 0), ("vcpus", 0), ("privileged", False), ("shutdown_reason", ""),
        ("launcher", ""), ("pid", 0))}
    fields["state"] = state
    return _message(topics, topics.domain_state(fields["domid"]), "domain.state", now, fields)


def vif_state(topics: Topics, vif: Mapping, present: bool, now: float) -> Message:
    """`vif`: the fields of xl network-list (Hypervisor.network_list)."""
    front, back = int(vif.get("state", 0)), int(vif.get("backend_state", 0))
    fields = {
        "domid": vif["domid"], "devid": vif["devid"], "vifname": vif.get("vifname", ""),
        "backend_id": vif.get("backend_id", 0), "mac": vif.get("mac", ""),
        "bridge": vif.get("bridge", ""), "ip": vif.get("ip", ""),
        "frontend_state": front, "frontend_state_name": state_name(front),
        "backend_state": back, "backend_state_name": state_name(back),
        "hotplug_status": vif.get("hotplug_status", ""), "present": present,
    }
    return _message(topics, topics.vif(vif["domid"], vif["devid"], "state"), "vif.state", now, fields)


def vif_link(topics: Topics, vif: Mapping, now: float) -> Message:
    """`vif`: the fields of xl network-list, with frontend_link and backend_link."""
    front, back = vif.get("frontend_link", "up"), vif.get("backend_link", "up")
    fields = {"domid": vif["domid"], "devid": vif["devid"], "vifname": vif.get("vifname", ""),
              "backend_id": vif.get("backend_id", 0),
              "link": "up" if front == back == "up" else "down", "backend": back, "frontend": front}
    return _message(topics, topics.vif(vif["domid"], vif["devid"], "link"), "vif.link", now, fields)


def vif_hotplug(topics: Topics, vif: Mapping, error: str, now: float) -> Message:
    fields = {"domid": vif["domid"], "devid": vif["devid"], "vifname": vif.get("vifname", ""),
              "bridge": vif.get("bridge", ""), "hotplug_status": vif.get("hotplug_status", ""),
              "hotplug_error": error}
    return _message(topics, topics.vif(vif["domid"], vif["devid"], "hotplug"), "vif.hotplug", now, fields)


def _split_drops(stats: Mapping[str, int]) -> tuple[dict, dict]:
    counters = {k: v for k, v in stats.items() if not k.startswith("drop_")}
    drops = {k[5:]: v for k, v in stats.items() if k.startswith("drop_")}
    return counters, drops


def vif_stats(topics: Topics, domid: int, devid: int, vifname: str, backend_id: int,
              link_state: str, stats: Mapping[str, int], now: float,
              rates: Mapping[str, float] | None = None) -> Message:
    """`stats`: NetDevice.stats() (counters and drop_REASON keys); `rates`:
    the counters per second (sources.RateMeter)."""
    counters, drops = _split_drops(stats)
    fields = {"domid": domid, "devid": devid, "vifname": vifname, "backend_id": backend_id,
              "link_state": link_state, "counters": counters, "rates": dict(rates or {}),
              "drops": drops}
    return _message(topics, topics.vif(domid, devid, "stats"), "vif.stats", now, fields)


def fdb_event(topics: Topics, event: Mapping, now: float) -> Message:
    """`event`: FdbEvent.to_dict()."""
    fields = {k: event.get(k, d) for k, d in (("bridge", ""), ("kind", ""), ("mac", ""),
                                              ("port", ""), ("old_port", ""), ("static", False),
                                              ("vlan", 0), ("sticky", False), ("permanent", False),
                                              ("monitor", ""))}
    return _message(topics, topics.fdb(fields["bridge"], fields["kind"]), "fdb.event", now, fields)


PORT_FLAGS = ("learning", "flood", "mcast_flood", "bcast_flood", "hairpin", "isolated", "locked")


def port_state(topics: Topics, bridge: str, port: Mapping, present: bool, monitor: str,
               now: float) -> Message:
    """`port`: name, port_no, state, role, carrier, priority, cost and the flags."""
    fields = {"bridge": bridge, "port": port["name"], "port_no": int(port.get("port_no", 0)),
              "state": port.get("state", ""), "role": port.get("role", ""),
              "carrier": bool(port.get("carrier", True)),
              "flags": {f: bool(port.get(f, False)) for f in PORT_FLAGS},
              "priority": int(port.get("priority", 0)), "cost": int(port.get("cost", 0)),
              "present": present, "monitor": monitor}
    return _message(topics, topics.port_state(bridge, port["name"]), "port.state", now, fields)


def bridge_stats(topics: Topics, bridge: str, counters: Mapping[str, int], drops: Mapping[str, int],
                 fdb: Mapping[str, int], ports: int, now: float,
                 rates: Mapping[str, float] | None = None, stp: Mapping | None = None) -> Message:
    fields = {"bridge": bridge, "counters": dict(counters), "rates": dict(rates or {}),
              "drops": dict(drops), "fdb": dict(fdb), "ports": ports, "stp": dict(stp or {})}
    return _message(topics, topics.bridge_stats(bridge), "bridge.stats", now, fields)


def port_stats(topics: Topics, bridge: str, port: str, port_no: int, port_state: str,
               counters: Mapping[str, int], drops: Mapping[str, int], link: Mapping[str, int],
               now: float, rates: Mapping[str, float] | None = None,
               transitions: Mapping[str, int] | None = None) -> Message:
    fields = {"bridge": bridge, "port": port, "port_no": port_no, "port_state": port_state,
              "transitions": dict(transitions or {}),
              "counters": dict(counters), "rates": dict(rates or {}), "drops": dict(drops),
              "link": dict(link)}
    return _message(topics, topics.port_stats(bridge, port), "port.stats", now, fields)


def service_status(topics: Topics, service: str, online: bool, pid: int,
                   counters: Mapping[str, int], now: float) -> Message:
    fields = {"service": service, "state": "online" if online else "offline", "pid": pid,
              **{k: int(counters.get(k, 0)) for k in ("published", "dropped", "reconnects", "queued")}}
    return _message(topics, topics.service_status(service), "service.status", now, fields)


def decode(payload: bytes) -> dict:
    """A payload back into a dict; ValueError if it is not one of ours."""
    data = json.loads(payload)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"not a schema {SCHEMA} xenlab event")
    return data
