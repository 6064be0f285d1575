"""The docker launcher against a fake Docker client: what it asks the daemon
for, how the start_info reaches the container, and how a container's life
maps to the domain's (exit, crash, destroy, pause). tests/e2e runs it
against a real daemon."""
from __future__ import annotations

import errno
import asyncio
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest
from docker.errors import APIError, NotFound

from xenlab.client import HypervisorClient
from xenlab.hypervisor.config import HypervisorConfig
from xenlab.hypervisor.server import HypervisorServer
from xenlab.toolstack.toolstack import Toolstack
from xenlab.launchers import make_launcher
from xenlab.launchers import docker as docker_launcher
from xenlab.launchers.docker import (AgentPorts, DockerConfig, DockerLauncher, check_config,
                                     own_container_id, parse_label, parse_port_range,
                                     resolve_network)
from xenlab.launchers.domains_dir import DomainsDir, DomainUids
from xenlab.proto import common_pb2, domains_pb2
from xenlab.testing import short_tempdir
from xenlab.xen.errors import DomainError, XenError
from xenlab.xen.sched import cfs_values
from xenlab.xen.start_info import StartInfo

SECRET = "s3cr3t-for-d7"
UIDS = DomainUids(DomainUids.DEFAULT_BASE, DomainUids.DEFAULT_COUNT)
RUNDIR = Path("/run/xenlab")                 # the compose lab's
SHM = Path("/run/xenlab-shm")


class FakeSocket:
    def __init__(self):
        self.sent = b""
        self.closed = False
        self._sock = self

    def settimeout(self, timeout):
        pass

    def sendall(self, data):
        self.sent += data

    def close(self):
        self.closed = True


class FakeContainer:
    def __init__(self, client, image, kwargs):
        self.client = client
        self.image = image
        self.kwargs = kwargs
        # 64 hex digits, as Docker's: a short id would be found by chance in
        # some process's /proc/PID/cgroup.
        self.id = f"{len(client.created):064x}"
        self.name = kwargs["name"]
        self.attrs = {"State": {"Pid": 0}}
        self.started = False
        self.removed = False
        self.calls: list[str] = []
        self.status_code: int | None = None
        self._stopped = threading.Event()

    def start(self):
        if self.client.fail_start:
            raise APIError("cannot start")
        self.started = True
        self.attrs["State"]["Pid"] = 4242

    def reload(self):
        pass

    def exit(self, code: int) -> None:
        """The domain's process ends with `code` (137: SIGKILL)."""
        self.status_code = code
        self._stopped.set()

    def wait(self):
        if self.removed:
            raise NotFound("no such container")
        assert self._stopped.wait(10), "the test never stopped the container"
        return {"StatusCode": self.status_code}

    def remove(self, force=False):
        if self.removed:
            raise NotFound("no such container")
        self.removed = True
        if self.status_code is None:
            self.exit(137)

    def pause(self):
        self.calls.append("pause")

    def update(self, **settings):
        self.calls.append(("update", settings))

    def unpause(self):
        self.calls.append("unpause")

    def logs(self, stream=False, follow=False):
        yield b"booted\n"
        self._stopped.wait(10)

    def stats(self, stream=True, decode=False):
        """Docker's stats stream: a sample of the cgroup's CPU use, as the daemon sends it."""
        assert stream and decode
        yield {"cpu_stats": {"cpu_usage": {"total_usage": 0}}}
        yield {"cpu_stats": {"cpu_usage": {"total_usage": 1_500_000_000}}}
        self._stopped.wait(10)


class FakeContainers:
    def __init__(self, client):
        self.client = client

    def create(self, image, **kwargs):
        if self.client.fail_create:
            raise APIError("no such image", explanation=f"No such image: {image}")
        container = FakeContainer(self.client, image, kwargs)
        self.client.created.append(container)
        return container

    def list(self, all=False, filters=None):
        self.client.listed.append(filters)
        return list(self.client.stale)


