"""The one error the packet codecs raise.

A codec that refuses bytes names why with ``reason``, which is the drop
counter the stack bumps, so no caller maps messages back to reasons.
"""
from __future__ import annotations


class PacketError(ValueError):
    """Bytes that do not decode as the protocol says; ``reason`` is a counter name."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(f"{reason}: {message}")
