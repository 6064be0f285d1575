"""The docker launcher: every domain is a container, started through the
Docker SDK (`launcher = "docker"` in a domain's config, or the hypervisor's
`--launcher docker`).

The container runs `xenlab domain` from the configured image as domain D's
own uid, BASE+D of the hypervisor's domain uids (as the local launcher's
processes do: one range, one scheme), in the domains' group, with no
capabilities, no_new_privs and a read-only root filesystem. It mounts only
the domains directory (--domains-dir, a volume of its own at the same path
as in the hypervisor): the hypervisor's socket for domains, the doorbell for
domains, and its own dD/. Neither the rundir (Domain-0's secret, the
toolstack's and the bridges' sockets) nor the shared-memory directory
(every domain's memory) is mounted, and the launcher refuses a volume at
either path. A container cannot be handed descriptors at start, so the
domain asks for its memory object in its doorbell HELLO and gets it with
the OK, once (xenlab.xen.doorbell); it maps it and closes it, as a local
domain does.

Its start_info goes to it on standard input through the attach stream, as
the local launcher writes it to a pipe: the secret is in no environment
variable, command line or file, so `docker inspect` does not show it.

Xen's verbs map onto Docker's: destroy removes the container, pause and
unpause freeze and thaw its cgroup, and the container exiting is the domain
shutting down or crashing (a non-zero exit status is a crash; the
toolstack applies the on_* action). A guest agent listens on one port of `agent_ports`, a
range the compose file publishes on the host's loopback, so that clients
on the host reach every domain's agent.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from xenlab import eventloop
from xenlab.launchers import tasks
from xenlab.launchers.base import DomainHandles, DomainProcess, Launcher
from xenlab.launchers.domains_dir import DomainsDir, DomainUids
from xenlab.xen.errors import DomainError, XenError
from xenlab.xen.sched import CfsValues
from xenlab.xen.start_info import StartInfo

# The Docker SDK (with requests, its transport) is imported where it is used:
# only a hypervisor that runs a domain as a container needs it, and importing
# it costs every other one 0.1-0.2 s at start.

log = logging.getLogger(__name__)

DEFAULT_URL = "unix:///var/run/docker.sock"
DEFAULT_IMAGE = "xenlab:latest"
LABEL_DOMID = "xenlab.domid"
LABEL_DOMAIN = "xenlab.domain"
LABEL_LAUNCHER = "xenlab.launcher"
STDIN_TIMEOUT = 30.0            # seconds for the container to start and take its start_info
CONSOLE_DRAIN = 2.0             # seconds to copy the last console output of a stopped domain
HEALTH_INTERVAL = 10.0          # seconds between health checks of a domain's agent
NS = 1_000_000_000              # Docker's health check durations are nanoseconds


@dataclass(frozen=True)
class DockerConfig:
    """How the docker launcher starts containers (the hypervisor's
    --docker-* options)."""
    image: str = DEFAULT_IMAGE
    url: str = DEFAULT_URL                 # the Docker daemon
    network: str = ""                      # network_mode: "container:NAME", "host", "none" or a network
    volumes: tuple[str, ...] = ()          # "VOLUME:/path[:ro]", each mounted in every domain:
                                           # the domains directory, never the rundir or shm dir
    agent_ports: tuple[int, int] | None = None   # first, last: the guest agents' TCP ports
    labels: tuple[tuple[str, str], ...] = ()
    name_prefix: str = "xenlab-"
    log_level: str = "INFO"


def parse_port_range(text: str) -> tuple[int, int]:
    """'9800-9815' (or one port) -> (9800, 9815)."""
    first, _, last = text.partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise ValueError(f"port range {text!r}: expected FIRST-LAST, e.g. 9800-9815") from None
    if not 0 < lo <= hi < 65536:
        raise ValueError(f"port range {text!r}: expected 1 <= FIRST <= LAST <= 65535")
    return lo, hi


def volume_target(spec: str) -> PurePosixPath:
    """Where "VOLUME:/path[:MODE]" mounts in the container."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise ValueError(f"volume {spec!r}: expected VOLUME:/PATH[:ro]")
    return PurePosixPath(parts[1])