class FakeApi:
    def __init__(self, client):
        self.client = client

    def attach_socket(self, container_id, params=None):
        assert params == {"stdin": 1, "stream": 1}
        sock = FakeSocket()
        self.client.stdin[container_id] = sock
        return sock


class FakeDocker:
    def __init__(self):
        self.created: list[FakeContainer] = []
        self.listed: list = []
        self.stale: list[FakeContainer] = []
        self.stdin: dict[str, FakeSocket] = {}
        self.fail_create = False
        self.fail_start = False
        self.containers = FakeContainers(self)
        self.api = FakeApi(self)

    def close(self):
        pass


def start_info(domid=7, name="web", tmp_path=None) -> StartInfo:
    return StartInfo(domid=domid, name=name, secret=SECRET, hypervisor="0.0.0.0:9770",
                     doorbell="/run/xenlab/evtchn.sock", vcpus=1,
                     console_log=str(tmp_path / f"d{domid}.console") if tmp_path else "")


@pytest.fixture
def domains(tmp_path):
    """The hypervisor's domains directory, as --domains-dir makes it."""
    dirs = DomainsDir(tmp_path / "rundir", UIDS, tmp_path / "domains")
    yield dirs
    dirs.close()


def compose_config(domains: DomainsDir, **kw) -> DockerConfig:
    defaults = dict(image="xenlab:test", network="container:lab-hypervisor",
                    volumes=(f"lab-domains:{domains.path}",),
                    agent_ports=(9800, 9801), labels=(("xenlab.lab", "lab"),), name_prefix="lab-")
    defaults.update(kw)
    return DockerConfig(**defaults)


def make(fake, domains: DomainsDir, **kw) -> DockerLauncher:
    return DockerLauncher(compose_config(domains, **kw), client=fake, domains_dir=domains,
                          private=(RUNDIR, SHM))


async def test_the_container_gets_its_start_info_on_stdin_and_nowhere_else(tmp_path, domains):
    fake = FakeDocker()
    launcher = make(fake, domains)
    domain = await launcher.start(start_info(tmp_path=tmp_path))
    (container,) = fake.created
    sent = fake.stdin[container.id]
    assert sent.closed and sent.sent.endswith(b"\n")
    received = StartInfo.from_json(sent.sent.decode())
    assert received.secret == SECRET and received.domid == 7
    assert received.agent == "0.0.0.0:9800"
    # What `docker inspect` shows: the command, environment and labels.
    assert SECRET not in json.dumps(container.kwargs, default=str)
    assert container.kwargs["command"] == ["domain", "--orphan-ok", "--log-level", "INFO"]
    assert container.kwargs["stdin_open"] is True
    assert container.image == "xenlab:test" and container.name == "lab-d7-web"
    assert container.kwargs["volumes"] == [f"lab-domains:{domains.path}"]
    assert container.kwargs["network_mode"] == "container:lab-hypervisor"
    assert container.kwargs["labels"] == {"xenlab.lab": "lab", "xenlab.launcher": "docker",
                                          "xenlab.domid": "7", "xenlab.domain": "web"}
    assert container.kwargs["healthcheck"]["test"][-1] == "127.0.0.1:9800"
    assert domain.pid == 4242
    await domain.kill()


@pytest.mark.skipif(os.geteuid() != 0, reason="a domain's own directory is chowned to its uid")
async def test_a_named_network_is_joined_rather_than_shared(domains):
    """Without agent ports the agent listens in the domain's own directory
    of the domains volume, as a local domain's does."""
    fake = FakeDocker()
    launcher = make(fake, domains, network="labnet", agent_ports=None)
    domain = await launcher.start(start_info())
    kwargs = fake.created[0].kwargs
    assert kwargs["network"] == "labnet" and "network_mode" not in kwargs
    assert "healthcheck" not in kwargs
    agent = StartInfo.from_json(fake.stdin[f"{0:064x}"].sent.decode()).agent
    assert agent == f"unix:{domains.path}/d7/agent.sock"
    assert (domains.path / "d7").stat().st_uid == UIDS.uid(7)
    await domain.kill()


