"""Launchers: how a created domain gets a process to run in.

* ``base``: the interface (Launcher, DomainProcess, DomainHandles) and
  NoLauncher ("none": no process);
* ``local``: a child process of the domain kernel, under a uid of its own
  where the host allows it;
* ``forkserver``: the same domains, forked from a fork server that has
  imported the domain kernel once (the default for ``local``;
  ``XENLAB_FORK_SERVER=off`` spawns each one instead);
* ``docker``: a container, through the Docker SDK;
* ``domains_dir``: the uids domUs run as and the directory of their
  endpoints, which both launchers use.

The hypervisor picks one by name with ``make_launcher``. Nothing here
imports the hypervisor.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from xenlab.launchers.base import Launcher, NoLauncher
from xenlab.launchers.docker import DockerConfig, DockerLauncher
from xenlab.launchers import forkserver
from xenlab.launchers.domains_dir import DomainsDir
from xenlab.launchers.forkserver import ForkServerLauncher
from xenlab.launchers.local import LocalLauncher

NAMES = ("local", "docker", "none")


def make_launcher(name: str, log_level: str = "INFO", docker: DockerConfig | None = None,
                  domains_dir: DomainsDir | None = None, private: tuple[Path, ...] = (),
                  environ=os.environ, page_sharing: bool = False) -> Launcher:
    """`docker`: the DockerConfig for the docker launcher (defaults if None);
    `domains_dir`: where domains get their own directory; `private`: the
    directories no domain may be given (the rundir, the shm dir);
    `page_sharing`: forked domains' memory is offered to the kernel's
    samepage merging. A local domain is forked from the fork server unless
    XENLAB_FORK_SERVER=off."""
    if name == "local":
        if forkserver.enabled(environ):
            return ForkServerLauncher(log_level=log_level, domains_dir=domains_dir,
                                      page_sharing=page_sharing)
        return LocalLauncher(log_level=log_level, domains_dir=domains_dir)
    if name == "none":
        return NoLauncher()
    if name == "docker":
        return DockerLauncher(dataclasses.replace(docker or DockerConfig(), log_level=log_level),
                              domains_dir=domains_dir, private=private)
    raise ValueError(f"unknown launcher {name!r}: expected local, docker or none")