def check_config(config: DockerConfig, uids: DomainUids | None, domains_dir: Path | None,
                 private: tuple[Path, ...] = ()) -> None:
    """What the launcher needs to start a domain behind its own walls;
    ValueError says what is missing. ``private``: the hypervisor's
    directories no domain may mount (the rundir, the shm dir)."""
    if uids is None:
        raise ValueError("the docker launcher runs domain D as uid BASE+D, and those reach the "
                         "hypervisor only through a domains directory of their group: it needs "
                         "domain uids (run the hypervisor as root, as the compose lab does, "
                         "with --domain-uids auto or BASE:COUNT)")
    if domains_dir is None:
        raise ValueError("the docker launcher needs --domains-dir DIR, mounted into every "
                         "domain at DIR with --docker-volume VOLUME:DIR")
    targets = [volume_target(spec) for spec in config.volumes]
    for spec, target in zip(config.volumes, targets):
        for path in private:
            path = PurePosixPath(path)
            if target == path or target in path.parents or path in target.parents:
                raise ValueError(f"--docker-volume {spec}: {target} would give every domain the "
                                 f"hypervisor's {path} (Domain-0's secret and the toolstack's "
                                 f"sockets, or every domain's memory): mount only --domains-dir")
    if PurePosixPath(domains_dir) not in targets:
        raise ValueError(f"no --docker-volume mounts the domains directory {domains_dir} into the "
                         f"domains: add --docker-volume VOLUME:{domains_dir}, VOLUME being what "
                         f"the hypervisor has at {domains_dir}")


SELF = "container:self"
MOUNTINFO = Path("/proc/self/mountinfo")
_CONTAINER_FILE = re.compile(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)\b")


def own_container_id(mountinfo: str) -> str | None:
    """The id of the container this process runs in, from its
    /proc/self/mountinfo: Docker bind-mounts /etc/hostname, /etc/hosts and
    /etc/resolv.conf from /var/lib/docker/containers/ID/ (whatever the cgroup
    version, and whatever hostname the container was given: a swarm task's
    name is not its id). None outside a Docker container."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
            found = _CONTAINER_FILE.search(fields[3])
            if found:
                return found.group(1)
    return None


def resolve_network(network: str, mountinfo: Path | None = None) -> str:
    """``container:self`` -> ``container:ID`` of the hypervisor's own
    container (a swarm service has no fixed container name to give);
    anything else as it is."""
    if network != SELF:
        return network
    try:
        found = own_container_id((mountinfo or MOUNTINFO).read_text())
    except OSError:
        found = None
    if found is None:
        raise ValueError("--docker-network container:self: the hypervisor does not run in a "
                         "Docker container (no /etc/hostname mounted from Docker's containers "
                         "directory in /proc/self/mountinfo)")
    return f"container:{found}"


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"label {text!r}: expected KEY=VALUE")
    return key, value


def add_arguments(parser) -> None:
    """The hypervisor's --docker-* options (an argparse parser)."""
    group = parser.add_argument_group("the docker launcher (--launcher docker, or launcher=\"docker\" "
                                      "in a domain's config; docs/COMPOSE.md)")
    group.add_argument("--docker-image", default=DEFAULT_IMAGE, metavar="IMAGE",
                       help=f"the image each domain runs `xenlab domain` from (default {DEFAULT_IMAGE})")
    group.add_argument("--docker-url", default=DEFAULT_URL, metavar="URL",
                       help=f"the Docker daemon (default {DEFAULT_URL})")
    group.add_argument("--docker-network", default="", metavar="MODE",
                       help="the domains' network: container:NAME (share that container's, as "
                            "the compose lab does), container:self (the hypervisor's own "
                            "container's, as the swarm stack does), host, none, or a network's "
                            "name (default: Docker's default bridge)")
    group.add_argument("--docker-volume", action="append", default=[], metavar="VOLUME:PATH",
                       help="mount VOLUME at PATH in every domain; repeat. The volume holding "
                            "--domains-dir must be mounted at that path; one at the rundir or "
                            "the --shm-dir is refused")
    group.add_argument("--docker-agent-ports", type=_argtype(parse_port_range), default=None,
                       metavar="FIRST-LAST",
                       help="each domain's guest agent listens on a TCP port of this range "
                            "(published on the host by the compose file); default: a unix socket "
                            "in the rundir")
    group.add_argument("--docker-label", action="append", type=_argtype(parse_label), default=[],
                       metavar="KEY=VALUE",
                       help="label every domain container; labels that name the lab also let a "
                            "restarted hypervisor remove the containers its predecessor left")
    group.add_argument("--docker-name-prefix", default="xenlab-", metavar="PREFIX",
                       help="containers are named PREFIXdDOMID-NAME (default xenlab-)")


