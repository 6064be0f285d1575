"""The guest kernel's command line, from xl.cfg's keys.

xl builds it from ``cmdline=``, else ``root=`` and ``extra=`` (xl_parse.c:
``root=ROOT EXTRA``; cmdline= wins over both), and libxl writes it to
/vm/<uuid>/image/cmdline for a PV guest. xenlab keeps those keys among the
config's unread ones (XlConfig.extra, DomainSpec.extra), so both the
toolstack and a lab file's checks compose it here.
"""
from __future__ import annotations

from collections.abc import Mapping


def kernel_cmdline(keys: Mapping[str, str]) -> str:
    """The command line for a config whose unread keys are ``keys``."""
    if keys.get("cmdline"):
        return keys["cmdline"]
    root, extra = keys.get("root", ""), keys.get("extra", "")
    if root:
        return f"root={root} {extra}".rstrip()
    return extra
