"""netback's side of the xenbus handshake (Linux's xenbus.c): the backend
directory the toolstack wrote, the features netback offers, the frontend's
ring details, and the device that follows the frontend's state.

The handshake is Linux netback's: on probe, read and validate the backend
directory, advertise the features and go InitWait; when the frontend is
Connected, read and validate its ring details, connect the vif's data path
(xenlab.drivers.netback.interface: map the two ring pages, bind the event
channel), run hotplug, write hotplug-status=connected, go Connected.
Teardown (frontend Closing or Closed, our directory removed, a fatal error)
stops the data path, takes the vif offline, unmaps and unbinds.

A frontend that breaks the protocol disables only its own vif: the tx
worker logs "vifD.N: fatal tx error: ...; disabling", stops, and the device
reports xenbus_dev_fatal.

The keys are parsed here, pure (``parse_backend_dir``,
``parse_frontend_keys``): a value a domain wrote is never trusted, and one
that is not what the protocol allows fails the device with its errno.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping

from xenlab.drivers import xenbus_state as xs
from xenlab.drivers.link import PeerLink
from xenlab.drivers.netback import interface
from xenlab.drivers.netback.antispoof import AntiSpoof
from xenlab.drivers.netback.datapath import PageBudget
from xenlab.drivers.netback.interface import Connection, Hotplug, VifDevice
from xenlab.drivers.netback.ratelimit import CreditScheduler, Rate, parse_rate
from xenlab.drivers.xenbus_device import XenbusDevice, XenbusDeviceDriver
from xenlab.xen import abi
from xenlab.xen.abi import XenbusState
from xenlab.xen.digits import C_SPACE, U32_MAX, parse_decimal
from xenlab.xen.errors import ConfigError, XenError
from xenlab.xen.names import DEFAULT_BRIDGE
from xenlab.xen.netconf import parse_mac
from xenlab.xen.netif import FEATURE_XENLAB_PERSISTENT
from xenlab.xen.xenstore_paths import parse_backend_path

log = logging.getLogger(__name__)

FEATURES = {
    # What netback advertises in its backend directory (netback_probe).
    "feature-sg": "1",
    "feature-gso-tcpv4": "0",
    "feature-gso-tcpv6": "0",
    "feature-ipv6-csum-offload": "0",
    "feature-rx-copy": "1",
    "feature-rx-flip": "0",
    "feature-multicast-control": "0",
    "feature-dynamic-multicast-control": "0",
    "feature-split-event-channels": "0",
    "feature-ctrl-ring": "0",
    # xenvif_max_queues: netback takes one queue (connect refuses more, below).
    "multi-queue-max-queues": "1",
    # Not in netif.h: the frontend may say it keeps its buffer grants for the
    # whole connection, and netback then maps them (xenlab.drivers.netback.grant_cache).
    FEATURE_XENLAB_PERSISTENT: "1",
}
BACKEND_KEYS = ("frontend", "frontend-id", "mac", "ip", "rate", "mtu", "bridge", "vifname",
                "online")


# ----------------------------------------------------------------------------
# The keys: the backend directory and the frontend's ring details
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendConfig:
    """The toolstack's backend directory, validated (the keys libxl writes for a vif)."""

    backend_id: int
    frontend: str
    frontend_id: int
    devid: int
    mac: bytes
    ips: tuple[ipaddress.IPv4Address, ...] = ()
    rate: Rate | None = None
    mtu: int = abi.ETH_DATA_LEN
    bridge: str = DEFAULT_BRIDGE
    vifname: str | None = None
    online: bool = True

    @property
    def name(self) -> str:
        return self.vifname or f"vif{self.frontend_id}.{self.devid}"


def _config_error(message: str) -> XenError:
    return XenError(errno.EINVAL, message)


