"""Launchers: how a created domain gets a process to run in.

`Launcher` is the interface; `LocalLauncher` runs the domain kernel
(`python -m xenlab.domain`) as a child process; `NoLauncher` creates the
domain without a process (the toolstack or a test then acts for it with the
secret that Create returns); `DockerLauncher` (docker_launcher.py) runs it
as a container.

The domain's start_info (its id, secret and where the hypervisor is) goes to
the process on its standard input, so that the secret never shows up in
`ps` or the environment.
"""
from __future__ import annotations

import abc
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

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
    store_gfn: int = 0       # the xenstore ring page (start_info's store_mfn)
    store_port: int = 0      # its event channel (store_evtchn); 0: no ring, use gRPC

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "StartInfo":
        data = json.loads(text)
        fields = cls.__dataclass_fields__.values()
        return cls(**{f.name: data[f.name] for f in fields
                      if f.name in data or f.default is dataclasses.MISSING})


class DomainProcess(abc.ABC):
    """A running domain as its launcher sees it."""

    pid: int = 0

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

    @abc.abstractmethod
    async def start(self, info: StartInfo) -> DomainProcess | None:
        """Start the domain; None when this launcher gives it no process."""

    async def close(self) -> None:
        pass


class NoLauncher(Launcher):
    name = "none"

    async def start(self, info: StartInfo) -> None:
        return None


class LocalProcess(DomainProcess):
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.pid = proc.pid

    async def wait(self) -> int:
        return await self.proc.wait()

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
    """Runs each domain as a local asyncio process of the domain kernel."""

    name = "local"

    def __init__(self, python: str = sys.executable, log_level: str = "INFO"):
        self.python = python
        self.log_level = log_level

    async def start(self, info: StartInfo) -> DomainProcess:
        console = open(info.console_log, "ab", buffering=0)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "xenlab.domain", "--log-level", self.log_level,
                stdin=asyncio.subprocess.PIPE, stdout=console, stderr=console,
                start_new_session=True)
        finally:
            console.close()
        proc.stdin.write(info.to_json().encode() + b"\n")
        await proc.stdin.drain()
        proc.stdin.close()
        log.info("d%d (%s): started process %d", info.domid, info.name, proc.pid)
        return LocalProcess(proc)


def make_launcher(name: str, log_level: str = "INFO", docker=None) -> Launcher:
    """`docker`: the DockerConfig for the docker launcher (defaults if None)."""
    if name == "local":
        return LocalLauncher(log_level=log_level)
    if name == "none":
        return NoLauncher()
    if name == "docker":
        from xenlab.hypervisor.docker_launcher import DockerConfig, DockerLauncher
        return DockerLauncher(dataclasses.replace(docker or DockerConfig(), log_level=log_level))
    raise ValueError(f"unknown launcher {name!r}: expected local, docker or none")
