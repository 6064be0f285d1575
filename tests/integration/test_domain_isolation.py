"""The process boundary, as a domU's own process sees it (issue: "A domU
process can read dom0.secret, open any domain's memory segment by path, read
pages nobody granted it, keep access after revocation, and call another
guest's agent").

With the lab run as root, the local launcher runs domain D as uid BASE+D:
each test here looks at a running domU from the host's side (/proc) or runs
a probe under that domU's uid and groups, and checks what the OS lets it do.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from procfs import fd_targets
from xenlab.launchers.domains_dir import DomainUids
from xenlab.proto import common_pb2, xenstore_pb2

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="per-domain uids need root")]

LAB = """
[lab]
name = "walls"

[[domain]]
name = "web"
memory = 16
vif = ["mac=00:16:3e:00:00:01,ip=10.0.0.1/24"]

[[domain]]
name = "db"
memory = 16
vif = ["mac=00:16:3e:00:00:02,ip=10.0.0.2/24"]
"""

BASE = DomainUids.DEFAULT_BASE


@pytest.fixture
async def walls(lab_factory):
    return await lab_factory(LAB)


async def domain_pid(lab, name: str) -> int:
    info = await lab.hv.domains.Info(common_pb2.DomainRef(name=name))
    return info.pid


async def domains_dir(lab, domid: int) -> Path:
    """Where the toolstack says d``domid``'s agent is: DOMAINS_DIR/dD/agent.sock."""
    reply = await lab.hv.xenstore.Read(xenstore_pb2.PathRequest(path=f"/libxl/{domid}/agent/address"))
    return Path(reply.value.decode().removeprefix("unix:")).parent.parent


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.split()
    return out


def as_domain(domid: int, script: str) -> subprocess.CompletedProcess:
    """Run a shell script with exactly the ids and groups the launcher gives d``domid``."""
    uid = BASE + domid
    return subprocess.run(["/bin/sh", "-c", script], user=uid, group=uid, extra_groups=[BASE],
                          capture_output=True, text=True, timeout=30, cwd="/")


async def test_each_domu_runs_as_a_uid_of_its_own_with_no_way_back_to_root(walls):
    for name in ("web", "db"):
        domid = walls.domid(name)
        st = status(await domain_pid(walls, name))
        uid = str(BASE + domid)
        assert st["Uid"] == [uid] * 4 and st["Gid"] == [uid] * 4, st
        assert st["Groups"] == [str(BASE)]
        assert st["CapEff"] == st["CapPrm"] == ["0000000000000000"]
        assert st["NoNewPrivs"] == ["1"]


async def test_a_domu_holds_no_descriptor_or_mapping_of_another_domains_memory(walls):
    """Its own memory arrives as a descriptor it maps and closes: it holds
    the mapping only (so it can neither resize the segment under the
    hypervisor nor pass it on), and no other segment at all."""
    for name in ("web", "db"):
        pid = await domain_pid(walls, name)
        fds = fd_targets(pid)
        assert not [t for t in fds if t.startswith("/dev/shm/")], fds
        assert not [t for t in fds if t.startswith(str(walls.rundir)) and not t.endswith(".console")], fds
        maps = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                if "/dev/shm/" in line}
        assert len(maps) == 1 and maps.pop().endswith(f"-d{walls.domid(name)}"), maps


async def test_a_domu_cannot_read_dom0_secret_or_any_segment_or_another_domains_dir(walls):
    web, db = walls.domid("web"), walls.domid("db")
    domains = await domains_dir(walls, web)
    hv_pid = walls.lab.service("hypervisor").proc.pid
    segments = sorted(Path("/dev/shm").glob(f"xenlab-{hv_pid}-*"))
    assert len(segments) == 3, segments             # Domain-0, web, db
    probe = as_domain(web, f"""
        cat {walls.rundir}/dom0.secret && echo READ-SECRET
        ls {walls.rundir} && echo LISTED-RUNDIR
        for seg in {' '.join(map(str, segments))}; do cat $seg > /dev/null && echo READ-$seg; done
        ls {domains}/d{db} && echo ENTERED-DB
        kill -0 {await domain_pid(walls, "db")} && echo SIGNALLED-DB
        head -c 1 /proc/{await domain_pid(walls, "db")}/mem && echo READ-DB-MEM
        ls {domains}/d{web} > /dev/null && echo OWN-DIR-OK
        test -S {domains}/hv.sock && echo HV-SOCKET-VISIBLE
        true
    """)
    assert probe.stdout.split() == ["OWN-DIR-OK", "HV-SOCKET-VISIBLE"], (probe.stdout, probe.stderr)
    assert "Permission denied" in probe.stderr


async def test_another_local_user_cannot_enter_the_domains_directory(walls):
    """Only the domains' group may pass through it to the hypervisor's socket."""
    domains = await domains_dir(walls, walls.domid("web"))
    probe = subprocess.run(["/bin/sh", "-c", f"ls {domains}/ || echo REFUSED"], user=65534,
                           group=65534, extra_groups=[], capture_output=True, text=True, timeout=30)
    assert "REFUSED" in probe.stdout and "Permission denied" in probe.stderr
    mode = domains.stat()
    assert (mode.st_mode & 0o777, mode.st_gid) == (0o710, BASE)


async def test_the_domains_directory_goes_with_the_lab(lab_factory):
    lab = await lab_factory(LAB)
    domains = await domains_dir(lab, lab.domid("web"))
    await lab.hv.domains.Destroy(common_pb2.DomainRef(domid=lab.domid("web")))
    assert not (domains / f"d{lab.domid('web')}").exists()
    await lab.lab.down()
    assert not domains.exists()
