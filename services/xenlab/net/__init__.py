"""The guest network stack a domU runs on netfront: Ethernet, ARP, IPv4, ICMP, UDP.

Sans-I/O: ``IpStack`` takes frames and time and returns frames and events.
``ethernet`` is general enough for the bridge's FDB as well.
"""
from xenlab.net.errors import PacketError
from xenlab.net.ethernet import BROADCAST, EthernetFrame, format_mac, parse_mac
from xenlab.net.stack import (DROP_REASONS, RX_DROP_REASONS, TX_DROP_REASONS, AddressConflict,
                              ArpFailed, ArpResolved, EchoReply, IcmpError, IpStack, StackConfig,
                              UdpDatagram, UdpSocket)

__all__ = [
    "BROADCAST", "DROP_REASONS", "RX_DROP_REASONS", "TX_DROP_REASONS", "AddressConflict",
    "ArpFailed", "ArpResolved", "EchoReply", "EthernetFrame", "IcmpError", "IpStack",
    "PacketError", "StackConfig", "UdpDatagram", "UdpSocket", "format_mac", "parse_mac",
]