def parse_backend_dir(path: str, values: Mapping[str, str | None]) -> BackendConfig:
    """Validate the backend directory at ``path`` (absolute) from its keys."""
    ids = parse_backend_path(path)
    if ids is None:
        raise _config_error(f"{path} is not a vif backend path")
    backend_id, domid, devid = ids
    frontend = values.get("frontend")
    if not frontend:
        raise XenError(errno.ENOENT, "reading frontend: missing")
    fid_text = values.get("frontend-id")
    if fid_text is None:
        raise XenError(errno.ENOENT, "reading frontend-id: missing")
    frontend_id = parse_decimal(fid_text, "reading frontend-id", maximum=abi.DOMID_FIRST_RESERVED - 1)
    if frontend_id != domid:
        raise _config_error(f"frontend-id {frontend_id} does not match the backend path's d{domid}")
    if not frontend.startswith(f"/local/domain/{frontend_id}/"):
        raise _config_error(f"frontend {frontend} is not under d{frontend_id}'s home")
    mac_text = values.get("mac")
    if not mac_text:
        raise XenError(errno.ENOENT, "reading mac: missing")
    try:
        mac = parse_mac(mac_text)
    except ConfigError as err:
        raise _config_error(f"parsing mac: {err.message}") from None
    return BackendConfig(
        backend_id=backend_id, frontend=frontend, frontend_id=frontend_id, devid=devid, mac=mac,
        ips=_parse_ips(values.get("ip")), rate=_parse_rate_key(values.get("rate")),
        mtu=_parse_mtu(values.get("mtu")), bridge=values.get("bridge") or DEFAULT_BRIDGE,
        vifname=values.get("vifname") or None, online=(values.get("online") or "0").strip() == "1")


def _parse_ips(text: str | None) -> tuple[ipaddress.IPv4Address, ...]:
    if not text or not text.strip():
        return ()
    out = []
    for word in text.replace(",", " ").split():
        try:
            out.append(ipaddress.IPv4Interface(word).ip)
        except ValueError:
            raise _config_error(f"parsing ip: {word!r} is not an IPv4 address") from None
    return tuple(out)


def _parse_rate_key(text: str | None) -> Rate | None:
    if not text or not text.strip():
        return None
    try:
        return parse_rate(text)
    except XenError as err:
        raise _config_error(f"parsing rate: {err.message}") from None


def _parse_mtu(text: str | None) -> int:
    if not text or not text.strip():
        return abi.ETH_DATA_LEN
    return parse_decimal(text, "parsing mtu", minimum=abi.ETH_MIN_MTU,
                         maximum=abi.XEN_NETIF_MAX_TX_SIZE)


FRONTEND_KEYS = ("tx-ring-ref", "rx-ring-ref", "event-channel", "request-rx-copy",
                 "feature-rx-notify", "feature-sg", "multi-queue-num-queues",
                 FEATURE_XENLAB_PERSISTENT)


@dataclass(frozen=True)
class FrontendRings:
    """What netfront published for netback to connect (connect_data_rings)."""

    tx_ring_ref: int
    rx_ring_ref: int
    event_channel: int
    rx_notify: bool
    sg: bool
    persistent: bool = False      # it keeps its buffer grants: map them


def parse_frontend_keys(values: Mapping[str, str | None]) -> FrontendRings:
    """Validate the frontend's keys, as netback's connect() reads them."""
    tx = _read_u32(values, "tx-ring-ref")
    rx = _read_u32(values, "rx-ring-ref")
    port = _read_u32(values, "event-channel")
    if port == 0:
        raise _config_error("reading event-channel: port 0 is never a bound port")
    queues = values.get("multi-queue-num-queues")
    if queues is not None and parse_decimal(queues, "reading multi-queue-num-queues") != 1:
        raise _config_error(f"guest requested {int(queues)} queues, exceeding the maximum of 1")
    if _read_flag(values, "request-rx-copy") != 1:
        raise XenError(errno.EOPNOTSUPP, "frontend does not support rx-copy (request-rx-copy)")
    return FrontendRings(tx, rx, port, _read_flag(values, "feature-rx-notify") == 1,
                         _read_flag(values, "feature-sg") == 1,
                         _read_flag(values, FEATURE_XENLAB_PERSISTENT) == 1)


def _read_u32(values: Mapping[str, str | None], key: str) -> int:
    text = values.get(key)
    if text is None:
        raise XenError(errno.ENOENT, f"reading {key}: missing")
    return parse_decimal(text, f"reading {key}", maximum=U32_MAX)


def _read_flag(values: Mapping[str, str | None], key: str) -> int:
    """A feature flag, as xenbus_read_unsigned(..., 0) reads one: missing or
    empty is 0; anything but a number is the frontend's error."""
    text = values.get(key)
    if text is None or not text.strip(C_SPACE):
        return 0
    return parse_decimal(text, f"reading {key}", maximum=U32_MAX)



