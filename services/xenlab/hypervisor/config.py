"""The hypervisor's configuration, read once and passed down."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xenlab.rundir import default_rundir
from xenlab.hypervisor.admission import CallLimits
from xenlab.launchers.docker import DockerConfig
from xenlab.launchers.domains_dir import DomainUids
from xenlab.hypervisor.xenstore import XenStoreQuotas

DEFAULT_ADDRESS = "127.0.0.1:9770"


@dataclass(frozen=True)
class HypervisorConfig:
    address: str = DEFAULT_ADDRESS       # the one published in the rundir
    also_listen: tuple[str, ...] = ()    # addresses served as well (a published TCP port)
    rundir: Path = field(default_factory=default_rundir)
    shm_dir: Path = Path("/dev/shm")
    total_memory_mb: int = 8192          # the emulated host's RAM
    dom0_memory_mb: int = 256
    dom0_vcpus: int = 2
    launcher: str = "local"
    max_domains: int = 1024              # Domain-0 included; issue 22 runs 512 domUs
    evtchn_max_ports: int = 1024
    grant_frames: int = 64               # max_grant_frames of every domain, as Xen's default
    xenstore_quotas: XenStoreQuotas = field(default_factory=XenStoreQuotas)
    call_limits: CallLimits = field(default_factory=CallLimits)
    log_level: str = "INFO"
    docker: DockerConfig = field(default_factory=DockerConfig)   # the docker launcher's
    # The local launcher runs each domU under a uid of its own (None: as the
    # hypervisor's user, with no OS wall between domains).
    domain_uids: DomainUids | None = None
    # Where domains' endpoints live with domain uids (None: a fresh directory
    # in TMPDIR); the docker launcher mounts it into every domain.
    domains_dir: Path | None = None
    # Forked domains' memory offered to the kernel's samepage merging:
    # auto, on (and start ksmd) or off (xenlab.hypervisor.page_sharing).
    page_sharing: str = "auto"