# -- issue 13: "In compose, every domU container runs as root and mounts the rundir (with
# dom0.secret) and every domain's memory" --------------------------------------------------
async def test_a_domu_container_runs_as_its_own_uid_with_no_capabilities(domains):
    fake = FakeDocker()
    domain = await make(fake, domains).start(start_info())
    kwargs = fake.created[0].kwargs
    uid = UIDS.base + 7
    assert kwargs["user"] == f"{uid}:{uid}"
    assert kwargs["group_add"] == [str(UIDS.group)]     # the domains directory's group
    assert kwargs["cap_drop"] == ["ALL"] and "cap_add" not in kwargs
    assert kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["read_only"] is True
    assert not kwargs.get("privileged")
    await domain.kill()


async def test_a_domu_container_mounts_neither_the_rundir_nor_the_shm_dir(domains):
    fake = FakeDocker()
    domain = await make(fake, domains).start(start_info())
    mounts = [v.split(":")[1] for v in fake.created[0].kwargs["volumes"]]
    assert mounts == [str(domains.path)]
    assert not [m for m in mounts if m.startswith((str(RUNDIR), str(SHM)))]
    await domain.kill()


@pytest.mark.parametrize("volume", ["lab-rundir:/run/xenlab", "lab-shm:/run/xenlab-shm",
                                    "lab-rundir:/run/xenlab/logs:ro", "root:/run"])
async def test_a_volume_that_would_give_a_domu_the_rundir_or_every_domains_memory_is_refused(
        domains, volume):
    fake = FakeDocker()
    launcher = make(fake, domains, volumes=(f"lab-domains:{domains.path}", volume))
    with pytest.raises(DomainError) as err:
        await launcher.start(start_info())
    assert volume in err.value.message and "mount only --domains-dir" in err.value.message
    assert fake.created == []


async def test_without_domain_uids_or_a_mounted_domains_dir_no_container_starts(tmp_path, domains):
    fake = FakeDocker()
    plain = DomainsDir(tmp_path, None)              # no domain uids: domains use the rundir
    with pytest.raises(DomainError, match="needs domain uids"):
        await DockerLauncher(compose_config(domains), client=fake, domains_dir=plain).start(start_info())
    fresh = DomainsDir(tmp_path, UIDS)             # a temporary one: no volume can hold it
    try:
        with pytest.raises(DomainError, match="needs --domains-dir"):
            await DockerLauncher(compose_config(domains), client=fake,
                                 domains_dir=fresh).start(start_info())
    finally:
        fresh.close()
    with pytest.raises(DomainError, match=f"no --docker-volume mounts the domains directory {domains.path}"):
        await make(fake, domains, volumes=("other:/srv",)).start(start_info())
    assert fake.created == []


def test_check_config_names_the_bad_volume():
    config = DockerConfig(volumes=("nocolon",))
    with pytest.raises(ValueError, match="expected VOLUME:/PATH"):
        check_config(config, UIDS, Path("/run/xenlab-domains"))


async def test_the_container_exiting_is_the_domain_stopping_and_it_is_removed(tmp_path, domains):
    fake = FakeDocker()
    launcher = make(fake, domains)
    clean = await launcher.start(start_info(1, "clean", tmp_path))
    killed = await launcher.start(start_info(2, "killed", tmp_path))
    fake.created[0].exit(0)
    fake.created[1].exit(137)          # docker's 128+SIGKILL
    assert await asyncio.wait_for(clean.wait(), 5) == 0
    assert await asyncio.wait_for(killed.wait(), 5) == -9
    assert all(c.removed for c in fake.created)
    assert (tmp_path / "d1.console").read_bytes() == b"booted\n"


async def test_destroy_removes_the_container(domains):
    fake = FakeDocker()
    domain = await make(fake, domains).start(start_info())
    await asyncio.wait_for(domain.kill(), 5)
    assert fake.created[0].removed
    assert await asyncio.wait_for(domain.wait(), 5) == -9


