"""`xenlab swarm-stack`: the Docker Swarm stack file of a pool of hosts.

A pool on Swarm (docs/SWARM.md) is, per host, what docker-compose.yml runs
on one machine: a hypervisor, the bridge service (xenbr0), Domain-0, the
web view, and a one-shot lab job that creates the host's domUs, all placed on the node
labelled ``xenlab-HOST``; and one mosquitto for all. Every host's xenbr0 has
a VXLAN uplink to every other host's, on the nodes' addresses. The stack
file has no loop, so it is written out here for any list of hosts; the
repository's docker-stack.yml is this for hosts a and b (a test keeps the
two the same).

Everything a deployment varies is left to the environment of `docker stack
deploy`, per host ``XENLAB_<HOST>_ADDR`` (required), ``_PORT``, ``_VXLAN``
and ``_LAB``; the text is made without I/O.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass

HOST_NAME = re.compile(r"[a-z][a-z0-9]{0,15}\Z")
HYPERVISOR_PORT = 9770          # each host's gRPC port on its node: 9770, 9771, ...
VXLAN_PORT = 14789              # each bridge's VXLAN port on its node: 14789, 14790, ...
WEB_PORT = 8090                 # each host's web view on its node: 8090, 8091, ...
VNI = 42
MAX_HOSTS = 64


class StackError(ValueError):
    pass


@dataclass(frozen=True)
class SwarmHost:
    name: str
    index: int                  # its place in the pool: its default ports
    lab: tuple[str, ...] = ()   # config files (in the image) its lab job creates; none: no job

    @property
    def var(self) -> str:
        return f"XENLAB_{self.name.upper()}"

    @property
    def addr(self) -> str:
        return _required(f"{self.var}_ADDR", f"set {self.var}_ADDR to the address of host "
                                             f"{self.name}'s node")

    @property
    def port(self) -> str:
        return _env(f"{self.var}_PORT", HYPERVISOR_PORT + self.index)

    @property
    def vxlan(self) -> str:
        return _env(f"{self.var}_VXLAN", VXLAN_PORT + self.index)

    @property
    def web(self) -> str:
        return _env(f"{self.var}_WEB", WEB_PORT + self.index)


def _env(name: str, default) -> str:
    return "${%s:-%s}" % (name, default)


def _required(name: str, why: str) -> str:
    return "${%s:?%s}" % (name, why)


PROJECT = _env("XENLAB_PROJECT", "xenlab")
IMAGE = _env("XENLAB_IMAGE", "xenlab:latest")
MQTT = _env("XENLAB_MQTT", "mqtt://mosquitto:1883")
VNI_VAR = _env("XENLAB_VNI", VNI)
SHM_SIZE = _env("XENLAB_SHM_SIZE", "1g")
LEARNING = _env("XENLAB_VXLAN_LEARNING", "off")


def make_hosts(names: list[str], labs: dict[str, list[str]] | None = None) -> list[SwarmHost]:
    """The pool's hosts in order; `labs`: each host's lab job's config files."""
    labs = labs or {}
    if not names:
        raise StackError("name at least one host")
    if len(names) > MAX_HOSTS:
        raise StackError(f"{len(names)} hosts: at most {MAX_HOSTS} (each bridge floods to every other)")
    for name in names:
        if not HOST_NAME.match(name):
            raise StackError(f"host name {name!r}: a lowercase letter, then up to 15 lowercase "
                             f"letters or digits (it names services, volumes, a node label and "
                             f"XENLAB_<HOST>_* variables)")
    seen = set()
    for name in names:
        if name in seen:
            raise StackError(f"host {name} is named twice")
        seen.add(name)
    for name in labs:
        if name not in seen:
            raise StackError(f"--lab {name}=...: {name} is not one of the hosts ({', '.join(names)})")
    for name, files in labs.items():
        for path in files:
            if not path.startswith("/") or any(c in path for c in "$\"'\\\n"):
                raise StackError(f"--lab {name}: {path!r}: config files are absolute paths inside "
                                 f"the image (e.g. /etc/xenlab/lab/web.cfg)")
    return [SwarmHost(name, i, tuple(labs.get(name, ()))) for i, name in enumerate(names)]


