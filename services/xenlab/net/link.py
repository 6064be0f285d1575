"""A device's link state, as Linux keeps it and iproute2 shows it.

Two bits make it: the administrative state (IFF_UP, what ``ip link set DEV
up|down`` changes) and the carrier (IFF_LOWER_UP: the other side of the link
is there, netif_carrier_on/off). The operational state (``state UP``) is up
only with both, as RFC 2863's operstate that Linux derives from them
(net/core/link_watch.c: rfc2863_policy; a device that is down is DOWN, one
that is up without carrier is DOWN too, with NO-CARRIER among its flags).

Pure: no I/O. ``LinkChange`` is what the devices hand their watchers.
"""
from __future__ import annotations

from dataclasses import dataclass

UP, DOWN = "up", "down"

# Why a frame was refused because of the link, one reason per side of a device
# (lab/conservation.py books them): sent while the device was down (Linux's
# SKB_DROP_REASON_DEV_READY), sent while it had no carrier (a stopped queue
# that overflows at once: nothing here waits for a carrier), and their
# receive-side twins.
DROP_DEV_DOWN = "dev_down"
DROP_NO_CARRIER = "no_carrier"
DROP_RX_DEV_DOWN = "rx_dev_down"
DROP_RX_NO_CARRIER = "rx_no_carrier"
TX_DROPS = frozenset({DROP_DEV_DOWN, DROP_NO_CARRIER})
RX_DROPS = frozenset({DROP_RX_DEV_DOWN, DROP_RX_NO_CARRIER})


def parse_updown(word: str) -> bool:
    """``up`` or ``down``, as ip-link(8) takes them."""
    if word == UP:
        return True
    if word == DOWN:
        return False
    raise ValueError(f"expected \"up\" or \"down\", not {word!r}")


@dataclass(frozen=True)
class LinkState:
    admin_up: bool = True
    carrier: bool = True

    @property
    def oper_up(self) -> bool:
        return self.admin_up and self.carrier

    @property
    def operstate(self) -> str:
        """What ``ip link`` prints after ``state``."""
        return "UP" if self.oper_up else "DOWN"

    def flags(self) -> list[str]:
        """The flags between ``<>``, in iproute2's order (print_link_flags:
        NO-CARRIER first, for a device that is up without carrier, then the
        IFF_* bits by value; LOWER_UP only with carrier, as the kernel
        reports IFF_LOWER_UP from netif_oper_up on an up device)."""
        out = ["NO-CARRIER"] if self.admin_up and not self.carrier else []
        out += ["BROADCAST", "MULTICAST"]
        if self.admin_up:
            out.append("UP")
            if self.carrier:
                out.append("LOWER_UP")
        return out


@dataclass(frozen=True)
class LinkInfo:
    """One device as ``ip link show`` prints it."""

    ifindex: int
    name: str
    mtu: int
    state: LinkState
    mac: str = ""
    master: str = ""


def format_link(link: LinkInfo) -> str:
    """iproute2's two lines for a device (print_linkinfo), without the
    qdisc, which belongs to tc."""
    head = f"{link.ifindex}: {link.name}: <{','.join(link.state.flags())}> mtu {link.mtu}"
    if link.master:
        head += f" master {link.master}"
    head += f" state {link.state.operstate} mode DEFAULT group default"
    lines = [head]
    if link.mac:
        lines.append(f"    link/ether {link.mac} brd ff:ff:ff:ff:ff:ff")
    return "\n".join(lines)
