"""A pool on Docker Swarm, as a user on a manager node runs it: `xenlab
swarm-stack` writes the stack file of three hosts (docker-stack.yml is the
same command's for two: tests/unit/lab/test_swarm_stack.py), on a
single-node swarm (made here when the daemon is in none, and left again
afterwards) labelled to hold all three; `docker stack deploy` starts
mosquitto and each host's hypervisor, bridge and Domain-0, and the lab jobs
of hosts a and b create their domUs as containers beside their hypervisors
(host c starts empty). web (host a) pings cache on its own host and db on
host b, over the VXLAN between the bridges on the node's address; the
toolstack answers on the hypervisor's published port; `xl migrate -s
"docker exec -i"` moves web to host c, as xl reaches another machine over
ssh, where cache (a) and db (b) reach it; `docker stack rm` leaves no
container.

tools/ci-docker.sh prepares Docker, as for the compose tests.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from docker_env import IMAGE, free_ports, prepare_docker, run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

UP_TIMEOUT = 240.0          # seconds for both lab jobs to finish
HEALTH_TIMEOUT = 30.0       # seconds for a (re)started container's first health probe (interval 3 s)
HOSTS = ("a", "b", "c")
DOMUS = {"a": {"web": "10.0.0.1", "cache": "10.0.0.3"}, "b": {"db": "10.0.0.2"}, "c": {}}
WEB_TOKEN = "swarm-e2e-token"
LABS = {"a": "/etc/xenlab/lab/web.cfg /etc/xenlab/lab/cache.cfg", "b": "/etc/xenlab/lab/db.cfg"}


def node_address() -> str:
    """This machine's address on its default route, else its first global
    one outside Docker's bridges (what a swarm node advertises, and what the
    other host's bridge sends VXLAN to)."""
    out = run("ip", "-4", "-o", "route", "get", "192.0.2.255", check=False).stdout
    found = re.search(r"\bsrc (\d+\.\d+\.\d+\.\d+)", out)
    if found:
        return found.group(1)
    for line in run("ip", "-4", "-o", "addr", "show", "scope", "global").stdout.splitlines():
        name, address = line.split()[1], line.split()[3].split("/")[0]
        if not name.startswith(("docker", "br-", "veth")):
            return address
    pytest.skip("no global IPv4 address to advertise a swarm node on")