def config_from_args(args) -> DockerConfig:
    return DockerConfig(image=args.docker_image, url=args.docker_url, network=args.docker_network,
                        volumes=tuple(args.docker_volume), agent_ports=args.docker_agent_ports,
                        labels=tuple(args.docker_label), name_prefix=args.docker_name_prefix,
                        log_level=args.log_level)


def _argtype(parse):
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = parse.__name__
    return convert


class AgentPorts:
    """The pool of published agent ports: the lowest free one for each new
    domain, back to the pool when its container is gone."""

    def __init__(self, first: int, last: int):
        self._free = set(range(first, last + 1))
        self.first, self.last = first, last

    def take(self) -> int:
        if not self._free:
            raise DomainError(errno.ENOSPC, f"every agent port {self.first}-{self.last} is taken: "
                                            f"widen --docker-agent-ports (and the ports the compose "
                                            f"file publishes)")
        port = min(self._free)
        self._free.discard(port)
        return port

    def give_back(self, port: int) -> None:
        if self.first <= port <= self.last:
            self._free.add(port)


def _daemon_thread(loop: asyncio.AbstractEventLoop, work: Callable[[], object]) -> asyncio.Future:
    """Run a call that may block for the container's whole life in a daemon
    thread (not the loop's executor, which asyncio.run joins at exit)."""
    future = loop.create_future()

    def run() -> None:
        try:
            result = work()
        except BaseException as err:      # handed to the awaiting task
            loop.call_soon_threadsafe(_settle, future, None, err)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=run, daemon=True, name="docker-wait").start()
    return future


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _exit_status(code: int) -> int:
    """Docker reports death by signal N as 128+N; the launcher interface
    says -N, as asyncio's returncode does."""
    return -(code - 128) if 128 < code < 160 else code


