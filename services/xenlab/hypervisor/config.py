"""The hypervisor's configuration, read once and passed down."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from xenlab.hypervisor.admission import CallLimits
from xenlab.hypervisor.docker_launcher import DockerConfig
from xenlab.hypervisor.xenstore import XenStoreQuotas

DEFAULT_ADDRESS = "127.0.0.1:9770"


def default_rundir(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("XENLAB_RUNDIR"):
        return Path(env["XENLAB_RUNDIR"])
    return Path(f"/tmp/xenlab-{os.getuid()}")


@dataclass(frozen=True)
class HypervisorConfig:
    address: str = DEFAULT_ADDRESS
    rundir: Path = field(default_factory=default_rundir)
    shm_dir: Path = Path("/dev/shm")
    total_memory_mb: int = 8192          # the emulated host's RAM
    dom0_memory_mb: int = 256
    dom0_vcpus: int = 2
    launcher: str = "local"
    max_domains: int = 256
    evtchn_max_ports: int = 1024
    grant_frames: int = 32
    xenstore_quotas: XenStoreQuotas = field(default_factory=XenStoreQuotas)
    call_limits: CallLimits = field(default_factory=CallLimits)
    log_level: str = "INFO"
    docker: DockerConfig = field(default_factory=DockerConfig)   # the docker launcher's