# ----------------------------------------------------------------------------
# The device
# ----------------------------------------------------------------------------
class Netback(XenbusDevice):
    otherend_kind = "frontend"

    def __init__(self, driver: "NetbackDriver", nodename: str):
        super().__init__(driver.kernel.xenbus, nodename, nodename)
        self.driver = driver
        self.kernel = driver.kernel
        self.config: BackendConfig | None = None
        self.vif: VifDevice | None = None
        self._conn: Connection | None = None
        self._link: PeerLink | None = None

    # -- the handshake --------------------------------------------------------------
    async def setup(self) -> None:
        keys = await self.read_keys(self.nodename, BACKEND_KEYS)
        try:
            self.config = parse_backend_dir(self.nodename, keys)
        except XenError as err:
            await self.dev_fatal(err.errno, err.message)
            return
        self.label = self.config.name
        await self._advertise()
        await self.run_actions(xs.backend_path(self.state, XenbusState.InitWait))
        await self.watch_otherend(self.config.frontend)

    async def _advertise(self) -> None:
        async def body(tx: int) -> None:
            for key, value in FEATURES.items():
                await self.xenbus.write(f"{self.nodename}/{key}", value, tx=tx)
        await self.xenbus.transaction(body)

    def on_otherend(self, other: XenbusState) -> list[xs.Action]:
        return xs.backend_on_frontend_changed(self.state, other, self._online())

    def _online(self) -> bool:
        return self.config is not None and self.config.online

    async def _otherend_changed(self) -> bool:
        # xenbus_dev_is_online(): the toolstack sets online=0 to detach.
        online = await self._read(f"{self.nodename}/online")
        if self.config is not None:
            self.config = _replace_online(self.config, (online or "").strip() == "1")
        return await super()._otherend_changed()

    def on_fatal(self) -> list[xs.Action]:
        return xs.backend_on_fatal(self.state)

    # -- connect ------------------------------------------------------------------------
    async def connect(self) -> None:
        """connect(): the frontend's ring details, the data path, hotplug."""
        rings = parse_frontend_keys(await self.read_keys(self.otherend, FRONTEND_KEYS))
        cfg = self.config
        vif = VifDevice(cfg.name, cfg.mac, cfg.mtu, cfg.frontend_id, cfg.devid)
        conn = await interface.connect_data(
            self.kernel, vif, rings.tx_ring_ref, rings.rx_ring_ref, rings.event_channel,
            persistent=rings.persistent,
            antispoof=AntiSpoof(cfg.mac, cfg.ips) if cfg.ips else None,
            limiter=CreditScheduler(cfg.rate, self.driver.clock) if cfg.rate else None,
            budget=self.driver.page_budget, clock=self.driver.clock,
            on_fatal=lambda message: self.fatal(f"fatal tx error: {message}"))
        try:
            await interface.hotplug_online(self.xenbus, self.driver.hotplug, vif, cfg.bridge,
                                           self.nodename)
        except BaseException:
            await interface.release(self.kernel, conn)
            raise
        self._conn = conn
        self.vif = vif
        conn.datapath.start()
        self.kernel.vifs.up(vif)
        self._link = PeerLink(self.xenbus, vif, self.nodename, self.otherend)
        await self._link.start()
        log.info("%s: connected to d%d (port %d, bridge %s)", vif.name, cfg.frontend_id,
                 conn.port, cfg.bridge)

    # -- disconnect -------------------------------------------------------------------------
    async def disconnect(self) -> None:
        """backend_disconnect: workers, hotplug, mappings, port, scratch."""
        link, self._link = self._link, None
        if link is not None:
            await link.stop()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        vif = conn.vif
        await conn.datapath.stop()
        await interface.hotplug_offline(self.driver.hotplug, vif)
        self.kernel.vifs.down(vif)
        await interface.release(self.kernel, conn)
        log.info("%s: disconnected", vif.name)

    async def unregister(self) -> None:
        """netback_remove: the device goes; hotplug-status with it."""
        await self.disconnect()
        try:
            await self.xenbus.rm(f"{self.nodename}/hotplug-status")
        except XenError as err:
            log.debug("%s: removing hotplug-status: %s", self.label, err.message)

    async def teardown(self) -> None:
        await self.disconnect()

    def shutdown_local(self) -> None:
        """The driver domain is going away: stop, without hypercalls."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.datapath.stop_local()
        interface.release_local(conn)


def _replace_online(cfg: BackendConfig, online: bool) -> BackendConfig:
    return cfg if cfg.online == online else replace(cfg, online=online)


class NetbackDriver(XenbusDeviceDriver):
    """netback: the backend of every vif whose backend directory is ours."""

    devicetype = "vif"
    side = "backend"

    def __init__(self, kernel, hotplug: Hotplug, clock: Callable[[], float] = time.monotonic):
        super().__init__(kernel)
        self.hotplug = hotplug
        self.clock = clock
        self.page_budget = PageBudget()

    def new_device(self, path: str) -> Netback:
        return Netback(self, path)
