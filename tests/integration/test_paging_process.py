"""Paging modes with real domain processes: a domain created from an xl.cfg
with type= and hap= boots with its paging pool mapped read-only (as the
host's /proc/PID/maps shows it), keeps ballooning, and its pool goes back
to the host when it is destroyed."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from xenlab.proto import common_pb2
from xenlab.testing import eventually_blocking

pytestmark = pytest.mark.integration

MODES = [("hap", "type = 'hvm'\n"), ("shadow", "type = 'pvh'\nhap = 0\n")]


def mappings(pid: int, path: str) -> set[str]:
    """The permissions of every mapping of ``path`` in process ``pid``."""
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == path:
            out.add(fields[1])
    return out


def free_mb(hp) -> int:
    for line in hp.xl("info").stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "free_memory":
            return int(value)
    raise AssertionError("xl info has no free_memory")


@pytest.mark.parametrize("mode, keys", MODES)
def test_a_domain_boots_with_its_pool_read_only_and_gives_it_back(hypervisor_process, tmp_path,
                                                                 mode, keys):
    hp = hypervisor_process
    (tmp_path / "web.cfg").write_text(f"name = 'web'\nmemory = 16\nmaxmem = 32\n{keys}")
    free = free_mb(hp)
    hp.xl("create", str(tmp_path / "web.cfg"))
    entry = json.loads(hp.xl("list", "-l", "web").stdout)[0]
    # libxl's default pool for 1 vCPU and 32 MiB of maxmem, rounded up to MiB.
    assert entry["paging"] == {"mode": mode, "pool_kb": 2048}
    assert free_mb(hp) == free - 16 - 2

    async def domain():
        async with hp.dom0() as dom0:
            info = await dom0.domains.Info(common_pb2.DomainRef(name="web"))
            return info.domid, info.pid
    domid, pid = asyncio.run(domain())
    booted = f"/local/domain/{domid}/control/feature-poweroff"
    eventually_blocking(lambda: hp.cli("xenstore", "read", booted, check=False).stdout.strip()
                        == "1", what="web to boot")
    pool = next(Path("/dev/shm").glob(f"xenlab-{hp.proc.pid}-*d{domid}.paging"))
    # The host's view: the domain maps its pool, and only for reading.
    assert mappings(pid, str(pool)) == {"r--s"}
    hp.xl("mem-set", "web", "24m")
    eventually_blocking(lambda: hp.xl("list", "web").stdout.split("\n")[1].split()[2] == "24",
                        what="the balloon to follow")
    hp.xl("destroy", "web")
    assert not pool.exists()
    assert free_mb(hp) == free
