"""802.1D spanning tree for one bridge, as Linux's kernel STP (stp_state 1).

A sans-I/O core: it is told what arrives (``receive``), what the clock says
(``tick``) and what the administrator changes; it changes the ports' states
through the bridge and leaves the BPDUs to send in ``outbox`` as (port,
frame). No sleeping anywhere: ``next_deadline`` says when ``tick`` is next
due, so that tests drive time by hand.

The protocol is 802.1D-1998's, written as Linux writes it (net/bridge/
br_stp.c, br_stp_bpdu.c, br_stp_timer.c, br_stp_if.c), function for
function where the names say so: root and designated port selection, the
port state machine (blocking, listening, learning, forwarding; disabled
without a link), the hello, message age, forward delay, hold, TCN and
topology change timers, and topology-change ageing (FDB entries age after
forward_delay while the topology changes, as hold_time()).

BPDUs are byte for byte Linux's (br_send_config_bpdu, br_send_tcn_bpdu):
an 802.3 frame to 01:80:c2:00:00:00 from the port's address, LLC
42 42 03, protocol 0, version 0, then a 35-byte configuration BPDU or a
4-byte TCN; times in 1/256 s.
"""
from __future__ import annotations

import errno
import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenlab.xen.errors import XenError

if TYPE_CHECKING:
    from xenlab.bridge.core import Bridge, BridgePort

log = logging.getLogger(__name__)

STP_GROUP = bytes.fromhex("0180c2000000")
LLC_STP = b"\x42\x42\x03"          # DSAP, SSAP: the spanning tree SAP; UI
BPDU_TYPE_CONFIG = 0x00
BPDU_TYPE_TCN = 0x80
FLAG_TC = 0x01
FLAG_TCA = 0x80
STP_HZ = 256                        # BPDU times are in 1/256 s
MESSAGE_AGE_INCR = 1 / STP_HZ       # br_private_stp.h: one BPDU time unit per hop
HOLD_TIME = 1.0                     # BR_HOLD_TIME: at most one config BPDU a second per port
PORT_BITS = 10                      # BR_PORT_BITS: port id = priority << 10 | port number

# Linux's defaults and bounds (br_private.h, br_stp.c), in seconds.
DEFAULT_HELLO_TIME = 2.0
DEFAULT_MAX_AGE = 20.0
DEFAULT_FORWARD_DELAY = 15.0
HELLO_TIME_RANGE = (1.0, 10.0)      # BR_MIN_HELLO_TIME .. BR_MAX_HELLO_TIME
MAX_AGE_RANGE = (6.0, 40.0)
FORWARD_DELAY_RANGE = (2.0, 30.0)

# Protocol id, version, type, flags, root id, root path cost, bridge id, port
# id, message age, max age, hello time, forward delay: 35 bytes.
_CONFIG_BODY = struct.Struct("!HBBB8sI8sHHHHH")


@dataclass(frozen=True)
class ConfigBpdu:
    root: bytes                 # bridge id: priority (2 bytes) then address
    root_path_cost: int
    bridge_id: bytes
    port_id: int
    message_age: float          # seconds
    max_age: float
    hello_time: float
    forward_delay: float
    topology_change: bool = False
    topology_change_ack: bool = False


@dataclass(frozen=True)
class TcnBpdu:
    pass


def _ticks(seconds: float) -> int:
    # br_set_ticks: STP_HZ * j / HZ, truncated.
    return min(0xFFFF, int(seconds * STP_HZ))


def encode_config(bpdu: ConfigBpdu, src: bytes) -> bytes:
    """br_send_config_bpdu: the whole 52-byte frame."""
    flags = (FLAG_TC if bpdu.topology_change else 0) | (FLAG_TCA if bpdu.topology_change_ack else 0)
    body = _CONFIG_BODY.pack(0, 0, BPDU_TYPE_CONFIG, flags, bpdu.root, bpdu.root_path_cost,
                             bpdu.bridge_id, bpdu.port_id, _ticks(bpdu.message_age),
                             _ticks(bpdu.max_age), _ticks(bpdu.hello_time),
                             _ticks(bpdu.forward_delay))
    return _frame(src, body)


def encode_tcn(src: bytes) -> bytes:
    """br_send_tcn_bpdu: protocol 0, version 0, type 0x80."""
    return _frame(src, bytes([0, 0, 0, BPDU_TYPE_TCN]))