@dataclass
class Swarm:
    """The daemon's swarm, as this test found it and what it changed."""
    node: str
    made: bool = False                       # docker swarm init ran here
    gwbridge: bool = True                    # docker_gwbridge was there before
    labels_added: list[str] = field(default_factory=list)

    @classmethod
    def join(cls, address: str) -> "Swarm":
        state = run("docker", "info", "--format",
                    "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}").stdout.split()
        made = False
        gwbridge = run("docker", "network", "inspect", "docker_gwbridge", check=False).returncode == 0
        if state[0] == "inactive":
            init = run("docker", "swarm", "init", "--advertise-addr", address, check=False)
            if init.returncode != 0:
                pytest.skip(f"docker swarm init failed: {init.stderr.strip()}")
            made = True
        elif state != ["active", "true"]:
            pytest.skip(f"the daemon's swarm is {' '.join(state)}: a stack deploys from a manager")
        node = run("docker", "info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        return cls(node, made, gwbridge)

    def label(self, *names: str) -> None:
        have = json.loads(run("docker", "node", "inspect", self.node, "--format",
                              "{{json .Spec.Labels}}").stdout) or {}
        for name in names:
            if have.get(name) != "true":
                run("docker", "node", "update", "--label-add", f"{name}=true", self.node)
                self.labels_added.append(name)

    def restore(self) -> None:
        for name in self.labels_added:
            run("docker", "node", "update", "--label-rm", name, self.node, check=False)
        if self.made:
            run("docker", "swarm", "leave", "--force", check=False)
            if not self.gwbridge:      # swarm init made it
                run("docker", "network", "rm", "docker_gwbridge", check=False)


@dataclass
class Stack:
    project: str
    env: dict
    address: str
    ports: dict[str, int]
    rundir: Path                # on the host: the toolstack's view of host a

    def deploy(self, stack_file: Path) -> None:
        written = run(sys.executable, "-m", "xenlab.cli.main", "swarm-stack",
                      *(f"--lab={host}={files}" for host, files in LABS.items()), *HOSTS,
                      "-o", str(stack_file), check=False)
        assert written.returncode == 0, written.stderr
        out = run("docker", "stack", "deploy", "-c", str(stack_file), self.project,
                  env=self.env, check=False)
        assert out.returncode == 0, f"docker stack deploy failed:\n{out.stdout}\n{out.stderr}"

    def container(self, service: str) -> str:
        """The running container of one of the stack's services (this node runs them all)."""
        deadline = time.monotonic() + 60
        while True:
            ids = run("docker", "ps", "-q", "--filter",
                      f"label=com.docker.swarm.service.name={self.project}_{service}").stdout.split()
            if len(ids) == 1:
                return ids[0]
            assert time.monotonic() < deadline, f"{service}: containers {ids}"
            time.sleep(1)

    def tasks(self, service: str) -> list[str]:
        return run("docker", "service", "ps", f"{self.project}_{service}", "--no-trunc",
                   "--format", "{{.CurrentState}}|{{.Error}}", check=False).stdout.splitlines()

    def exec(self, service: str, *args: str, timeout: float = 120):
        return run("docker", "exec", self.container(service), *args, check=False, timeout=timeout)

    def logs(self) -> str:
        services = run("docker", "stack", "services", self.project, "--format", "{{.Name}}",
                       check=False).stdout.split()
        return "\n".join(f"---- {name} ----\n" + run("docker", "service", "logs", "--tail", "30",
                                                     "--no-task-ids", name, check=False).stdout
                         for name in services)

    def leftovers(self) -> dict[str, list[str]]:
        found = {}
        for kind, cmd, selectors in (
                ("containers", ["ps", "-a"], [f"label=com.docker.stack.namespace={self.project}",
                                              *(f"label=xenlab.lab={self.project}-{host}"
                                                for host in HOSTS)]),
                ("volumes", ["volume", "ls"], [f"name={self.project}-"]),
                ("networks", ["network", "ls"], [f"name={self.project}-net"])):
            names: set[str] = set()
            for selector in selectors:
                names.update(run("docker", *cmd, "-q", "--filter", selector).stdout.split())
            found[kind] = sorted(names)
        return found

    def remove(self) -> None:
        run("docker", "stack", "rm", self.project, check=False)
        # The hypervisors destroy their domains (and remove those containers)
        # on the way down; the volumes go once no container holds them.
        deadline = time.monotonic() + 90
        while self.leftovers()["containers"] and time.monotonic() < deadline:
            time.sleep(1)
        for _ in range(30):
            volumes = self.leftovers()["volumes"]
            if not volumes:
                break
            run("docker", "volume", "rm", *volumes, check=False)
            time.sleep(1)


def wait_lab_jobs(stack: Stack) -> None:
    """Each host's lab job ends Complete once every vif of its domUs is
    Connected (it retries while its hypervisor, bridge and Domain-0 start)."""
    deadline = time.monotonic() + UP_TIMEOUT
    while True:
        states = {f"lab-{host}": stack.tasks(f"lab-{host}") for host in LABS}
        if all(any(s.startswith("Complete") for s in tasks) for tasks in states.values()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the lab jobs did not complete within {UP_TIMEOUT:g}s: {states}\n{stack.logs()}")
        time.sleep(2)


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    prepare_docker()
    address = node_address()
    swarm = Swarm.join(address)
    project = f"xlsw{os.getpid()}"
    tcp = free_ports(2 * len(HOSTS), host="0.0.0.0")     # one block: two calls would find the same
    hv, webs = dict(zip(HOSTS, tcp)), dict(zip(HOSTS, tcp[len(HOSTS):]))
    vx = dict(zip(HOSTS, free_ports(len(HOSTS), socket.SOCK_DGRAM, host="0.0.0.0")))
    env = dict(os.environ, XENLAB_PROJECT=project, XENLAB_IMAGE=IMAGE, XENLAB_SHM_SIZE="512m",
               XENLAB_WEB_TOKEN=WEB_TOKEN)
    for host in HOSTS:
        env.update({f"XENLAB_{host.upper()}_ADDR": address, f"XENLAB_{host.upper()}_PORT": str(hv[host]),
                    f"XENLAB_{host.upper()}_VXLAN": str(vx[host]), f"XENLAB_{host.upper()}_WEB": str(webs[host])})
    stack = Stack(project, env, address, {"hv-a": hv["a"], **{f"web-{h}": p for h, p in webs.items()}},
                  tmp_path_factory.mktemp("swarm-rundir"))
    failed_before = request.session.testsfailed
    started = time.monotonic()
    try:
        swarm.label(*(f"xenlab-{host}" for host in HOSTS))
        stack.deploy(tmp_path_factory.mktemp("swarm-stack") / "stack.yml")
        wait_lab_jobs(stack)
        print(f"swarm stack {project} up in {time.monotonic() - started:.1f}s")
        yield stack
    finally:
        if request.session.testsfailed != failed_before:
            print(stack.logs())
        stack.remove()
        swarm.restore()


def settled_state(stack: Stack, service: str) -> dict:
    """The docker State of a service's container once its health check has
    reported. Host c has no lab job to wait for, so its bridge and Domain-0
    may have just been started again by the stack's retry policy (they exit
    until the hypervisor has published its address): docker says `starting`
    until a probe passes (the first runs 3 s after the start) or the start
    period ends. A check still `starting` at the deadline, or `unhealthy`,
    fails the test as before."""
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while True:
        state = json.loads(run("docker", "inspect", stack.container(service)).stdout)[0]["State"]
        if state.get("Health", {}).get("Status") != "starting" or time.monotonic() > deadline:
            return state
        time.sleep(1)


def test_each_hosts_services_run_and_its_domus_share_its_hypervisors_network(stack):
    for host in HOSTS:
        for service in (f"hypervisor-{host}", f"bridge-{host}", f"dom0-{host}"):
            state = settled_state(stack, service)
            assert state["Running"] and state["Health"]["Status"] == "healthy", (service, state["Health"])
        hypervisor = json.loads(run("docker", "inspect", stack.container(f"hypervisor-{host}")).stdout)[0]
        ids = run("docker", "ps", "-q", "--filter", f"label=xenlab.lab={stack.project}-{host}").stdout.split()
        domus = {}
        for cid in ids:
            info = json.loads(run("docker", "inspect", cid).stdout)[0]
            domus[info["Config"]["Labels"]["xenlab.domain"]] = info["HostConfig"]["NetworkMode"]
        # container:self became the hypervisor task's own container
        assert domus == {name: f"container:{hypervisor['Id']}" for name in DOMUS[host]}


@pytest.mark.parametrize("src, dst, host", [("web", "cache", "a"), ("web", "db", "a"), ("db", "web", "b")])
def test_a_domu_pings_on_its_own_host_and_across_the_vxlan_to_the_other(stack, src, dst, host):
    ip = {**DOMUS["a"], **DOMUS["b"]}[dst]
    out = stack.exec(f"hypervisor-{host}", "xenlab", "ping", "-c", "3", "-i", "0.2", "-W", "5", src, ip)
    assert out.returncode == 0 and "3 received" in out.stdout, out.stdout + out.stderr


def test_each_bridge_learns_the_other_hosts_domus_behind_its_vxlan_port(stack):
    ping = stack.exec("hypervisor-a", "xenlab", "ping", "-c", "1", "web", DOMUS["b"]["db"])
    assert ping.returncode == 0, ping.stderr
    fdb = stack.exec("hypervisor-a", "xenlab", "bridge", "fdb", "show")
    assert "00:16:3e:00:00:02 dev vxlan42 master xenbr0" in fdb.stdout, fdb.stdout
    assert "00:16:3e:00:00:01 dev vif1.0 master xenbr0" in fdb.stdout, fdb.stdout
    links = json.loads(stack.exec("hypervisor-b", "xenlab", "bridge", "-j", "link", "show").stdout)
    vxlan = [link for link in links if link["ifname"] == "vxlan42"]
    assert vxlan and vxlan[0]["mtu"] == 1450 and vxlan[0]["state"] == "forwarding", links


def test_each_hosts_web_view_answers_on_its_port_of_the_node(stack):
    """The web view of each host (its own service, reading the host's rundir
    volume) shows that host's domains, on the node's address."""
    for host in HOSTS:
        url = f"http://{stack.address}:{stack.ports[f'web-{host}']}/api/topology?token={WEB_TOKEN}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=10) as reply:
                    topology = json.load(reply)
                break
            except OSError as err:      # the service may be restarting until its host is up
                assert time.monotonic() < deadline, f"{url}: {err}\n{stack.logs()}"
                time.sleep(1)
        assert {d["name"] for d in topology["domains"]} - {"Domain-0"} == set(DOMUS[host]), (host, topology)
        assert any(p["name"] == "vxlan42" for p in topology["ports"]), (host, topology["ports"])
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(url.replace(WEB_TOKEN, "wrong"), timeout=10)


def manager_rundir(stack: Stack) -> Path:
    """What a manager needs to be host a's toolstack: its published address
    on the node and Domain-0's secret, taken from host a's rundir volume."""
    if not (stack.rundir / "hypervisor.addr").exists():
        secret = stack.exec("hypervisor-a", "cat", "/run/xenlab/dom0.secret").stdout
        assert secret.strip()
        fd = os.open(stack.rundir / "dom0.secret", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        (stack.rundir / "hypervisor.addr").write_text(f"{stack.address}:{stack.ports['hv-a']}\n")
    return stack.rundir


def xl(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "xenlab.cli.main", "xl", "--rundir", str(manager_rundir(stack)),
               *args, check=False, timeout=timeout)


def test_the_toolstack_answers_on_the_hypervisors_port_of_the_node(stack):
    """From the manager, through the published port on the node's address."""
    listing = xl(stack, "list")
    assert listing.returncode == 0, listing.stderr
    assert {line.split()[0] for line in listing.stdout.splitlines()[1:]} == {"Domain-0", *DOMUS["a"]}


def test_xl_migrate_moves_web_to_host_c_as_xl_reaches_another_machine(stack):
    """`xl migrate -s "docker exec -i" web CONTAINER` from the manager: the
    image from host a's toolstack (its published port) into `xenlab xl
    migrate-receive` in host c's hypervisor container, as ssh reaches
    another machine's xl. web then runs on host c, as a container beside
    c's hypervisor, and answers cache (host a) and db (host b), each over
    the VXLAN from its own host's bridge to c's."""
    moved = xl(stack, "migrate", "-s", "docker exec -i", "web", stack.container("hypervisor-c"))
    assert moved.returncode == 0, moved.stdout + moved.stderr
    for line in ("migration target: Ready to receive domain.",
                 "migration target: Domain started successsfully.",
                 "migration sender: Target reports successful startup.", "Migration successful."):
        assert line in moved.stderr, moved.stderr
    assert "downtime" in moved.stdout, moved.stdout
    on_c = stack.exec("hypervisor-c", "xenlab", "xl", "list").stdout
    assert "web" in on_c and "web" not in xl(stack, "list").stdout, on_c
    web = run("docker", "ps", "-q", "--filter", f"label=xenlab.lab={stack.project}-c",
              "--filter", "label=xenlab.domain=web").stdout.split()
    assert len(web) == 1
    for host, src in (("a", "cache"), ("b", "db")):
        out = stack.exec(f"hypervisor-{host}", "xenlab", "ping", "-c", "3", "-i", "0.2", "-W", "5",
                         src, DOMUS["a"]["web"])
        assert out.returncode == 0 and "3 received" in out.stdout, (src, out.stdout + out.stderr)


def test_stack_rm_leaves_no_container_volume_or_network(stack):
    stack.remove()
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
