"""Launchers: how a created domain gets a process to run in.

`Launcher` is the interface; `LocalLauncher` runs the domain kernel
(`python -m xenlab.domain`) as a child process; `NoLauncher` creates the
domain without a process (the toolstack or a test then acts for it with the
secret that Create returns); `DockerLauncher` (docker_launcher.py) runs it
as a container.

The domain's start_info (its id, secret and where the hypervisor is) goes to
the process on its standard input, so that the secret never shows up in
`ps` or the environment.

When the hypervisor runs as root, the local launcher puts each domU behind
the host's own walls (DomainUids): domain D runs as uid BASE+D, its memory
object and its doorbell are handed to it as open descriptors (it is told no
path it could change to reach another domain's), and the only files it can
reach are in its own directory of the DomainsDir. The process starts as the
launcher's user, maps its memory, then drops to its uid for good before it
reads any untrusted input (xenlab.domain.__main__).
"""
from __future__ import annotations

import abc
import argparse
import asyncio
import dataclasses
import json
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xenlab.rundir import DOMAINS_DIR_PREFIX

log = logging.getLogger(__name__)

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class StartInfo:
    """What a domain process needs to boot, as Xen's start_info page."""
    domid: int
    name: str
    secret: str
    hypervisor: str          # gRPC address
    doorbell: str            # unix socket path ("" when none)
    vcpus: int
    console_log: str         # where the launcher sends the domain's stdout/stderr
    agent: str = ""          # where the guest agent listens; "" lets the domain choose
    agent_token: str = ""    # what callers of the guest agent must present (the toolstack has it)
    # Descriptors the launcher handed over (-1: none; the domain opens paths).
    memory_fd: int = -1      # the domain's memory object
    doorbell_fd: int = -1    # a connected doorbell socket
    # The ids the process drops to once its memory is mapped (-1: stay as started).
    uid: int = -1
    gid: int = -1
    groups: list[int] = field(default_factory=list)
    store_gfn: int = 0       # the xenstore ring page (start_info's store_mfn)
    store_port: int = 0      # its event channel (store_evtchn); 0: no ring, use gRPC

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "StartInfo":
        data = json.loads(text)
        fields = cls.__dataclass_fields__.values()
        required = (dataclasses.MISSING, dataclasses.MISSING)
        return cls(**{f.name: data[f.name] for f in fields
                      if f.name in data or (f.default, f.default_factory) == required})


UNIX_PATH_MAX = 107         # sun_path is 108 bytes with its NUL
AUTO = "auto"


@dataclass(frozen=True)
class DomainUids:
    """The host ids domUs run as: a range reserved for them, as subordinate
    ids are (subuid(5)). Domain D runs as uid and gid ``base + D``; ``base``
    itself, never a domU's (domid 0 is Domain-0's, which stays privileged),
    is the group of every domU, the only one that may reach the hypervisor's
    socket for domains."""
    base: int
    count: int

    DEFAULT_BASE = 2_000_000_000
    DEFAULT_COUNT = 65536

    @property
    def group(self) -> int:
        return self.base

    def uid(self, domid: int) -> int:
        if not 0 < domid < self.count:
            raise ValueError(f"d{domid} is outside the {self.count} domain uids "
                             f"{self.base}..{self.base + self.count - 1}")
        return self.base + domid


def parse_domain_uids(text: str, euid: int | None = None) -> DomainUids | None:
    """``--domain-uids``: "auto" (a range of its own when running as root,
    else none), "off", or BASE:COUNT."""
    text = text.strip().lower()
    euid = os.geteuid() if euid is None else euid
    if text == AUTO:
        return DomainUids(DomainUids.DEFAULT_BASE, DomainUids.DEFAULT_COUNT) if euid == 0 else None
    if text in ("off", "none", "no"):
        return None
    base, sep, count = text.partition(":")
    if not (sep and base.isascii() and base.isdigit() and count.isascii() and count.isdigit()):
        raise ValueError(f"domain uids {text!r}: expected auto, off or BASE:COUNT (e.g. "
                         f"{DomainUids.DEFAULT_BASE}:{DomainUids.DEFAULT_COUNT})")
    uids = DomainUids(int(base), int(count))
    if uids.base < 1000 or uids.count < 2 or uids.base + uids.count > 2**32 - 2:
        raise ValueError(f"domain uids {text!r}: the range must lie between 1000 and 2^32-2 "
                         f"and hold at least 2 ids")
    if euid != 0:
        raise ValueError("domain uids need root: only root may run processes as other users "
                         "(use --domain-uids off)")
    return uids


