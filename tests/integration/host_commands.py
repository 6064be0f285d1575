"""Running the host's own tools (ip, ping, arping, tshark) from an async
test without blocking the loop the services under test run on."""
from __future__ import annotations

import asyncio
import shutil

import pytest


async def run(*argv: str, timeout: float = 30.0) -> tuple[int, str]:
    """Run a command; (exit status, stdout and stderr together)."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(errors="replace")


async def must(*argv: str) -> str:
    """Run a command that must succeed; its output."""
    status, out = await run(*argv)
    assert status == 0, f"{' '.join(argv)} failed ({status}): {out}"
    return out


def skip(reason: str):
    print(f"skipped: {reason}")
    pytest.skip(reason)


def need_tool(name: str) -> None:
    if shutil.which(name) is None:
        skip(f"{name} is not installed (apt package {'iputils-ping' if name == 'ping' else name})")