def render(hosts: list[SwarmHost], file: str = "STACK_FILE") -> str:
    """The stack file of a pool of `hosts` (make_hosts), to be saved as `file`."""
    out = [_header(hosts, file), _COMMON]
    for host in hosts:
        out.append(_host_services(host, [h for h in hosts if h is not host]))
    out.append(_NETWORKS)
    out.append("volumes:\n")
    for host in hosts:
        for kind in ("rundir", "domains", "shm"):
            out.append(f"  {host.name}-{kind}:\n    name: {PROJECT}-{host.name}-{kind}\n")
            if kind == "shm":
                out.append("    driver: local\n"
                           f'    driver_opts: {{type: tmpfs, device: tmpfs, o: "size={SHM_SIZE}"}}\n')
    return "".join(out)


def _header(hosts: list[SwarmHost], file: str) -> str:
    names = [h.name for h in hosts]
    listed = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
    rune = " ".join(["xenlab swarm-stack"]
                    + [f"--lab '{h.name}={' '.join(h.lab)}'" if len(h.lab) > 1 else f"--lab {h.name}={h.lab[0]}"
                       for h in hosts if h.lab] + names)
    labels = "\n".join(f"#   docker node update --label-add xenlab-{n}=true NODE_{n.upper()}"
                       for n in names)
    addrs = " ".join(f"{h.var}_ADDR=ADDR_OF_NODE_{h.name.upper()}" for h in hosts)
    return f"""\
# A pool of {len(hosts)} xenlab host{'s' if len(hosts) > 1 else ''}, {listed}, on Docker Swarm (docs/SWARM.md).
# Written by `{rune}`:
# to change the hosts, run that again rather than editing this.
#
{labels}
#   {addrs} \\
#       docker stack deploy -c {file} xenlab
#   docker stack rm xenlab
#
# Each host is what docker-compose.yml runs on one machine: a hypervisor,
# the bridge service (xenbr0), Domain-0, the web view, and domUs the docker
# launcher starts as containers beside its hypervisor on the same node. A host's services
# are placed by node label (xenlab-HOST; one node may carry several): its
# volumes are local to that node, and its containers meet in them. Swarm has
# no shared network namespace between services (compose's network_mode:
# service:...) and no container names, so the hypervisor serves the rundir's
# unix socket first (the bridge, Domain-0 and the lab job reach it through
# the volume), and its domUs share its own container's network namespace
# (container:self).
#
# Every host's xenbr0 has a VXLAN uplink to every other host's on the nodes'
# addresses: UDP 14789 for the first host, 14790 for the second and so on,
# published on each node (mode: host), VNI 42. Not 4789: Swarm's own overlay
# networks hold that port on every node. Inner MTU 1450, as Linux's vxlan
# device has over a 1500-byte underlay. learning=off by default (Linux's
# nolearning): a frame goes to every remote; where two hosts share a node,
# Docker's userland proxy delivers each one's datagrams from the node's
# gateway address, which learning would take for the sender's VTEP.
#
# Settings (environment of `docker stack deploy`); for each HOST:
#   XENLAB_<HOST>_ADDR   the address of its node (required): the other bridges' VXLAN remote
#   XENLAB_<HOST>_PORT   its hypervisor's gRPC port on its node (9770 for the first host, ...)
#   XENLAB_<HOST>_VXLAN  its bridge's VXLAN port on its node (14789 for the first host, ...)
#   XENLAB_<HOST>_LAB    the configs its lab job creates (files or directories in the image)
#   XENLAB_<HOST>_WEB    its web view's port on its node (8090 for the first host, ...)
# and for all:
#   XENLAB_PROJECT       names the hosts' volumes, containers and MQTT host names (xenlab)
#   XENLAB_IMAGE         the image every service and domU runs (xenlab:latest); Swarm does
#                        not build: build it on each node or push it to a registry
#   XENLAB_VNI           the VXLAN network identifier (42)
#   XENLAB_VXLAN_LEARNING  on: each bridge learns remote MACs' VTEPs (off; on only where
#                        every host has a node of its own)
#   XENLAB_MQTT          the broker (mqtt://mosquitto:1883, the stack's own; "none": off)
#   XENLAB_SHM_SIZE      each host's tmpfs for domain memory (1g)
#   XENLAB_WEB_TOKEN     the token the web views' URLs carry (default: a random one each,
#                        in `docker service logs` of web-HOST)
"""


