"""The names a lab gives its domains and devices, each rule stated once: domain
names (xl's, kept to a safe alphabet), Linux's
interface names, bridge names (which are also xenstore path components),
the default bridge and Xen's MAC prefix.
"""
from __future__ import annotations

import errno
import re

from xenlab.xen.digits import is_decimal
from xenlab.xen.errors import DomainError, XenError

IFNAMSIZ = 16                   # linux/if.h: a name holds IFNAMSIZ-1 characters and its NUL
DEFAULT_BRIDGE = "xenbr0"       # xl-network-configuration(5): bridge= when none is given
XEN_OUI = b"\x00\x16\x3e"       # Xensource's OUI, as libxl__device_nic_setdefault uses it
VIF_MAC = "fe:ff:ff:ff:ff:ff"   # every vif's own address in the driver domain (xen-netback's dummy)
NAME_MAX = 64                   # a domain's name, in characters

# linux/net/core/dev.c dev_valid_name: 1..IFNAMSIZ-1 characters, no '/', ':'
# or whitespace, and neither "." nor "..".
_IFNAME = re.compile(rf"[^/:\s]{{1,{IFNAMSIZ - 1}}}")
# A bridge's name is also a path component of the bridge registry in xenstore
# (/tool/xenlab/bridges/NAME): an interface name of a plainer alphabet.
_BRIDGE_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{IFNAMSIZ - 1}}}")

IFNAME_RULE = f"1-{IFNAMSIZ - 1} characters, no '/', ':' or spaces"
BRIDGE_NAME_RULE = f"1-{IFNAMSIZ - 1} of A-Z a-z 0-9 _ -"


def is_ifname(name: str) -> bool:
    """Whether Linux would take ``name`` for a network interface."""
    return bool(_IFNAME.fullmatch(name or "")) and name not in (".", "..")


def is_bridge_name(name: str) -> bool:
    return bool(_BRIDGE_NAME.fullmatch(name or ""))


def check_bridge_name(name: str) -> str:
    if not is_bridge_name(name):
        raise XenError(errno.EINVAL, f"bad bridge name {name!r}: {BRIDGE_NAME_RULE}")
    return name


def check_domain_name(name: str) -> None:
    """libxl takes any name that is unique; xenlab keeps to letters and digits
    (any script's: 'é', '²' and '٣' are names) and - _ . :, so that a name is
    safe in file names, logs and MQTT topics. All ASCII digits would read as
    a domain id (libxl_domain_qualifier_to_domid tests C's isdigit())."""
    if not name:
        raise DomainError(errno.EINVAL, "a domain needs a name")
    if len(name) > NAME_MAX:
        raise DomainError(errno.EINVAL, f"domain name {name[:20]!r}... is longer than {NAME_MAX}")
    if is_decimal(name):
        raise DomainError(errno.EINVAL, f"domain name {name!r} cannot be all digits (it would read as an id)")
    bad = sorted({c for c in name if not (c.isalnum() or c in "-_.:")})
    if bad:
        raise DomainError(errno.EINVAL, f"domain name {name!r} has characters {''.join(bad)!r}; use letters, digits, - _ . :")
