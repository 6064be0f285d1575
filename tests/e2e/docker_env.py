"""What the Docker end-to-end tests share: running a command from the
repository, finding free ports, and tools/ci-docker.sh (Docker running and
the image built from these sources)."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "xenlab:latest"


def run(*args: str, check: bool = True, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=check,
                          timeout=timeout, env=env)


def free_ports(count: int, kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> list[int]:
    """`count` consecutive ports free on ``host`` (the agent range must be
    one block); ``kind`` SOCK_DGRAM for UDP ports."""
    for base in range(21000 + os.getpid() % 4000, 65000 - count, count + 7):
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind((host, port))
            return list(range(base, base + count))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports")


def prepare_docker() -> None:
    """tools/ci-docker.sh: Docker running and the image built from these sources."""
    prep = run("bash", str(ROOT / "tools" / "ci-docker.sh"), check=False, timeout=900)
    if prep.returncode != 0:
        pytest.skip(f"Docker cannot be made to work here (tools/ci-docker.sh):\n{prep.stderr[-2000:]}")
    print(prep.stderr.strip())