_COMMON = f"""\
version: "3.8"

x-image: &image
  image: {IMAGE}

x-health: &health
  interval: 3s
  timeout: 5s
  retries: 3
  start_period: 60s

# Until the hypervisor publishes its address in the rundir, the bridge,
# Domain-0 and the lab job exit saying so, and Swarm starts them again.
x-retry: &retry
  condition: on-failure
  delay: 3s

services:
  mosquitto:
    <<: *image
    entrypoint: ["mosquitto", "-c", "/etc/xenlab/mosquitto.conf"]
    command: []
    networks: [xenlab]
    healthcheck:
      <<: *health
      test: ["CMD", "xenlab", "healthcheck", "-q", "mqtt://127.0.0.1:1883"]
    deploy:
      placement:
        constraints: [node.role == manager]
"""

_NETWORKS = f"""
networks:
  # mosquitto for every host; each host's own traffic stays in its volumes
  # (unix sockets) and on the VXLAN between the nodes.
  xenlab:
    driver: overlay
    name: {PROJECT}-net

"""


def _host_services(host: SwarmHost, others: list[SwarmHost]) -> str:
    n = host.name
    named = f"--mqtt {MQTT} --host-name {PROJECT}-{n}"
    placement = f"""\
      placement:
        constraints: [node.labels.xenlab-{n} == true]
"""
    if others:
        remotes = ",".join(f"remote={o.addr}:{o.vxlan}" for o in others)
        uplink = (f"\n      --uplink xenbr0=vxlan:vni={VNI_VAR},local=0.0.0.0:{VXLAN_PORT},{remotes},"
                  f"name=vxlan{VNI_VAR},learning={LEARNING}")
        vxlan_port = f"""\
    ports:
      - {{target: {VXLAN_PORT}, published: "{host.vxlan}", protocol: udp, mode: host}}
"""
    else:
        uplink = vxlan_port = ""
    text = f"""
  # -- host {n} {'-' * (77 - len(n))}
  hypervisor-{n}:
    <<: *image
    command: >-
      hypervisor --listen unix:/run/xenlab/hv.sock --listen 0.0.0.0:{HYPERVISOR_PORT}
      --rundir /run/xenlab --shm-dir /run/xenlab-shm --domains-dir /run/xenlab-domains
      --launcher docker --docker-image {IMAGE}
      --docker-network container:self
      --docker-volume {PROJECT}-{n}-domains:/run/xenlab-domains
      --docker-label xenlab.lab={PROJECT}-{n}
      --docker-name-prefix {PROJECT}-{n}-
      {named}
    networks: [xenlab]
    volumes:
      - {n}-rundir:/run/xenlab
      - {n}-shm:/run/xenlab-shm
      - {n}-domains:/run/xenlab-domains
      # The docker launcher starts the domUs as containers on this node.
      - /var/run/docker.sock:/var/run/docker.sock
    ports:
      - {{target: {HYPERVISOR_PORT}, published: "{host.port}", protocol: tcp, mode: host}}
    # Time to destroy every domain (and remove its container) on the way down.
    stop_grace_period: 30s
    healthcheck:
      <<: *health
      test: ["CMD", "xenlab", "healthcheck", "-q", "127.0.0.1:{HYPERVISOR_PORT}"]
    deploy:
{placement}
  bridge-{n}:
    <<: *image
    command: >-
      bridge-service --bridge xenbr0 --rundir /run/xenlab{uplink}
      {named}
    networks: [xenlab]
    volumes:
      - {n}-rundir:/run/xenlab
{vxlan_port}    healthcheck:
      <<: *health
      test: ["CMD", "xenlab", "healthcheck", "-q", "xenstore:/tool/xenlab/bridges/xenbr0/address"]
    deploy:
      restart_policy: *retry
{placement}
  dom0-{n}:
    <<: *image
    command: >-
      dom0 --rundir /run/xenlab
      {named}
    networks: [xenlab]
    volumes:
      - {n}-rundir:/run/xenlab
      - {n}-shm:/run/xenlab-shm
    healthcheck:
      <<: *health
      test: ["CMD", "xenlab", "healthcheck", "-q", "xenstore:/local/domain/0/data/netback=ready"]
    deploy:
      restart_policy: *retry
{placement}"""
    text += f"""
  # The live web view of host {n} (README, "The web view"); `docker service
  # logs` prints its URL with the token, which XENLAB_WEB_TOKEN sets.
  web-{n}:
    <<: *image
    command: >-
      web --listen 0.0.0.0:{WEB_PORT} --rundir /run/xenlab --token "{_env("XENLAB_WEB_TOKEN", "")}"
    networks: [xenlab]
    volumes:
      - {n}-rundir:/run/xenlab
    ports:
      - {{target: {WEB_PORT}, published: "{host.web}", protocol: tcp, mode: host}}
    deploy:
      restart_policy: *retry
{placement}"""
    if host.lab:
        text += f"""
  # One-shot: xl create for host {n}'s domUs, then wait until their vifs are
  # Connected; it exits 0 and stays down.
  lab-{n}:
    <<: *image
    entrypoint: ["xenlab-create-lab"]
    command: {_env(f"{host.var}_LAB", " ".join(host.lab))}
    networks: [xenlab]
    volumes:
      - {n}-rundir:/run/xenlab
    deploy:
      restart_policy: *retry
{placement}"""
    return text