async def test_pause_and_unpause_freeze_and_thaw_the_container(domains):
    fake = FakeDocker()
    domain = await make(fake, domains).start(start_info())
    domain.pause()
    domain.unpause()
    assert fake.created[0].calls == ["pause", "unpause"]
    await domain.kill()


async def test_agent_ports_are_handed_out_and_come_back(domains):
    fake = FakeDocker()
    launcher = make(fake, domains, agent_ports=(9800, 9801))
    first = await launcher.start(start_info(1, "a"))
    second = await launcher.start(start_info(2, "b"))
    with pytest.raises(DomainError) as err:
        await launcher.start(start_info(3, "c"))
    assert "9800-9801" in err.value.message
    assert len(fake.created) == 2        # no container for a domain without a port
    await first.kill()
    third = await launcher.start(start_info(3, "c"))
    assert StartInfo.from_json(fake.stdin[fake.created[2].id].sent.decode()).agent == "0.0.0.0:9800"
    await second.kill()
    await third.kill()


async def test_a_docker_error_is_a_domain_error_and_frees_the_port(domains):
    fake = FakeDocker()
    fake.fail_create = True
    launcher = make(fake, domains, agent_ports=(9800, 9800))
    with pytest.raises(DomainError) as err:
        await launcher.start(start_info())
    assert "No such image: xenlab:test" in err.value.message
    fake.fail_create = False
    fake.fail_start = True
    with pytest.raises(DomainError):
        await launcher.start(start_info())
    assert fake.created[0].removed     # created but never started: not left behind
    fake.fail_start = False
    domain = await launcher.start(start_info())      # the one port is free again
    await domain.kill()


async def test_containers_a_dead_hypervisor_left_are_removed_only_by_lab_label(domains):
    fake = FakeDocker()
    stale = FakeContainer(fake, "xenlab:test", {"name": "lab-d3-old"})
    fake.stale.append(stale)
    domain = await make(fake, domains).start(start_info())
    assert stale.removed
    assert fake.listed == [{"label": ["xenlab.launcher=docker", "xenlab.lab=lab"]}]
    await domain.kill()

    unlabelled = FakeDocker()
    unlabelled.stale.append(FakeContainer(unlabelled, "xenlab:test", {"name": "other"}))
    domain = await make(unlabelled, domains, labels=()).start(start_info())
    assert unlabelled.listed == [] and not unlabelled.stale[0].removed
    await domain.kill()


async def test_the_hypervisor_applies_on_crash_when_a_container_dies(hypervisor, domains):
    fake = FakeDocker()
    hypervisor.hv.launchers["docker"] = make(fake, domains)
    domid, _ = await hypervisor.create_domain("web", launcher="docker", on_crash="destroy")
    info = await hypervisor.dom0.domains.Info(common_pb2.DomainRef(domid=domid))
    assert info.launcher == "docker"
    fake.created[0].exit(1)
    for _ in range(100):
        listed = await hypervisor.dom0.domains.List(common_pb2.Empty())
        if domid not in [d.domid for d in listed.domains]:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"d{domid} outlived its container")
    assert fake.created[0].removed


async def test_xl_destroy_removes_the_domains_container(hypervisor, domains):
    fake = FakeDocker()
    hypervisor.hv.launchers["docker"] = make(fake, domains)
    domid, _ = await hypervisor.create_domain("web", launcher="docker")
    await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=domid))
    assert fake.created[0].removed


async def test_xl_list_shows_a_docker_domains_cpu_time(hypervisor, domains):
    # Time(s) was 0.0 for every docker domain.
    fake = FakeDocker()
    hypervisor.hv.launchers["docker"] = make(fake, domains)
    domid, _ = await hypervisor.create_domain("web", launcher="docker")
    for _ in range(200):
        info = await hypervisor.dom0.domains.Info(common_pb2.DomainRef(domid=domid))
        if info.cpu_time:
            break
        await asyncio.sleep(0.01)
    assert info.cpu_time == 1.5
    await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=domid))