def add_domain_uids_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--domain-uids", type=_domain_uids, default=AUTO, metavar="BASE:COUNT|auto|off",
        help="host uids the local launcher runs domUs as: domain D as BASE+D, so that the OS "
             "keeps domains apart (needs root). auto (the default): "
             f"{DomainUids.DEFAULT_BASE}:{DomainUids.DEFAULT_COUNT} when run as root, else off; "
             "pick a range no real user or subuid(5) entry has")


def _domain_uids(text: str) -> str:
    try:
        parse_domain_uids(text)     # refused at parse time, with the reason
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


class DomainsDir:
    """Where each domain's own endpoints live: the hypervisor's socket for
    domains (``hv.sock``), its doorbell for domains that are handed none
    (``evtchn.sock``: containers) and one directory per domain (``dD/``, its
    guest agent's socket). With DomainUids it is a directory outside the
    rundir (which stays the toolstack's alone, mode 0700), mode 0710 and
    group DomainUids.group, so that domUs can reach the two sockets and
    their own dD/ (mode 0700, owned by the domain's uid) and nothing else;
    without, it is the rundir itself.

    The directory is a fresh one in TMPDIR, or ``path`` (--domains-dir):
    the one the docker launcher mounts into every domain's container, a
    volume of its own that holds none of the rundir's files."""

    SOCKETS = ("hv.sock", "evtchn.sock")

    def __init__(self, rundir: Path, uids: DomainUids | None, path: Path | str | None = None):
        self.uids = uids
        self.explicit = uids is not None and path is not None
        if uids is None:
            if path is not None:
                raise ValueError(f"a domains directory ({path}) needs domain uids: without "
                                 f"them domains use the rundir")
            self.path = Path(rundir)
            self._own = False
        elif path is None:
            self.path = Path(tempfile.mkdtemp(prefix=DOMAINS_DIR_PREFIX))
            self._own = True
        else:
            self.path = Path(path)
            self._own = False
            self._take(self.path)

    @staticmethod
    def _take(path: Path) -> None:
        """An explicit directory: made if missing; if there, it must be a
        real directory of the hypervisor's user, and is emptied of what a
        predecessor left (its sockets and domain directories)."""
        try:
            path.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ValueError(f"domains directory {path}: not a directory of uid {os.geteuid()}")
        os.chmod(path, 0o700)          # open_to_domains lets the domains' group in
        for entry in path.iterdir():
            if entry.name in DomainsDir.SOCKETS:
                entry.unlink()
            elif entry.name[:1] == "d" and entry.name[1:].isdigit() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)

    @property
    def isolated(self) -> bool:
        return self.uids is not None

    @property
    def hypervisor_address(self) -> str:
        """The address domUs reach the hypervisor at; "" when they use its own."""
        return f"unix:{self.path / 'hv.sock'}" if self.isolated else ""

    @property
    def doorbell(self) -> Path:
        """The doorbell domains reach by path (the rundir's without uids)."""
        return self.path / "evtchn.sock"

    def open_to_domains(self) -> None:
        """Once the hypervisor listens on hv.sock: let the domains' group in."""
        if not self.isolated:
            return
        sock = self.path / "hv.sock"
        os.chown(sock, -1, self.uids.group)
        os.chmod(sock, 0o660)
        os.chown(self.path, -1, self.uids.group)
        os.chmod(self.path, 0o710)

    def domain_dir(self, domid: int) -> Path:
        """dD/, fresh, owned by the domain's uid where there is one."""
        path = self.path / f"d{domid}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700)
        if self.isolated:
            uid = self.uids.uid(domid)
            os.chown(path, uid, uid)
        return path

    def agent_address(self, domid: int) -> str:
        address = f"unix:{self.path / f'd{domid}' / 'agent.sock'}"
        if len(address) - len("unix:") > UNIX_PATH_MAX:
            raise ValueError(f"{address} is too long for a unix socket: use a shorter rundir or TMPDIR")
        return address

    def remove_domain_dir(self, domid: int) -> None:
        shutil.rmtree(self.path / f"d{domid}", ignore_errors=True)

    def close(self) -> None:
        if self._own:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.explicit:
            (self.path / "hv.sock").unlink(missing_ok=True)


@dataclass(frozen=True)
class DomainHandles:
    """Descriptors the hypervisor opened for a new domain, for a launcher
    that can hand them over (Launcher.takes_handles)."""
    memory_fd: int
    doorbell_fd: int