# -- the command --------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write the Docker Swarm stack file of a pool of HOSTs (docs/SWARM.md): per host a "
        "hypervisor, bridge, Domain-0, web view and lab job placed on the node labelled xenlab-HOST, "
        "every bridge joined to every other by VXLAN, one mosquitto. Deploy it with "
        "XENLAB_<HOST>_ADDR set for each host: docker stack deploy -c FILE xenlab.")
    parser.add_argument("hosts", nargs="+", metavar="HOST",
                        help="the hosts, in order (their default ports follow it): a lowercase "
                             "letter, then up to 15 lowercase letters or digits")
    parser.add_argument("--lab", action="append", default=[], metavar="HOST=CONFIG[ CONFIG...]",
                        help="the configs (files or directories in the image, e.g. "
                             "/etc/xenlab/lab/web.cfg) HOST's lab job creates at deploy; "
                             "XENLAB_<HOST>_LAB overrides it then. A host without --lab gets "
                             "no lab job: its domains come by xl create or xl migrate")
    parser.add_argument("-o", "--output", metavar="FILE", default="-",
                        help="where to write it (default: standard output)")


def parse_labs(items: list[str]) -> dict[str, list[str]]:
    labs: dict[str, list[str]] = {}
    for item in items:
        name, sep, files = item.partition("=")
        if not sep or not files.split():
            raise StackError(f"--lab {item!r}: expected HOST=CONFIG[ CONFIG...]")
        if name in labs:
            raise StackError(f"--lab {name}=... given twice")
        labs[name] = files.split()
    return labs


def run(args) -> int:
    try:
        hosts = make_hosts(args.hosts, parse_labs(args.lab))
        text = render(hosts, "STACK_FILE" if args.output == "-" else os.path.basename(args.output))
    except StackError as err:
        print(f"xenlab swarm-stack: {err}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w") as f:
            f.write(text)
    except OSError as err:
        print(f"xenlab swarm-stack: cannot write {args.output}: {err.strerror}", file=sys.stderr)
        return 1
    print(f"xenlab swarm-stack: wrote {args.output} ({len(hosts)} hosts); deploy with "
          + " ".join(f"{h.var}_ADDR=..." for h in hosts)
          + f" docker stack deploy -c {args.output} xenlab", file=sys.stderr)
    return 0
