"""Anti-spoofing, done in the backend: what the iptables rules of Xen's
vif-bridge (vif-common.sh, for a vif with an ``ip`` key) let out of a guest,
as a pure check of one frame."""
from __future__ import annotations

import ipaddress
from typing import Sequence

from xenlab.net.ethernet import ETH_P_ARP, ETH_P_IP

_DHCP_CLIENT, _DHCP_SERVER = 68, 67
_IPPROTO_UDP = 17


class AntiSpoof:
    """Frames from the guest must carry its MAC and, for IPv4 and ARP, one
    of its addresses; DHCP requests from 0.0.0.0 pass, as vif-common.sh's
    iptables rules let them."""

    def __init__(self, mac: bytes, ips: Sequence[ipaddress.IPv4Address]):
        self.mac = bytes(mac)
        self.ips = frozenset(ip.packed for ip in ips)

    def check(self, frame: bytes) -> str | None:
        """None if the frame may pass, else the drop reason."""
        if frame[6:12] != self.mac:
            return "spoofed_mac"
        ethertype = int.from_bytes(frame[12:14], "big")
        if ethertype == ETH_P_IP:
            return self._check_ipv4(frame)
        if ethertype == ETH_P_ARP:
            # The sender protocol address of an Ethernet/IPv4 ARP packet.
            return None if frame[28:32] in self.ips else "spoofed_ip"
        return None

    def _check_ipv4(self, frame: bytes) -> str | None:
        src = frame[26:30]
        if src in self.ips:
            return None
        if src == bytes(4) and self._is_dhcp_request(frame):
            return None
        return "spoofed_ip"

    @staticmethod
    def _is_dhcp_request(frame: bytes) -> bool:
        if len(frame) < 14 + 20 + 8 or frame[14 + 9] != _IPPROTO_UDP:
            return False
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        if len(frame) < udp + 4:
            return False
        sport = int.from_bytes(frame[udp:udp + 2], "big")
        dport = int.from_bytes(frame[udp + 2:udp + 4], "big")
        return (sport, dport) == (_DHCP_CLIENT, _DHCP_SERVER)

