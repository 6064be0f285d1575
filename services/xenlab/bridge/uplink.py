"""The bridge's uplink ports: a real Linux TAP device (``tap:NAME``), or a
VXLAN tunnel to other hosts' bridges (``vxlan:vni=N,remote=HOST[:PORT]``).

A TAP is a kernel network interface whose cable is a file descriptor: what
the host's stack sends out of the interface is read from the fd, and what is
written to the fd arrives on the interface as if from the wire. As a bridge
port it plays the part of the physical NIC a Xen host enslaves to xenbr0: the
host's own tools (ping, arping, tcpdump) see every domain as a host of its own
on the LAN.

The device is opened with IFF_TAP | IFF_NO_PI (bare Ethernet frames, no
packet-information header), as linux/if_tun.h defines them. A name that does
not exist yet is created *non-persistent*: it disappears when the fd closes,
so when the service stops or dies. An existing persistent TAP (``ip tuntap
add dev NAME mode tap user UID``) is attached instead and outlives the
service; its owner needs no CAP_NET_ADMIN to attach, while creating one does.

The interface is brought up with the SIOCSIFFLAGS ioctl, so the service does
not depend on iproute2. Its MTU is read once, at open.

A VXLAN uplink (RFC 7348; xenlab.net.vxlan holds the header and the VTEP
table) is a UDP socket: a frame the bridge sends out of the port goes to the
VTEP its destination MAC was learned from, or to every remote of the flood
list; a datagram that comes in is learned against its sender and handed to
the bridge. Its peers are other xenlab bridges and Linux's own vxlan devices
alike. The socket sets IP_PMTUDISC_DO, so the host never fragments a
datagram: a frame over the port's MTU (the underlay's less 50 bytes) is
dropped and counted (``oversize``), as one the underlay refuses is
(``underlay_msgsize``).
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
import struct
import time
from typing import Callable

from xenlab.bridge.core import check_port_name
from xenlab.net import vxlan
from xenlab.net.device import NetDevice
from xenlab.xen.abi import ETH_HLEN
from xenlab.xen.errors import XenError
from xenlab.xen.names import check_bridge_name

log = logging.getLogger(__name__)

TUN_DEVICE = "/dev/net/tun"
# linux/if_tun.h
TUNSETIFF = 0x400454CA          # _IOW('T', 202, int)
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
# linux/sockios.h and linux/if.h
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
IFF_UP = 0x1
# linux/in.h: path MTU discovery on, never fragment
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
# struct ifreq: the name, then a 24-byte union (flags: short, mtu: int).
IFREQ_FLAGS = struct.Struct("16sH22x")
IFREQ_MTU = struct.Struct("16si20x")

READ_SIZE = 0x10000 + ETH_HLEN  # a frame of the largest MTU a TAP takes, whole
RX_BATCH = 64                   # frames read per wakeup, delivered as one batch


class UplinkError(OSError):
    """The TAP could not be opened; the message says what the host lacks."""

    def __init__(self, err: int, message: str):
        super().__init__(err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


UPLINK_FORMS = "tap:NAME or vxlan:vni=N,remote=HOST[:PORT][,remote=...][,local=ADDR[:PORT]][,mtu=N]"


def parse_uplink(text: str) -> tuple[str, str]:
    """``BRIDGE=tap:NAME`` or ``BRIDGE=vxlan:...`` (the lab runner's form)
    -> (bridge, uplink spec as ``check_uplink_spec`` gives it back)."""
    bridge, sep, spec = text.partition("=")
    if not sep or not bridge or ":" not in spec:
        raise ValueError(f"bad uplink {text!r}: expected BRIDGE=tap:NAME or BRIDGE=vxlan:..., "
                         "e.g. xenbr0=tap:xltap0 or xenbr0=vxlan:vni=42,remote=192.0.2.2")
    try:
        check_bridge_name(bridge)
        return bridge, check_uplink_spec(spec)
    except XenError as err:
        raise ValueError(f"bad uplink {text!r}: {err.message}") from None
    except ValueError as err:
        raise ValueError(f"bad uplink {text!r}: {err}") from None


def check_uplink_spec(spec: str) -> str:
    """``tap:NAME`` or ``vxlan:...`` checked; a bare NAME is a TAP's.
    Returns the spec in its full form (``tap:NAME``, or the vxlan
    options as parse_config reads them). ValueError or XenError if bad."""
    kind, colon, rest = spec.partition(":")
    if not colon:
        kind, rest = "tap", spec
    if kind == "tap":
        if not rest:
            raise ValueError(f"expected {UPLINK_FORMS}")
        check_port_name(rest)
        return f"tap:{rest}"
    if kind == "vxlan":
        config = vxlan.parse_config(rest)
        check_port_name(config.port_name)
        return config.text()
    raise ValueError(f"unknown uplink kind {kind!r}: expected {UPLINK_FORMS}")


def uplink_port_name(spec: str) -> str:
    """The bridge port an uplink spec (checked) makes: the TAP's name, or
    ``vxlanVNI`` (or the vxlan ``name=``)."""
    kind, _, rest = spec.partition(":")
    return vxlan.parse_config(rest).port_name if kind == "vxlan" else rest


def open_uplink(spec: str) -> NetDevice:
    """The device of a checked uplink spec. Raises UplinkError."""
    kind, _, rest = spec.partition(":")
    if kind == "vxlan":
        return VxlanDevice.open(vxlan.parse_config(rest))
    return TapDevice.open(rest)


class TapDevice(NetDevice):
    """A bridge port whose link is a TAP fd. ``open`` creates or attaches
    the device; the constructor takes any fd that moves one frame per
    read/write (tests use a SOCK_SEQPACKET socketpair)."""

    def __init__(self, name: str, fd: int, mtu: int = 1500):
        super().__init__(name, mtu=mtu)
        self.fd = fd
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._on_readable)

    @classmethod
    def open(cls, name: str) -> "TapDevice":
        """Create (or attach to) TAP `name`, bring it up. Raises UplinkError."""
        fd = _open_tap(name)
        try:
            name = _attach(fd, name)
            mtu = _bring_up(name)
            return cls(name, fd, mtu)
        except BaseException:
            os.close(fd)
            raise

    @property
    def state(self) -> str:
        return "down" if self._closed else "up"

    def transmit(self, frames: list[bytes]) -> None:
        if self._closed:
            self.drop("link_down", len(frames))
            return
        limit = self.mtu + ETH_HLEN
        for i, frame in enumerate(frames):
            if len(frame) > limit:
                self.drop("oversize")
                continue
            try:
                os.write(self.fd, frame)
            except BlockingIOError:
                # The TAP's queue is full; the bridge never waits for it.
                self.drop("tx_queue_full", len(frames) - i)
                return
            except OSError as err:
                if self._write_failed(err, frames[i:]):
                    return
                continue
            self.count_tx((frame,))

    def _write_failed(self, err: OSError, rest: list[bytes]) -> bool:
        """Count a failed write; True when the rest of the batch is dropped too."""
        if err.errno == errno.EIO:
            # tun_get_user refuses frames while the interface is down.
            self.drop("link_down")
            return False
        if err.errno == errno.EBADFD:
            self._fail("the tap device was removed")
            self.drop("link_down", len(rest))
            return True
        log.debug("%s: write failed: %s", self.name, err)
        self.drop("write_error")
        return False

    def _on_readable(self) -> None:
        frames: list[bytes] = []
        failure = None
        for _ in range(RX_BATCH):
            try:
                frame = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as err:
                # EBADFD: the interface was deleted under us (ip link del).
                failure = f"read failed: {err}"
                break
            if not frame:
                # A TAP never reads empty; any other fd has reached its end.
                failure = "end of file"
                break
            frames.append(frame)
        self.deliver(frames)
        if failure is not None:
            self._fail(failure)

    def _fail(self, why: str) -> None:
        if not self._closed:
            log.warning("%s: uplink down: %s", self.name, why)
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.fd)
        os.close(self.fd)


class VxlanDevice(NetDevice):
    """A bridge port whose link is a VXLAN tunnel: a UDP socket to the
    VTEPs of ``config`` (xenlab.net.vxlan). ``open`` binds the socket; the
    constructor takes a bound non-blocking UDP socket (tests bind their own)."""

    def __init__(self, config: vxlan.VxlanConfig, sock: socket.socket,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(config.port_name, mtu=config.mtu)
        self.config = config
        self.sock = sock
        self.vtep = vxlan.VtepTable(config.remotes, clock, learning=config.learning)
        self._remotes = frozenset(config.remotes)
        self._ports = {address: port for address, port in reversed(config.remotes)}
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    def open(cls, config: vxlan.VxlanConfig) -> "VxlanDevice":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # Never fragment on the underlay: too big is refused (EMSGSIZE), counted.
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            try:
                sock.bind(config.local)
            except OSError as err:
                hint = {errno.EADDRINUSE: "another process (a Linux vxlan device, or another "
                                          "bridge) has that UDP port",
                        errno.EADDRNOTAVAIL: "no interface of this host has that address"}
                raise UplinkError(err.errno, f"uplink vxlan{config.vni} cannot bind UDP "
                                             f"{config.local[0]}:{config.local[1]}: "
                                             f"{hint.get(err.errno, err.strerror)}") from None
            return cls(config, sock)
        except BaseException:
            sock.close()
            raise

    @property
    def state(self) -> str:
        return "down" if self._closed else "up"

    @property
    def address(self) -> vxlan.Remote:
        return self.sock.getsockname()

    def transmit(self, frames: list[bytes]) -> None:
        if self._closed:
            self.drop("link_down", len(frames))
            return
        limit = self.mtu + ETH_HLEN
        vni = self.config.vni
        sent = []
        for frame in frames:
            if len(frame) > limit:
                self.drop("oversize")
                continue
            datagram = vxlan.encap(vni, frame)
            delivered = False
            for remote in self.vtep.destinations(frame[:6]):
                try:
                    self.sock.sendto(datagram, remote)
                    delivered = True
                except BlockingIOError:
                    self.drop("tx_queue_full")
                except OSError as err:
                    self.drop("underlay_msgsize" if err.errno == errno.EMSGSIZE
                              else "underlay_unreachable")
                    log.debug("%s: to %s:%d: %s", self.name, *remote, err)
            if delivered:
                sent.append(frame)
        self.count_tx(sent)

    def _on_readable(self) -> None:
        frames: list[bytes] = []
        vni = self.config.vni
        for _ in range(RX_BATCH):
            try:
                datagram, sender = self.sock.recvfrom(READ_SIZE)
            except BlockingIOError:
                break
            except OSError as err:
                # An ICMP error for an earlier send (a remote with nothing
                # listening): the socket carries on.
                log.debug("%s: %s", self.name, err)
                self.drop("underlay_unreachable")
                continue
            try:
                got, frame = vxlan.decap(datagram)
            except vxlan.VxlanError as err:
                self.drop(err.reason)
                continue
            if got != vni:
                self.drop("vxlan_other_vni")
                continue
            self.vtep.learn(frame[6:12], self._vtep_of(sender))
            frames.append(frame)
        self.deliver(frames)

    def _vtep_of(self, sender: vxlan.Remote) -> vxlan.Remote:
        """Where frames for a MAC learned from ``sender`` go. A remote of
        the flood list that sent from its own port (a xenlab bridge sends
        from the port it listens on) is that remote. Otherwise the sender's
        port is no VTEP's: Linux picks a source port per flow (a hash of the
        inner headers, for ECMP) and listens on its dstport only; so, as
        Linux's vxlan learns the address alone, the port of the flood list's
        remote at that address, else the port we listen on."""
        if sender in self._remotes:
            return sender
        port = self._ports.get(sender[0])
        return sender[0], port if port is not None else self.sock.getsockname()[1]

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out.update({f"vtep_{name}": n for name, n in self.vtep.counters.items()})
        out["vtep_entries"] = len(self.vtep.entries)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


# -- the syscalls -----------------------------------------------------------------------
def _open_tap(name: str) -> int:
    try:
        return os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise UplinkError(err.errno, f"uplink tap:{name} needs {TUN_DEVICE} (load the tun module; "
                                     f"in a container, pass the device in): {err}") from None
    except PermissionError as err:
        raise _needs_capability(name, err) from None


def _attach(fd: int, name: str) -> str:
    request = IFREQ_FLAGS.pack(name.encode(), IFF_TAP | IFF_NO_PI)
    try:
        reply = fcntl.ioctl(fd, TUNSETIFF, request)
    except PermissionError as err:
        raise _needs_capability(name, err) from None
    except OSError as err:
        hint = {errno.EBUSY: "another process holds it",
                errno.EINVAL: "a device of that name exists and is not a tap"}.get(err.errno, "")
        raise UplinkError(err.errno, f"cannot open uplink tap:{name}"
                                     f"{': ' + hint if hint else ''}: {err}") from None
    # The kernel writes back the device's name (it expands a %d pattern).
    return IFREQ_FLAGS.unpack(reply)[0].rstrip(b"\0").decode()


def _bring_up(name: str) -> int:
    """Set IFF_UP unless already set; return the interface's MTU."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
        mtu = IFREQ_MTU.unpack(fcntl.ioctl(ctl, SIOCGIFMTU, IFREQ_MTU.pack(name.encode(), 0)))[1]
        flags = IFREQ_FLAGS.unpack(fcntl.ioctl(ctl, SIOCGIFFLAGS, IFREQ_FLAGS.pack(name.encode(), 0)))[1]
        if flags & IFF_UP:
            return mtu
        try:
            fcntl.ioctl(ctl, SIOCSIFFLAGS, IFREQ_FLAGS.pack(name.encode(), flags | IFF_UP))
        except PermissionError as err:
            # The owner of a persistent TAP may attach but not configure it.
            log.warning("uplink tap:%s is down and cannot be brought up (%s): "
                        "run `ip link set %s up` as root", name, err, name)
    return mtu


def _needs_capability(name: str, err: OSError) -> UplinkError:
    return UplinkError(errno.EPERM, f"uplink tap:{name} needs CAP_NET_ADMIN "
                                    f"(run as root or grant the capability): {err}")