def _frame(src: bytes, body: bytes) -> bytes:
    # llc_mac_hdr_init with ETH_P_802_2: an 802.3 length, not a type.
    payload = LLC_STP + body
    return STP_GROUP + src + len(payload).to_bytes(2, "big") + payload


def decode(frame: bytes) -> ConfigBpdu | TcnBpdu | None:
    """br_stp_rcv's checks: an 802.3 frame with the STP LLC header, protocol
    id 0, version 0; a config BPDU of at least 35 bytes whose message age is
    not past its max age, or a TCN. None for anything else (dropped)."""
    if len(frame) < 14 + 3 + 4 or frame[14:17] != LLC_STP:
        return None
    length = int.from_bytes(frame[12:14], "big")
    if length >= 0x0600:            # an EtherType: not 802.3
        return None
    body = frame[17:]
    if body[0:3] != b"\0\0\0":      # protocol id 0, version 0
        return None
    kind = body[3]
    if kind == BPDU_TYPE_TCN:
        return TcnBpdu()
    if kind != BPDU_TYPE_CONFIG or len(body) < _CONFIG_BODY.size:
        return None
    (_, _, _, flags, root, cost, bridge_id, port_id, age, max_age, hello,
     delay) = _CONFIG_BODY.unpack_from(body)
    bpdu = ConfigBpdu(root, cost, bridge_id, port_id, age / STP_HZ, max_age / STP_HZ,
                      hello / STP_HZ, delay / STP_HZ, bool(flags & FLAG_TC), bool(flags & FLAG_TCA))
    if bpdu.message_age > bpdu.max_age:
        return None                 # "port %u received a BPDU with message age beyond max age"
    return bpdu


def format_bridge_id(bid: bytes) -> str:
    """As iproute2 prints a bridge id: 8000.2:0:0:0:0:aa."""
    return f"{int.from_bytes(bid[:2], 'big'):04x}." + ":".join(f"{b:x}" for b in bid[2:])


@dataclass
class StpPort:
    """br_private.h's STP fields of a net_bridge_port."""
    port_id: int = 0
    designated_root: bytes = bytes(8)
    designated_cost: int = 0
    designated_bridge: bytes = bytes(8)
    designated_port: int = 0
    designated_age: float = 0.0
    topology_change_ack: bool = False
    config_pending: bool = False
    message_age_timer: float | None = None
    forward_delay_timer: float | None = None
    hold_timer: float | None = None