class DockerDomain(DomainProcess):
    """A domain's container."""

    def __init__(self, launcher: "DockerLauncher", container, agent_port: int, console_log: str,
                 agent: str = ""):
        self.launcher = launcher
        self.container = container
        self.agent_port = agent_port
        self.agent = agent
        self.pid = int(container.attrs.get("State", {}).get("Pid") or 0)
        self._cpu_ns = 0
        # The container's pid is the host's, not necessarily in our
        # namespace (the compose lab's hypervisor is a container): its CPU
        # time comes from Docker's stats stream, read off the event loop.
        threading.Thread(target=self._follow_stats, daemon=True, name="docker-stats").start()
        self._console: threading.Thread | None = None
        if console_log:
            self._console = threading.Thread(target=self._follow_console, args=(console_log,),
                                             daemon=True, name="docker-console")
            self._console.start()
        self._exited = _daemon_thread(asyncio.get_running_loop(), self._wait_blocking)

    @property
    def name(self) -> str:
        return self.container.name

    def _wait_blocking(self) -> int:
        """Wait for the container to stop, then remove it: a domain that
        stopped is gone from Docker as a process is from the process table
        (its console log stays in the rundir, its state in the hypervisor)."""
        from docker.errors import DockerException, NotFound  # lazy: the Docker SDK
        try:
            status = _exit_status(int(self.container.wait().get("StatusCode", -1)))
        except NotFound:               # removed before the wait began: destroyed
            return -9
        except Exception as err:       # the daemon went away: the domain's fate is unknown
            log.error("%s: lost the container: %s", self.name, err)
            return -1
        if self._console is not None:
            self._console.join(CONSOLE_DRAIN)
        try:
            self.container.remove(force=True)
        except DockerException as err:     # NotFound: destroy removed it first
            if not isinstance(err, NotFound):
                log.warning("%s: could not remove the container: %s", self.name, err)
        return status

    def _follow_console(self, path: str) -> None:
        """`xl console` reads the console log: copy the container's output
        there for as long as it runs."""
        from docker.errors import DockerException  # lazy: the Docker SDK
        try:
            with open(path, "ab", buffering=0) as console:
                for chunk in self.container.logs(stream=True, follow=True):
                    console.write(chunk)
        except (DockerException, OSError) as err:
            log.debug("%s: console stream ended: %s", self.name, err)

    def _follow_stats(self) -> None:
        """Keep the container cgroup's CPU time as Docker samples it (about
        once a second) for as long as the container runs."""
        try:
            for sample in self.container.stats(stream=True, decode=True):
                usage = ((sample or {}).get("cpu_stats") or {}).get("cpu_usage") or {}
                if usage.get("total_usage"):
                    self._cpu_ns = int(usage["total_usage"])
        except Exception as err:       # the daemon or the container went: the last sample stays
            log.debug("%s: stats stream ended: %s", self.name, err)

    def cpu_time(self) -> float:
        """Seconds of CPU the container has used, as `docker stats` counts it."""
        return self._cpu_ns / 1e9

    # -- the host scheduler's view --------------------------------------------------
    def _visible(self) -> bool:
        """Whether State.Pid is this container's process in our PID
        namespace (the compose lab's hypervisor is itself a container:
        there a host pid names someone else, or no one)."""
        try:
            return self.pid > 0 and self.container.id in Path(f"/proc/{self.pid}/cgroup").read_text()
        except OSError:
            return False

    def vcpu_tasks(self):
        if not self._visible():
            raise XenError(errno.EOPNOTSUPP, f"{self.name}: the container's threads are not "
                                             f"visible from the hypervisor's PID namespace")
        return tasks.vcpu_tasks(self.pid)

    def set_affinity(self, tids, cpus) -> None:
        self.vcpu_tasks()      # refuses where the threads are not ours to see
        for tid in tids:
            tasks.set_affinity(tid, cpus)

    def set_credit(self, cfs: CfsValues) -> dict[str, str]:
        """Docker's own knobs on the container's cgroup (v1 shares and CFS
        quota; on a v2 host runc turns shares into cpu.weight)."""
        from docker.errors import APIError, NotFound  # lazy: the Docker SDK
        settings = dict(cpu_shares=cfs.v1_shares, cpu_period=cfs.v1_period_us,
                        cpu_quota=cfs.v1_quota_us)      # -1: no quota, as runc reads it
        try:
            self.container.update(**settings)
        except (APIError, NotFound) as err:
            raise XenError(errno.EIO, f"{self.name}: docker update failed: {err}") from None
        return {f"docker:{self.name}:{key}": str(value) for key, value in settings.items()}

    async def wait(self) -> int:
        status = await asyncio.shield(self._exited)
        self.launcher.agent_port_free(self.agent_port)
        return status

    # Pause and unpause are synchronous in the launcher interface, as
    # SIGSTOP/SIGCONT are: one short daemon call, done when xl pause returns.
    def pause(self) -> None:
        self._call("pause")

    def unpause(self) -> None:
        self._call("unpause")

    def _call(self, verb: str) -> None:
        from docker.errors import APIError, NotFound  # lazy: the Docker SDK
        try:
            getattr(self.container, verb)()
        except NotFound:
            pass
        except APIError as err:
            log.warning("%s: docker %s failed: %s", self.name, verb, err.explanation)

    async def kill(self) -> None:
        from docker.errors import APIError, NotFound  # lazy: the Docker SDK
        try:
            await asyncio.to_thread(self.container.remove, force=True)
        except NotFound:
            pass
        except APIError as err:
            log.warning("%s: could not remove the container: %s", self.name, err.explanation)
        try:
            await eventloop.wait_for(asyncio.shield(self._exited), STDIN_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("%s: still not gone after removal", self.name)
        self.launcher.agent_port_free(self.agent_port)


class DockerLauncher(Launcher):
    """Starts each domain as a container of `config.image`."""

    name = "docker"

    def __init__(self, config: DockerConfig, client=None, domains_dir: DomainsDir | None = None,
                 private: tuple[Path, ...] = ()):
        """``domains_dir``: the hypervisor's (its uids and its path);
        ``private``: the directories no domain may mount."""
        self.config = config
        self.domains_dir = domains_dir
        self.private = tuple(private)
        self._client = client
        self._ports = AgentPorts(*config.agent_ports) if config.agent_ports else None
        self._reaped = False
        self._lock = asyncio.Lock()

    @property
    def client(self):
        if self._client is None:
            import docker  # lazy: the Docker SDK
            try:
                self._client = docker.DockerClient(base_url=self.config.url)
            except docker.errors.DockerException as err:
                raise DomainError(errno.EHOSTDOWN, f"docker launcher: cannot reach the Docker "
                                                   f"daemon at {self.config.url}: {err}") from None
        return self._client

    def _labels(self, info: StartInfo) -> dict[str, str]:
        labels = dict(self.config.labels)
        labels.update({LABEL_LAUNCHER: "docker", LABEL_DOMID: str(info.domid),
                       LABEL_DOMAIN: info.name})
        return labels

    def _selector(self) -> list[str]:
        """The labels that pick this launcher's containers out of the daemon's."""
        return [f"{LABEL_LAUNCHER}=docker"] + [f"{k}={v}" for k, v in self.config.labels]

    def _reap_stale(self) -> None:
        """Containers of a hypervisor that died without destroying its
        domains: their domains are gone with it, as are their segments.
        Only with labels that name this lab (--docker-label), so that
        another lab's domains on the same daemon are never touched."""
        if not self.config.labels:
            return
        for container in self.client.containers.list(all=True, filters={"label": self._selector()}):
            log.info("removing %s, left by a hypervisor that is gone", container.name)
            try:
                container.remove(force=True)
            except Exception as err:     # best effort: a later start says what is wrong
                log.warning("could not remove %s: %s", container.name, err)

    def agent_port_free(self, port: int) -> None:
        if self._ports is not None and port:
            self._ports.give_back(port)

    def _check(self, domid: int) -> tuple[DomainsDir, int]:
        """The domains directory, and the uid domain ``domid`` runs as."""
        dirs = self.domains_dir
        try:
            check_config(self.config, dirs.uids if dirs is not None else None,
                         dirs.path if dirs is not None and dirs.explicit else None, self.private)
            return dirs, dirs.uids.uid(domid)
        except ValueError as err:
            raise DomainError(errno.EPERM, f"docker launcher: {err}") from None

    async def start(self, info: StartInfo, handles: DomainHandles | None = None) -> DockerDomain:
        from docker.errors import DockerException  # lazy: the Docker SDK
        from requests import RequestException  # lazy: the Docker SDK's transport (the daemon went away)
        dirs, uid = self._check(info.domid)
        port = 0
        try:
            async with self._lock:
                if not self._reaped:
                    await asyncio.to_thread(self._reap_stale)
                    self._reaped = True
                port = self._ports.take() if self._ports is not None else 0
            if port:
                info = dataclasses.replace(info, agent=f"0.0.0.0:{port}")
            else:
                # A unix socket in its own dD/ of the domains directory, as
                # a local domain's.
                dirs.domain_dir(info.domid)
                info = dataclasses.replace(info, agent=dirs.agent_address(info.domid))
            container = await asyncio.to_thread(self._create_and_start, info, port, uid)
        except (DockerException, RequestException) as err:
            self.agent_port_free(port)
            message = getattr(err, "explanation", None) or str(err)
            raise DomainError(errno.EIO, f"docker launcher: d{info.domid} ({info.name}): {message}") from None
        except BaseException:
            self.agent_port_free(port)
            raise
        log.info("d%d (%s): started container %s as uid %d%s", info.domid, info.name,
                 container.name, uid, f", agent on port {port}" if port else "")
        return DockerDomain(self, container, port, info.console_log, info.agent)

    def _create_and_start(self, info: StartInfo, port: int, uid: int):
        cfg = self.config
        try:
            network = resolve_network(cfg.network)
        except ValueError as err:
            raise DomainError(errno.EINVAL, f"docker launcher: {err}") from None
        command = ["domain", "--orphan-ok", "--log-level", cfg.log_level]
        kwargs = dict(
            command=command, name=f"{cfg.name_prefix}d{info.domid}-{info.name}",
            labels=self._labels(info), volumes=list(cfg.volumes),
            # The domain's own uid from its first instruction (there is no
            # root phase to drop from: its memory comes over the doorbell),
            # in the domains' group, which alone may reach the domains
            # directory's sockets; no capability, no setuid gain, and no
            # writable file outside its own dD/.
            user=f"{uid}:{uid}", group_add=[str(self.domains_dir.uids.group)],
            cap_drop=["ALL"], security_opt=["no-new-privileges"], read_only=True,
            # detach=False with stdin_open: Docker closes the domain's stdin
            # once the launcher has written its start_info and detached.
            stdin_open=True, detach=False)
        if network:
            if network in ("host", "none", "bridge") or network.startswith("container:"):
                kwargs["network_mode"] = network
            else:
                kwargs["network"] = network
        if port:
            kwargs["healthcheck"] = {
                "test": ["CMD", "xenlab", "healthcheck", f"127.0.0.1:{port}"],
                "interval": int(HEALTH_INTERVAL * NS), "timeout": 5 * NS, "retries": 3}
        container = self.client.containers.create(cfg.image, **kwargs)
        try:
            stdin = self.client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
            try:
                container.start()
                stdin._sock.settimeout(STDIN_TIMEOUT)
                stdin._sock.sendall(info.to_json().encode() + b"\n")
            finally:
                stdin.close()
            container.reload()
        except BaseException:
            container.remove(force=True)
            raise
        return container

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None
