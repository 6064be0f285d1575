"""The docker launcher against a fake Docker client: what it asks the daemon
for, how the start_info reaches the container, and how a container's life
maps to the domain's (exit, crash, destroy, pause). tests/e2e runs it
against a real daemon."""
from __future__ import annotations

import asyncio
import json
import threading

import pytest
from docker.errors import APIError, NotFound

from xenlab.hypervisor.docker_launcher import (AgentPorts, DockerConfig, DockerLauncher,
                                               parse_label, parse_port_range)
from xenlab.hypervisor.launcher import StartInfo, make_launcher
from xenlab.proto import common_pb2
from xenlab.xen.errors import DomainError

SECRET = "s3cr3t-for-d7"


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
        self.id = f"c{len(client.created)}"
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


def compose_config(**kw) -> DockerConfig:
    defaults = dict(image="xenlab:test", network="container:lab-hypervisor",
                    volumes=("lab-rundir:/run/xenlab", "lab-shm:/run/xenlab-shm"),
                    agent_ports=(9800, 9801), labels=(("xenlab.lab", "lab"),), name_prefix="lab-")
    defaults.update(kw)
    return DockerConfig(**defaults)


async def test_the_container_gets_its_start_info_on_stdin_and_nowhere_else(tmp_path):
    fake = FakeDocker()
    launcher = DockerLauncher(compose_config(), client=fake)
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
    assert container.kwargs["volumes"] == ["lab-rundir:/run/xenlab", "lab-shm:/run/xenlab-shm"]
    assert container.kwargs["network_mode"] == "container:lab-hypervisor"
    assert container.kwargs["labels"] == {"xenlab.lab": "lab", "xenlab.launcher": "docker",
                                          "xenlab.domid": "7", "xenlab.domain": "web"}
    assert container.kwargs["healthcheck"]["test"][-1] == "127.0.0.1:9800"
    assert domain.pid == 4242
    await domain.kill()


async def test_a_named_network_is_joined_rather_than_shared():
    fake = FakeDocker()
    launcher = DockerLauncher(compose_config(network="labnet", agent_ports=None), client=fake)
    domain = await launcher.start(start_info())
    kwargs = fake.created[0].kwargs
    assert kwargs["network"] == "labnet" and "network_mode" not in kwargs
    assert "healthcheck" not in kwargs
    assert StartInfo.from_json(fake.stdin["c0"].sent.decode()).agent == ""
    await domain.kill()


async def test_the_container_exiting_is_the_domain_stopping_and_it_is_removed(tmp_path):
    fake = FakeDocker()
    launcher = DockerLauncher(compose_config(), client=fake)
    clean = await launcher.start(start_info(1, "clean", tmp_path))
    killed = await launcher.start(start_info(2, "killed", tmp_path))
    fake.created[0].exit(0)
    fake.created[1].exit(137)          # docker's 128+SIGKILL
    assert await asyncio.wait_for(clean.wait(), 5) == 0
    assert await asyncio.wait_for(killed.wait(), 5) == -9
    assert all(c.removed for c in fake.created)
    assert (tmp_path / "d1.console").read_bytes() == b"booted\n"


async def test_destroy_removes_the_container():
    fake = FakeDocker()
    domain = await DockerLauncher(compose_config(), client=fake).start(start_info())
    await asyncio.wait_for(domain.kill(), 5)
    assert fake.created[0].removed
    assert await asyncio.wait_for(domain.wait(), 5) == -9


async def test_pause_and_unpause_freeze_and_thaw_the_container():
    fake = FakeDocker()
    domain = await DockerLauncher(compose_config(), client=fake).start(start_info())
    domain.pause()
    domain.unpause()
    assert fake.created[0].calls == ["pause", "unpause"]
    await domain.kill()


async def test_agent_ports_are_handed_out_and_come_back():
    fake = FakeDocker()
    launcher = DockerLauncher(compose_config(agent_ports=(9800, 9801)), client=fake)
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


async def test_a_docker_error_is_a_domain_error_and_frees_the_port():
    fake = FakeDocker()
    fake.fail_create = True
    launcher = DockerLauncher(compose_config(agent_ports=(9800, 9800)), client=fake)
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


async def test_containers_a_dead_hypervisor_left_are_removed_only_by_lab_label():
    fake = FakeDocker()
    stale = FakeContainer(fake, "xenlab:test", {"name": "lab-d3-old"})
    fake.stale.append(stale)
    domain = await DockerLauncher(compose_config(), client=fake).start(start_info())
    assert stale.removed
    assert fake.listed == [{"label": ["xenlab.launcher=docker", "xenlab.lab=lab"]}]
    await domain.kill()

    unlabelled = FakeDocker()
    unlabelled.stale.append(FakeContainer(unlabelled, "xenlab:test", {"name": "other"}))
    domain = await DockerLauncher(compose_config(labels=()), client=unlabelled).start(start_info())
    assert unlabelled.listed == [] and not unlabelled.stale[0].removed
    await domain.kill()


async def test_the_hypervisor_applies_on_crash_when_a_container_dies(hypervisor):
    fake = FakeDocker()
    hypervisor.hv.launchers["docker"] = DockerLauncher(compose_config(), client=fake)
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


async def test_xl_destroy_removes_the_domains_container(hypervisor):
    fake = FakeDocker()
    hypervisor.hv.launchers["docker"] = DockerLauncher(compose_config(), client=fake)
    domid, _ = await hypervisor.create_domain("web", launcher="docker")
    await hypervisor.dom0.domains.Destroy(common_pb2.DomainRef(domid=domid))
    assert fake.created[0].removed


async def test_xl_list_shows_a_docker_domains_cpu_time(hypervisor):
    # Time(s) was 0.0 for every docker domain.
    fake = FakeDocker()
    hypervisor.hv.launchers["docker"] = DockerLauncher(compose_config(), client=fake)
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


def test_make_launcher_builds_the_docker_launcher_from_the_config():
    launcher = make_launcher("docker", "DEBUG", compose_config())
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