def test_start_info_without_an_agent_field_still_parses():
    old = {"domid": 1, "name": "web", "secret": "x", "hypervisor": "h", "doorbell": "",
           "vcpus": 1, "console_log": ""}
    assert StartInfo.from_json(json.dumps(old)).agent == ""
    with pytest.raises(KeyError):
        StartInfo.from_json(json.dumps({k: v for k, v in old.items() if k != "secret"}))


def test_make_launcher_builds_the_docker_launcher_from_the_config(domains):
    launcher = make_launcher("docker", "DEBUG", compose_config(domains), domains)
    assert isinstance(launcher, DockerLauncher)
    assert launcher.config.image == "xenlab:test" and launcher.config.log_level == "DEBUG"


@pytest.mark.parametrize("text, expected", [("9800-9815", (9800, 9815)), ("9800", (9800, 9800))])
def test_port_ranges(text, expected):
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["", "a-b", "9815-9800", "0-5", "9800-70000"])
def test_bad_port_ranges(text):
    with pytest.raises(ValueError):
        parse_port_range(text)


def test_labels():
    assert parse_label("xenlab.lab=a=b") == ("xenlab.lab", "a=b")
    with pytest.raises(ValueError):
        parse_label("novalue")


def test_agent_ports_take_the_lowest_free_one():
    ports = AgentPorts(10, 12)
    assert [ports.take(), ports.take()] == [10, 11]
    ports.give_back(10)
    ports.give_back(99)                  # not ours: ignored
    assert [ports.take(), ports.take()] == [10, 12]
    with pytest.raises(DomainError):
        ports.take()


@pytest.mark.skipif(os.geteuid() != 0, reason="domain uids need root")
async def test_a_container_is_told_the_domains_directory_and_no_path_into_the_rundir_or_shm():
    """What the start_info of a docker domain names, from a hypervisor run as
    the compose lab runs it (domain uids, --domains-dir): the hypervisor's
    and the doorbell's sockets for domains, no descriptor, nothing in the
    rundir or the shm dir that the domain would open."""
    base = short_tempdir()
    rundir, shm, dirs = base / "run", base / "shm", base / "domains"
    shm.mkdir()
    config = HypervisorConfig(address=f"unix:{rundir}/hv.sock", rundir=rundir, shm_dir=shm,
                              total_memory_mb=512, launcher="none", domain_uids=UIDS,
                              domains_dir=dirs)
    server = HypervisorServer(config, Toolstack)
    await server.start()
    try:
        hv = server.hv
        fake = FakeDocker()
        hv.launchers["docker"] = DockerLauncher(
            DockerConfig(volumes=(f"lab-domains:{dirs}",), agent_ports=(9800, 9801)), client=fake,
            domains_dir=hv.domains_dir, private=(rundir, shm))
        dom0 = HypervisorClient.connect(server.address, 0, hv.dom0_secret)
        try:
            await dom0.domains.Create(domains_pb2.CreateDomainRequest(
                spec=domains_pb2.DomainSpec(name="web", memory_mb=16, launcher="docker")))
        finally:
            await dom0.close()
        info = StartInfo.from_json(fake.stdin[fake.created[0].id].sent.decode())
        assert info.hypervisor == f"unix:{dirs}/hv.sock"
        assert info.doorbell == f"{dirs}/evtchn.sock"
        assert (info.memory_fd, info.doorbell_fd, info.uid) == (-1, -1, -1)
        told = [info.hypervisor, info.doorbell, info.agent]
        assert not [p for p in told if str(rundir) in p or str(shm) in p], told
        for name in ("hv.sock", "evtchn.sock"):
            st = (dirs / name).stat()
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, UIDS.group), name
        st = dirs.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o710, UIDS.group)
    finally:
        await server.stop(grace=0.5)
        shutil.rmtree(base, ignore_errors=True)


