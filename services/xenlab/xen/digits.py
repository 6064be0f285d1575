"""Decimal numbers as Xen's C code reads them: ASCII digits only.

Python's own tests take far more than C's isdigit() in the C locale does:
``'²'.isdigit()`` is True but ``int('²')`` raises; ``int('٣')`` is 3,
``int('1_0')`` is 10 and ``int(' +7 ')`` is 7. Every number xenlab takes
from xenstore, a domain reference, a file name or a command line is read
here instead, so that a guest's '²' is refused with EINVAL (not a
ValueError deep inside a device task) and '٣' never becomes domain 3.
"""
from __future__ import annotations

import errno

from xenlab.xen.errors import XenError

U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF
# C's isspace() in the C locale: what strtoul() and xenbus_scanf("%u") skip.
# str.strip() with no argument would also take U+2003, U+0085...
C_SPACE = " \t\n\v\f\r"


def is_decimal(text: str) -> bool:
    """One or more of 0-9 and nothing else (libxl's all-isdigit() test)."""
    return text.isascii() and text.isdigit()


def parse_decimal(text: str, what: str, maximum: int = U64_MAX, minimum: int = 0) -> int:
    """``text`` (C whitespace around it allowed) as an int in minimum..maximum;
    anything else is XenError(EINVAL) saying which value, as ``what``."""
    digits = text.strip(C_SPACE)
    # A value of thousands of digits is refused before int() sees it (which
    # itself refuses past sys.get_int_max_str_digits() with a ValueError).
    if (not is_decimal(digits) or len(digits.lstrip("0")) > len(str(maximum))
            or not minimum <= int(digits) <= maximum):
        raise XenError(errno.EINVAL, f"{what}: {quoted(text)} is not a number "
                                     f"({minimum}..{maximum})")
    return int(digits)


def decimal_or(text: str | None, default: int) -> int:
    """For display only: the number, or ``default`` when it is missing or not one."""
    if text is None:
        return default
    try:
        return parse_decimal(text, "value")
    except XenError:
        return default


def quoted(text: str, limit: int = 40) -> str:
    """repr() of a value, cut short: a guest's value may be kilobytes long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"
