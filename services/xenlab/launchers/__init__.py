"""Launchers: how a created domain gets a process to run in.

* ``base``: the interface (Launcher, DomainProcess, DomainHandles) and
  NoLauncher ("none": no process);
* ``local``: a child process of the domain kernel, under a uid of its own
  where the host allows it;
* ``docker``: a container, through the Docker SDK;
* ``domains_dir``: the uids domUs run as and the directory of their
  endpoints, which both launchers use.

The hypervisor picks one by name with ``make_launcher``. Nothing here
imports the hypervisor.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from xenlab.launchers.base import Launcher, NoLauncher
from xenlab.launchers.docker import DockerConfig, DockerLauncher
from xenlab.launchers.domains_dir import DomainsDir
from xenlab.launchers.local import LocalLauncher

NAMES = ("local", "docker", "none")


def make_launcher(name: str, log_level: str = "INFO", docker: DockerConfig | None = None,
                  domains_dir: DomainsDir | None = None, private: tuple[Path, ...] = ()) -> Launcher:
    """`docker`: the DockerConfig for the docker launcher (defaults if None);
    `domains_dir`: where domains get their own directory; `private`: the
    directories no domain may be given (the rundir, the shm dir)."""
    if name == "local":
        return LocalLauncher(log_level=log_level, domains_dir=domains_dir)
    if name == "none":
        return NoLauncher()
    if name == "docker":
        return DockerLauncher(dataclasses.replace(docker or DockerConfig(), log_level=log_level),
                              domains_dir=domains_dir, private=private)
    raise ValueError(f"unknown launcher {name!r}: expected local, docker or none")
