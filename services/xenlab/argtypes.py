"""argparse types for the commands' numbers: a value out of range is refused
with a clear message before anything runs (exit status 2), never turned
into a default or passed on to fail in the middle of a run.

The agent's gRPC API reads 0 as "the default" in most of its fields
(agent.proto), so a command whose flag maps to one of them starts its
range at 1.
"""
from __future__ import annotations

import argparse
import ipaddress
import math


def whole(low: int, high: int | None = None):
    """An int in low..high (no upper bound if high is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            span = f"{low:,}..{high:,}" if high is not None else f"at least {low:,}"
            raise argparse.ArgumentTypeError(f"{value:,} is out of range ({span})")
        return value
    return parse


def seconds(low: float, high: float = math.inf, *, above: bool = False, unit: str = "s"):
    """A finite length of time in low..high (above=True: more than low), in ``unit``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        fits = (value > low if above else value >= low) and value <= high
        if not fits or not math.isfinite(value):
            floor = f"above {low:g}" if above else f"at least {low:g}"
            span = floor if high == math.inf else f"{floor} and at most {high:g}"
            raise argparse.ArgumentTypeError(f"{text} {unit} is out of range ({span} {unit})")
        return value
    return parse


def rate(text: str) -> float:
    """A finite rate above 0 (per second)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text}: a rate is a finite number above 0")
    return value


def ipv4(text: str) -> str:
    """A dotted-quad IPv4 address (what the guest stacks speak)."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address (like 10.0.0.2)") from None
