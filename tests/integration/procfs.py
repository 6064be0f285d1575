"""What /proc says about a running service, read so that a thread or a
descriptor that goes away between the listing and the read is left out
rather than failing the test (grpc-core's pool winds down on its own
schedule; a domain closes sockets while it runs)."""
from __future__ import annotations

import os
from pathlib import Path


def fd_targets(pid: int) -> set[str]:
    """What each of the process's open descriptors refers to."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
    return out


def thread_files(pid: int, name: str) -> list[str]:
    """The file ``name`` (``comm``, ``status``) of each of the process's threads."""
    texts = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            texts.append(Path(f"/proc/{pid}/task/{tid}/{name}").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return texts