async def test_sched_credit_updates_the_containers_cpu_settings(domains):
    fake = FakeDocker()
    domain = await make(fake, domains).start(start_info())
    written = domain.set_credit(cfs_values(512, 25))
    assert fake.created[0].calls[-1] == ("update", {"cpu_shares": 2048, "cpu_period": 100000,
                                                    "cpu_quota": 25000})
    assert written == {"docker:lab-d7-web:cpu_shares": "2048", "docker:lab-d7-web:cpu_period": "100000",
                       "docker:lab-d7-web:cpu_quota": "25000"}
    domain.set_credit(cfs_values(256, 0))
    assert fake.created[0].calls[-1][1]["cpu_quota"] == -1          # runc's "no quota"
    await asyncio.wait_for(domain.kill(), 5)


async def test_a_containers_threads_out_of_sight_are_refused_plainly(domains):
    # State.Pid 4242 is no process of this container in our PID namespace.
    fake = FakeDocker()
    domain = await make(fake, domains).start(start_info())
    with pytest.raises(XenError) as err:
        domain.vcpu_tasks()
    assert err.value.errno == errno.EOPNOTSUPP and "PID namespace" in err.value.message
    with pytest.raises(XenError):
        domain.set_affinity([4242], {0})
    await asyncio.wait_for(domain.kill(), 5)


# -- the swarm stack: a service has no fixed container name, so the hypervisor
# gives its domains its own container's network namespace as container:self --------------
TASK_ID = "3f" * 32
SWARM_MOUNTINFO = f"""\
1183 1165 0:118 / / rw,relatime master:534 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X
1207 1183 254:0 /var/lib/docker/containers/{TASK_ID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda rw
1208 1183 254:0 /var/lib/docker/containers/{TASK_ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw
1209 1183 254:0 /var/lib/docker/volumes/xenlab-a-rundir/_data /run/xenlab rw,relatime - ext4 /dev/vda rw
"""
# /var/lib/docker on a file system of its own: the root field starts there
SEPARATE_FS = f"77 60 8:17 /containers/{TASK_ID}/hosts /etc/hosts rw - xfs /dev/sdb1 rw\n"
NOT_A_CONTAINER = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n" \
                  "23 22 0:21 / /proc rw shared:12 - proc proc rw\n"


@pytest.mark.parametrize("text, expected", [(SWARM_MOUNTINFO, TASK_ID), (SEPARATE_FS, TASK_ID),
                                            (NOT_A_CONTAINER, None)])
def test_own_container_id_reads_the_files_docker_mounts_from_its_containers_directory(text, expected):
    assert own_container_id(text) == expected


def test_container_self_names_the_hypervisors_own_container(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(SWARM_MOUNTINFO)
    assert resolve_network("container:self", info) == f"container:{TASK_ID}"
    assert resolve_network("container:lab-hypervisor", info) == "container:lab-hypervisor"
    info.write_text(NOT_A_CONTAINER)
    with pytest.raises(ValueError, match="does not run in a Docker container"):
        resolve_network("container:self", info)


async def test_a_domain_shares_the_network_of_the_container_the_hypervisor_runs_in(
        tmp_path, domains, monkeypatch):
    info = tmp_path / "mountinfo"
    info.write_text(SWARM_MOUNTINFO)
    monkeypatch.setattr(docker_launcher, "MOUNTINFO", info)
    fake = FakeDocker()
    launcher = make(fake, domains, network="container:self")
    domain = await launcher.start(start_info(tmp_path=tmp_path))
    assert fake.created[0].kwargs["network_mode"] == f"container:{TASK_ID}"
    await domain.kill()
    # outside a container: refused, saying why, and the agent port is back
    info.write_text(NOT_A_CONTAINER)
    with pytest.raises(DomainError, match="container:self: the hypervisor does not run in a Docker"):
        await launcher.start(start_info(domid=8, tmp_path=tmp_path))
    assert len(fake.created) == 1
    assert launcher._ports.take() == 9800