class DomainProcess(abc.ABC):
    """A running domain as its launcher sees it."""

    pid: int = 0
    agent: str = ""          # where its guest agent listens, as the launcher decided

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait for the domain to stop; its exit status (negative: killed by that signal)."""

    @abc.abstractmethod
    def pause(self) -> None: ...

    @abc.abstractmethod
    def unpause(self) -> None: ...

    @abc.abstractmethod
    async def kill(self) -> None:
        """Stop it now (xl destroy) and reap it."""

    def proc_state(self) -> str:
        return ""

    def cpu_time(self) -> float:
        return 0.0


class Launcher(abc.ABC):
    name: str = ""
    takes_handles = False    # start() hands DomainHandles over to the domain

    @abc.abstractmethod
    async def start(self, info: StartInfo, handles: DomainHandles | None = None) -> DomainProcess | None:
        """Start the domain; None when this launcher gives it no process."""

    async def close(self) -> None:
        pass


class NoLauncher(Launcher):
    name = "none"

    async def start(self, info: StartInfo, handles: DomainHandles | None = None) -> None:
        return None


class LocalProcess(DomainProcess):
    def __init__(self, proc: asyncio.subprocess.Process, agent: str = "",
                 cleanup=lambda: None):
        self.proc = proc
        self.pid = proc.pid
        self.agent = agent
        self._cleanup = cleanup

    async def wait(self) -> int:
        status = await self.proc.wait()
        self._cleanup()
        return status

    def _signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def unpause(self) -> None:
        self._signal(signal.SIGCONT)

    async def kill(self) -> None:
        self._signal(signal.SIGKILL)
        await self.proc.wait()
        self._cleanup()

    def _stat(self) -> list[str]:
        try:
            text = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return []
        # The command name (field 2) may hold spaces; fields after it are plain.
        return text[text.rindex(")") + 2:].split()

    def proc_state(self) -> str:
        fields = self._stat()
        return fields[0] if fields else ""

    def cpu_time(self) -> float:
        fields = self._stat()
        if len(fields) < 13:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK   # utime + stime


class LocalLauncher(Launcher):
    """Runs each domain as a local asyncio process of the domain kernel;
    with a DomainsDir that is isolated, each under its own uid."""

    name = "local"
    takes_handles = True

    def __init__(self, python: str = sys.executable, log_level: str = "INFO",
                 domains_dir: DomainsDir | None = None):
        self.python = python
        self.log_level = log_level
        self.domains_dir = domains_dir

    async def start(self, info: StartInfo, handles: DomainHandles | None = None) -> DomainProcess:
        pass_fds: list[int] = []
        if handles is not None:
            info = dataclasses.replace(info, memory_fd=handles.memory_fd,
                                       doorbell_fd=handles.doorbell_fd)
            pass_fds = [handles.memory_fd, handles.doorbell_fd]
        cleanup = lambda: None
        dirs = self.domains_dir
        if dirs is not None and not info.agent:
            dirs.domain_dir(info.domid)
            info = dataclasses.replace(info, agent=dirs.agent_address(info.domid))
            cleanup = lambda: dirs.remove_domain_dir(info.domid)
        if dirs is not None and dirs.isolated:
            uid = dirs.uids.uid(info.domid)
            info = dataclasses.replace(info, uid=uid, gid=uid, groups=[dirs.uids.group])
        console = open(info.console_log, "ab", buffering=0)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "xenlab.domain", "--log-level", self.log_level,
                stdin=asyncio.subprocess.PIPE, stdout=console, stderr=console,
                start_new_session=True, pass_fds=pass_fds)
        except BaseException:
            cleanup()
            raise
        finally:
            console.close()
        proc.stdin.write(info.to_json().encode() + b"\n")
        await proc.stdin.drain()
        proc.stdin.close()
        log.info("d%d (%s): started process %d%s", info.domid, info.name, proc.pid,
                 f" as uid {info.uid}" if info.uid >= 0 else "")
        return LocalProcess(proc, info.agent, cleanup)


def make_launcher(name: str, log_level: str = "INFO", docker=None,
                  domains_dir: DomainsDir | None = None, private: tuple[Path, ...] = ()) -> Launcher:
    """`docker`: the DockerConfig for the docker launcher (defaults if None);
    `domains_dir`: where domains get their own directory; `private`: the
    directories no domain may be given (the rundir, the shm dir)."""
    if name == "local":
        return LocalLauncher(log_level=log_level, domains_dir=domains_dir)
    if name == "none":
        return NoLauncher()
    if name == "docker":
        from xenlab.hypervisor.docker_launcher import DockerConfig, DockerLauncher
        return DockerLauncher(dataclasses.replace(docker or DockerConfig(), log_level=log_level),
                              domains_dir=domains_dir, private=private)
    raise ValueError(f"unknown launcher {name!r}: expected local, docker or none")
