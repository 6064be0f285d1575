"""Where domains live on the host: the uids they run as (DomainUids) and
the directory of their own endpoints (DomainsDir).

When the hypervisor runs as root, each domU runs behind the host's own
walls: domain D runs as uid BASE+D, and the only files it can reach are in
its own directory of the DomainsDir.
"""
from __future__ import annotations

import argparse
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from xenlab.rundir import DOMAINS_DIR_PREFIX

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