class Stp:
    """Kernel STP on one Bridge. The bridge owns the ports and their states;
    this owns the protocol's state."""

    def __init__(self, bridge: "Bridge", now: float, hello_time: float = DEFAULT_HELLO_TIME,
                 max_age: float = DEFAULT_MAX_AGE, forward_delay: float = DEFAULT_FORWARD_DELAY):
        self.br = bridge
        self.bridge_hello_time = check_time("hello_time", hello_time, HELLO_TIME_RANGE)
        self.bridge_max_age = check_time("max_age", max_age, MAX_AGE_RANGE)
        self.bridge_forward_delay = check_time("forward_delay", forward_delay, FORWARD_DELAY_RANGE)
        self.hello_time = self.bridge_hello_time
        self.max_age = self.bridge_max_age
        self.forward_delay = self.bridge_forward_delay
        self.bridge_id = self._own_id()
        self.designated_root = self.bridge_id
        self.root_path_cost = 0
        self.root_port = 0
        self.topology_change = False
        self.topology_change_detected = False
        self.hello_timer: float | None = None
        self.tcn_timer: float | None = None
        self.topology_change_timer: float | None = None
        self.ports: dict[str, StpPort] = {}
        self.outbox: list[tuple[str, bytes]] = []
        self.counters = {"config_sent": 0, "tcn_sent": 0, "config_received": 0, "tcn_received": 0,
                         "bad_bpdu": 0, "topology_changes": 0}
        self.now = now

    # -- identity -------------------------------------------------------------------------
    def _own_id(self) -> bytes:
        return self.br.priority.to_bytes(2, "big") + self.br.mac

    @property
    def is_root(self) -> bool:
        return self.designated_root == self.bridge_id

    def port_no(self, name: str) -> int:
        return self.br.ports[name].port_no

    def _port(self, port_no: int) -> "BridgePort | None":
        for port in self.br.ports.values():
            if port.port_no == port_no:
                return port
        return None

    def info(self, port: "BridgePort") -> StpPort:
        return self.ports[port.name]

    # -- starting and stopping (br_stp_start, br_stp_enable_port...) -------------------------
    def start(self) -> None:
        """br_stp_start: the hello timer runs and state selection runs over
        the ports as they are, as the kernel does when stp_state goes to 1
        on a running bridge (forwarding ports that STP keeps stay
        forwarding; the others block). Ports added later start blocking."""
        self.bridge_id = self._own_id()
        self.designated_root = self.bridge_id
        for port in self.br.ports.values():
            self.ports[port.name] = StpPort(port_id=make_port_id(port.priority, port.port_no))
            self._become_designated_port(port)
            if not port.carrier:
                self.br._set_state(port, "disabled")
        self.hello_timer = self.now + self.hello_time
        self._config_bpdu_generation()
        self._port_state_selection()

    def add_port(self, port: "BridgePort") -> None:
        self.ports[port.name] = StpPort()
        if port.carrier:
            self.enable_port(port)
        else:
            self.br._set_state(port, "disabled")

    def enable_port(self, port: "BridgePort") -> None:
        """br_stp_enable_port."""
        self._init_port(port)
        self._port_state_selection()

    def _init_port(self, port: "BridgePort") -> None:
        info = self.ports.setdefault(port.name, StpPort())
        info.port_id = make_port_id(port.priority, port.port_no)
        self._become_designated_port(port)
        self.br._set_state(port, "blocking")
        info.topology_change_ack = False
        info.config_pending = False

    def disable_port(self, port: "BridgePort") -> None:
        """br_stp_disable_port (the FDB flush is the bridge's)."""
        was_root = self.is_root
        info = self.info(port)
        self._become_designated_port(port)
        self.br._set_state(port, "disabled")
        info.topology_change_ack = info.config_pending = False
        info.message_age_timer = info.forward_delay_timer = info.hold_timer = None
        self._configuration_update()
        self._port_state_selection()
        if self.is_root and not was_root:
            self._become_root_bridge()

    def remove_port(self, port: "BridgePort") -> None:
        """br_del_if: the port is disabled, then gone."""
        if port.name in self.ports:
            self.disable_port(port)
            del self.ports[port.name]
            self.outbox = [(p, f) for p, f in self.outbox if p != port.name]

    # -- administration (br_stp_if.c) ------------------------------------------------------
    def change_bridge_id(self) -> None:
        """br_stp_change_bridge_id / br_stp_set_bridge_priority: the bridge's
        priority or address changed."""
        new = self._own_id()
        if new == self.bridge_id:
            return
        was_root = self.is_root
        old = self.bridge_id
        for info in self.ports.values():
            if info.designated_bridge == old:
                info.designated_bridge = new
            if info.designated_root == old:
                info.designated_root = new
        if self.designated_root == old:
            self.designated_root = new
        self.bridge_id = new
        self._configuration_update()
        self._port_state_selection()
        if self.is_root and not was_root:
            self._become_root_bridge()

    def set_port_priority(self, port: "BridgePort") -> None:
        """br_stp_set_port_priority (the new priority is already on the port)."""
        info = self.info(port)
        new_id = make_port_id(port.priority, port.port_no)
        if self._is_designated_port(port):
            info.designated_port = new_id
        info.port_id = new_id
        if self.bridge_id == info.designated_bridge and info.port_id < info.designated_port:
            self._become_designated_port(port)
            self._configuration_update()
            self._port_state_selection()

    def set_path_cost(self, port: "BridgePort") -> None:
        """br_stp_set_path_cost."""
        self._configuration_update()
        self._port_state_selection()

    def set_timers(self, hello_time: float | None = None, max_age: float | None = None,
                   forward_delay: float | None = None) -> None:
        """br_set_hello_time / br_set_max_age / br_set_forward_delay: the
        bridge's own values, used as they are while it is the root."""
        if hello_time is not None:
            self.bridge_hello_time = check_time("hello_time", hello_time, HELLO_TIME_RANGE)
        if max_age is not None:
            self.bridge_max_age = check_time("max_age", max_age, MAX_AGE_RANGE)
        if forward_delay is not None:
            self.bridge_forward_delay = check_time("forward_delay", forward_delay, FORWARD_DELAY_RANGE)
        if self.is_root:
            self.hello_time = self.bridge_hello_time
            self.max_age = self.bridge_max_age
            self.forward_delay = self.bridge_forward_delay

    # -- receiving (br_stp_bpdu.c br_stp_rcv) ------------------------------------------------
    def receive(self, port: "BridgePort", frame: bytes) -> None:
        if port.state == "disabled" or port.name not in self.ports:
            return
        bpdu = decode(frame)
        if bpdu is None:
            self.counters["bad_bpdu"] += 1
            return
        if isinstance(bpdu, TcnBpdu):
            self.counters["tcn_received"] += 1
            self._received_tcn_bpdu(port)
        else:
            self.counters["config_received"] += 1
            self._received_config_bpdu(port, bpdu)

    def _received_config_bpdu(self, port: "BridgePort", bpdu: ConfigBpdu) -> None:
        was_root = self.is_root
        if self._supersedes_port_info(port, bpdu):
            self._record_config_information(port, bpdu)
            self._configuration_update()
            self._port_state_selection()
            if not self.is_root and was_root:
                self.hello_timer = None
                if self.topology_change_detected:
                    self.topology_change_timer = None
                    self._transmit_tcn()
                    self.tcn_timer = self.now + self.bridge_hello_time
            if port.port_no == self.root_port:
                self._record_config_timeout_values(bpdu)
                self._config_bpdu_generation()
                if bpdu.topology_change_ack:
                    self._topology_change_acknowledged()
        elif self._is_designated_port(port):
            self._transmit_config(port)           # br_reply

    def _received_tcn_bpdu(self, port: "BridgePort") -> None:
        if self._is_designated_port(port):
            log.info("%s: port %d(%s) received tcn bpdu", self.br.name, port.port_no, port.name)
            self._topology_change_detection()
            self.info(port).topology_change_ack = True    # br_topology_change_acknowledge
            self._transmit_config(port)

    # -- br_stp.c ---------------------------------------------------------------------------
    def _is_designated_port(self, port: "BridgePort") -> bool:
        info = self.info(port)
        return info.designated_bridge == self.bridge_id and info.designated_port == info.port_id

    def _should_become_root_port(self, port: "BridgePort", root_port: int) -> bool:
        info = self.info(port)
        if port.state == "disabled" or self._is_designated_port(port):
            return False
        if self.bridge_id <= info.designated_root:
            return False
        if not root_port:
            return True
        rp = self.info(self._port(root_port))
        for ours, theirs in ((info.designated_root, rp.designated_root),
                             (info.designated_cost + port.cost,
                              rp.designated_cost + self._port(root_port).cost),
                             (info.designated_bridge, rp.designated_bridge),
                             (info.designated_port, rp.designated_port)):
            if ours < theirs:
                return True
            if ours > theirs:
                return False
        return info.port_id < rp.port_id

    def _root_selection(self) -> None:
        root_port = 0
        for port in self.br.ports.values():
            if port.name in self.ports and self._should_become_root_port(port, root_port):
                root_port = port.port_no
        self.root_port = root_port
        if not root_port:
            self.designated_root = self.bridge_id
            self.root_path_cost = 0
        else:
            rp = self._port(root_port)
            info = self.info(rp)
            self.designated_root = info.designated_root
            self.root_path_cost = info.designated_cost + rp.cost

    def _become_root_bridge(self) -> None:
        self.max_age = self.bridge_max_age
        self.hello_time = self.bridge_hello_time
        self.forward_delay = self.bridge_forward_delay
        self._topology_change_detection()
        self.tcn_timer = None
        self._config_bpdu_generation()
        self.hello_timer = self.now + self.hello_time

    def _transmit_config(self, port: "BridgePort") -> None:
        info = self.info(port)
        if info.hold_timer is not None:
            info.config_pending = True
            return
        if self.is_root:
            age = 0.0
        else:
            root = self.info(self._port(self.root_port))
            age = self.now - root.designated_age + MESSAGE_AGE_INCR
        if age < self.max_age:
            bpdu = ConfigBpdu(self.designated_root, self.root_path_cost, self.bridge_id, info.port_id,
                              age, self.max_age, self.hello_time, self.forward_delay,
                              self.topology_change, info.topology_change_ack)
            self.outbox.append((port.name, encode_config(bpdu, self._port_address(port))))
            self.counters["config_sent"] += 1
            info.topology_change_ack = False
            info.config_pending = False
            info.hold_timer = self.now + HOLD_TIME

    def _port_address(self, port: "BridgePort") -> bytes:
        # BPDUs leave from the port device's address; a port without one
        # (a veth end added bare) sends from the bridge's.
        return port.mac if any(port.mac) else self.br.mac

    def _record_config_information(self, port: "BridgePort", bpdu: ConfigBpdu) -> None:
        info = self.info(port)
        info.designated_root = bpdu.root
        info.designated_cost = bpdu.root_path_cost
        info.designated_bridge = bpdu.bridge_id
        info.designated_port = bpdu.port_id
        info.designated_age = self.now - bpdu.message_age
        info.message_age_timer = self.now + (bpdu.max_age - bpdu.message_age)

    def _record_config_timeout_values(self, bpdu: ConfigBpdu) -> None:
        self.max_age = bpdu.max_age
        self.hello_time = bpdu.hello_time
        self.forward_delay = bpdu.forward_delay
        self._set_topology_change(bpdu.topology_change)

    def _transmit_tcn(self) -> None:
        port = self._port(self.root_port)
        if port is None:
            return
        self.outbox.append((port.name, encode_tcn(self._port_address(port))))
        self.counters["tcn_sent"] += 1

    def _should_become_designated_port(self, port: "BridgePort") -> bool:
        info = self.info(port)
        if self._is_designated_port(port):
            return True
        if info.designated_root != self.designated_root:
            return True
        if self.root_path_cost != info.designated_cost:
            return self.root_path_cost < info.designated_cost
        if self.bridge_id != info.designated_bridge:
            return self.bridge_id < info.designated_bridge
        return info.port_id < info.designated_port

    def _designated_port_selection(self) -> None:
        for port in self.br.ports.values():
            if port.name in self.ports and port.state != "disabled" \
                    and self._should_become_designated_port(port):
                self._become_designated_port(port)

    def _supersedes_port_info(self, port: "BridgePort", bpdu: ConfigBpdu) -> bool:
        info = self.info(port)
        if bpdu.root != info.designated_root:
            return bpdu.root < info.designated_root
        if bpdu.root_path_cost != info.designated_cost:
            return bpdu.root_path_cost < info.designated_cost
        if bpdu.bridge_id != info.designated_bridge:
            return bpdu.bridge_id < info.designated_bridge
        if bpdu.bridge_id != self.bridge_id:
            return True
        return bpdu.port_id <= info.designated_port

    def _topology_change_acknowledged(self) -> None:
        self.topology_change_detected = False
        self.tcn_timer = None

    def _topology_change_detection(self) -> None:
        if self.is_root:
            self._set_topology_change(True)
            self.topology_change_timer = self.now + self.bridge_forward_delay + self.bridge_max_age
        elif not self.topology_change_detected:
            self._transmit_tcn()
            self.tcn_timer = self.now + self.bridge_hello_time
        if not self.topology_change_detected:
            self.counters["topology_changes"] += 1
        self.topology_change_detected = True

    def _set_topology_change(self, value: bool) -> None:
        """__br_set_topology_change: while the topology changes, entries age
        after forward_delay (hold_time) instead of ageing_time."""
        value = bool(value)
        if value != self.topology_change:
            self.br.fdb.set_hold(self.forward_delay if value else None, self.now)
        self.topology_change = value

    def _config_bpdu_generation(self) -> None:
        for port in self.br.ports.values():
            if port.name in self.ports and port.state != "disabled" and self._is_designated_port(port):
                self._transmit_config(port)

    def _configuration_update(self) -> None:
        self._root_selection()
        self._designated_port_selection()

    def _become_designated_port(self, port: "BridgePort") -> None:
        info = self.info(port)
        info.designated_root = self.designated_root
        info.designated_cost = self.root_path_cost
        info.designated_bridge = self.bridge_id
        info.designated_port = info.port_id

    def _make_blocking(self, port: "BridgePort") -> None:
        if port.state not in ("disabled", "blocking"):
            if port.state in ("forwarding", "learning"):
                self._topology_change_detection()
            self.br._set_state(port, "blocking")
            log.info("%s: port %d(%s) entered blocking state", self.br.name, port.port_no, port.name)
            self.info(port).forward_delay_timer = None

    def _make_forwarding(self, port: "BridgePort") -> None:
        if port.state != "blocking":
            return
        self.br._set_state(port, "listening")
        log.info("%s: port %d(%s) entered listening state", self.br.name, port.port_no, port.name)
        self.info(port).forward_delay_timer = self.now + self.forward_delay

    def _port_state_selection(self) -> None:
        for port in self.br.ports.values():
            if port.name not in self.ports or port.state == "disabled":
                continue
            info = self.info(port)
            if port.port_no == self.root_port:
                info.config_pending = info.topology_change_ack = False
                self._make_forwarding(port)
            elif self._is_designated_port(port):
                info.message_age_timer = None
                self._make_forwarding(port)
            else:
                info.config_pending = info.topology_change_ack = False
                self._make_blocking(port)

    def _is_designated_for_some_port(self) -> bool:
        return any(port.state != "disabled" and self._is_designated_port(port)
                   for port in self.br.ports.values() if port.name in self.ports)

    # -- timers (br_stp_timer.c) ----------------------------------------------------------------
    def next_deadline(self) -> float | None:
        deadlines = [t for t in (self.hello_timer, self.tcn_timer, self.topology_change_timer)
                     if t is not None]
        for info in self.ports.values():
            deadlines += [t for t in (info.message_age_timer, info.forward_delay_timer,
                                      info.hold_timer) if t is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> None:
        """Run every timer due by `now`, earliest first, each at its own time."""
        while True:
            due = self.next_deadline()
            if due is None or due > now:
                break
            self.now = due
            self._fire(due)
        self.now = max(self.now, now)

    def _fire(self, due: float) -> None:
        if self.hello_timer == due:
            self.hello_timer = self.now + self.hello_time
            self._config_bpdu_generation()
            return
        if self.tcn_timer == due:
            self.tcn_timer = None
            if not self.is_root:
                self._transmit_tcn()
                self.tcn_timer = self.now + self.bridge_hello_time
            return
        if self.topology_change_timer == due:
            self.topology_change_timer = None
            self.topology_change_detected = False
            self._set_topology_change(False)
            return
        for port in list(self.br.ports.values()):
            info = self.ports.get(port.name)
            if info is None:
                continue
            if info.message_age_timer == due:
                info.message_age_timer = None
                self._message_age_timer_expired(port)
                return
            if info.forward_delay_timer == due:
                info.forward_delay_timer = None
                self._forward_delay_timer_expired(port)
                return
            if info.hold_timer == due:
                info.hold_timer = None
                if info.config_pending:
                    self._transmit_config(port)
                return

    def _message_age_timer_expired(self, port: "BridgePort") -> None:
        if port.state == "disabled":
            return
        info = self.info(port)
        log.info("%s: port %d(%s) neighbor %s lost", self.br.name, port.port_no, port.name,
                 format_bridge_id(info.designated_bridge))
        was_root = self.is_root
        self._become_designated_port(port)
        self._configuration_update()
        self._port_state_selection()
        if self.is_root and not was_root:
            self._become_root_bridge()

    def _forward_delay_timer_expired(self, port: "BridgePort") -> None:
        if port.state == "listening":
            self.br._set_state(port, "learning")
            self.info(port).forward_delay_timer = self.now + self.forward_delay
        elif port.state == "learning":
            self.br._set_state(port, "forwarding")
            if self._is_designated_for_some_port():
                self._topology_change_detection()
        log.info("%s: port %d(%s) entered %s state", self.br.name, port.port_no, port.name, port.state)

    # -- reporting --------------------------------------------------------------------------------
    def pop_outbox(self) -> list[tuple[str, bytes]]:
        out, self.outbox = self.outbox, []
        return out

    def port_role(self, port: "BridgePort") -> str:
        """What 802.1D calls the port: root, designated, alternate (blocked), disabled."""
        if port.state == "disabled":
            return "disabled"
        if port.port_no == self.root_port:
            return "root"
        if self._is_designated_port(port):
            return "designated"
        return "alternate"


def make_port_id(priority: int, port_no: int) -> int:
    """br_make_port_id."""
    return (priority << PORT_BITS) | (port_no & ((1 << PORT_BITS) - 1))


def check_time(name: str, seconds: float, bounds: tuple[float, float]) -> float:
    seconds = float(seconds)
    if not bounds[0] <= seconds <= bounds[1]:
        raise XenError(errno.ERANGE, f"{name} {seconds:g} s is outside {bounds[0]:g}..{bounds[1]:g} s "
                                     f"(802.1D's bounds, as Linux)")
    return seconds
