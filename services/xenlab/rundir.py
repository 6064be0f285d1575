"""The rundir: what a running lab's processes share on the host.

It holds the hypervisor's address and Domain-0's secret, the doorbell,
veth, bridge and agent sockets, the lab's state and every service's log.
Whoever can write in it can become Domain-0 (an address planted there is
where the toolstack sends the secret), so it is the host's boundary
(SECURITY.md), and this module is the one place that touches it:

* the directory belongs to the user running the lab, is mode 0700 and is
  never reached through a symlink; one that exists and is not is refused,
  never repaired (it is someone else's, or was made by something else);
* files are created with O_EXCL and O_NOFOLLOW, mode 0600, or written to a
  temporary name and renamed over the old one (those rewritten while
  running, so that a reader never sees one half written);
* readers check the same before believing a file: a regular file, not a
  symlink, owned by them;
* sockets are bound under umask 077 and then chmod-ed 0600, so no other
  user can connect even for the instant between bind and chmod.

It also records which processes run the lab, each by pid *and* start time
(proc(5): /proc/PID/stat field 22), so that a lab whose processes were
killed is recognised as gone, and a pid reused since is not taken for the
lab's.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

ADDRESS = "hypervisor.addr"        # the hypervisor's gRPC address, one line
SECRET = "dom0.secret"             # Domain-0's credentials (the toolstack's)
HYPERVISOR = "hypervisor.json"     # the hypervisor's process and memory segments
DOMAINS_DIR_PREFIX = "xenlab-domains-"   # launcher.DomainsDir's directories
XENSTORED = "xenstored"            # xenstored's socket's directory, as $XENSTORED_RUNDIR
LAB = "lab.json"                   # the lab runner's state and processes
UP_LOG = "up.log"                  # `xenlab up --detach`'s output
LOGS = "logs"                      # every service's log, every domain's console
DOORBELL = "evtchn.sock"
# What a lab leaves in its rundir besides sockets: what clean() removes.
FILES = (ADDRESS, SECRET, HYPERVISOR, LAB, UP_LOG)
TEMP_PREFIX = ".tmp-"

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


class RundirError(OSError):
    """The rundir cannot be used; the message says why and what to do."""

    def __init__(self, err: int, message: str):
        super().__init__(err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RundirMissing(RundirError, FileNotFoundError):
    """No rundir, or not the file asked for: nothing runs there."""


class RundirUnsafe(RundirError, PermissionError):
    """Not the caller's, open to others, or a symlink: refused."""


def default_rundir(env: Mapping[str, str] | None = None) -> Path:
    """Of ``env`` (this process's environment by default): $XENLAB_RUNDIR, else $XDG_RUNTIME_DIR/xenlab (the per-user runtime
    directory the XDG Base Directory spec defines for sockets), else
    /tmp/xenlab-UID. A $XDG_RUNTIME_DIR that is not the caller's own
    private directory (as after `sudo -E`) is passed over, as the spec asks
    of one that fails its requirements."""
    env = os.environ if env is None else env
    if env.get("XENLAB_RUNDIR"):
        return Path(env["XENLAB_RUNDIR"])
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/") and _private_dir(Path(runtime)):
        return Path(runtime) / "xenlab"
    return Path(f"/tmp/xenlab-{os.getuid()}")


def short_tempdir(prefix: str = "xl-") -> Path:
    """A new private directory under /tmp (mkdtemp: mode 0700, the
    caller's), short enough that the unix socket paths a lab puts in it stay
    under sun_path's 108 bytes, as a deep $TMPDIR might not."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _private_dir(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


# -- the processes of a lab ------------------------------------------------------------------
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot, or None when it
    is gone or a zombie (killed, not yet reaped: it runs no more)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) is in parentheses and may hold spaces or parentheses.
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessRecord:
    """One process of a lab, as recorded in its rundir."""
    pid: int
    start: int          # /proc/PID/stat starttime
    boot: str = ""      # the boot it ran in: pids start over at each boot
    pidns: int = 0      # the pid namespace its pid means something in

    @classmethod
    def of(cls, pid: int | None = None) -> "ProcessRecord":
        pid = os.getpid() if pid is None else pid
        start = _start_time(pid)
        if start is None:
            raise ProcessLookupError(errno.ESRCH, f"process {pid} is gone")
        return cls(pid, start, _boot_id(), _pid_namespace())

    @property
    def local(self) -> bool:
        """Whether its pid means the same process here (same boot, same pid namespace)."""
        return (not self.boot or self.boot == _boot_id()) and \
            (not self.pidns or self.pidns == _pid_namespace())

    def running(self) -> bool:
        """Whether this very process still runs. One of another boot is
        gone. One of another pid namespace (a container's) cannot be looked
        at from here, so it counts as running: never clean what may be in
        use."""
        if self.boot and self.boot != _boot_id():
            return False
        if self.pidns and self.pidns != _pid_namespace():
            return True
        return _start_time(self.pid) == self.start

    def signal(self, sig: int) -> bool:
        """Send `sig` if this process still runs; False if it is gone (or
        of another pid namespace, where its pid names someone else here).
        The pid is pinned (pidfd_open) before its start time is checked, so
        a pid reused in between is never signalled."""
        if not self.local:
            return False
        try:
            fd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            fd = None
        try:
            if not self.running():
                return False
            if fd is None:
                os.kill(self.pid, sig)
            else:
                signal.pidfd_send_signal(fd, sig)
            return True
        except ProcessLookupError:
            return False
        finally:
            if fd is not None:
                os.close(fd)

    def to_json(self) -> dict:
        return {"pid": self.pid, "start": self.start, "boot": self.boot, "pidns": self.pidns}

    @classmethod
    def from_json(cls, data) -> "ProcessRecord | None":
        try:
            return cls(int(data["pid"]), int(data["start"]), str(data.get("boot", "")),
                       int(data.get("pidns", 0)))
        except (TypeError, KeyError, ValueError):
            return None


@dataclass
class Survey:
    """What a rundir says runs there, checked against the processes."""
    lab: dict | None                                  # lab.json
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    running: dict[str, ProcessRecord] = field(default_factory=dict)
    # An address nobody recorded: written by hand (docs/COMPOSE.md's host
    # rundir) or by a hypervisor that records nothing. Never cleaned.
    unrecorded_address: bool = False

    @property
    def name(self) -> str:
        return str((self.lab or {}).get("name") or "")

    @property
    def stale(self) -> bool:
        """Processes were recorded and every one of them is gone."""
        return bool(self.processes) and not self.running

    def describe(self) -> str:
        """`lab NAME (process N)` or `a hypervisor (process N)`."""
        if self.lab is not None:
            runner = self.processes.get("runner")
            return f"lab {self.name or '?'}" + (f" (process {runner.pid})" if runner else "")
        hv = self.processes.get("hypervisor")
        return "a hypervisor" + (f" (process {hv.pid})" if hv else "")


@dataclass
class Cleaned:
    """What clean() removed."""
    entries: int = 0
    segments: int = 0
    segment_bytes: int = 0

    def __str__(self) -> str:
        out = f"removed {self.entries} file(s) and socket(s)"
        if self.segments:
            out += f" and {self.segments} memory segment(s) ({self.segment_bytes >> 20} MiB)"
        return out


# -- the rundir -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rundir:
    """A lab's rundir, and every rule about what is in it."""
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).absolute())

    @property
    def address_file(self) -> Path:
        return self.path / ADDRESS

    @property
    def dom0_secret_file(self) -> Path:
        return self.path / SECRET

    @property
    def hypervisor_file(self) -> Path:
        return self.path / HYPERVISOR

    @property
    def state_file(self) -> Path:
        return self.path / LAB

    @property
    def up_log(self) -> Path:
        return self.path / UP_LOG

    @property
    def doorbell(self) -> Path:
        return self.path / DOORBELL

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    @property
    def xenstored_socket(self) -> Path:
        """xenstored's wire protocol, for Xen's tools: XENSTORED_PATH (or
        XENSTORED_RUNDIR=its directory, as libxenstore appends "/socket")."""
        return self.path / XENSTORED / "socket"

    def socket(self, name: str) -> Path:
        return self.path / name

    def agent_socket(self, domid: int) -> Path:
        """A guest agent's socket, unless its launcher chose an address."""
        return self.path / f"agent-d{domid}.sock"

    # -- the directory ------------------------------------------------------------------
    def create(self) -> bool:
        """Make the rundir if missing, mode 0700 whatever the umask; check
        it either way. True if this call made it. Its parents, when
        missing, are made as mkdir -p would: a rundir the user names sits
        where the user chose."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        made = _mkdir_private(self.path)
        self.check()
        return made

    def check(self) -> None:
        """Refuse a rundir that is not the caller's private directory."""
        self._check_dir(self.path)

    @contextlib.contextmanager
    def lock(self):
        """Held while a lab claims the rundir or cleans it (flock on the
        directory): two `xenlab up` at once cannot both find it free."""
        self.check()
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | OPEN_FLAGS)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _check_dir(self, path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise RundirMissing(errno.ENOENT, f"{path} does not exist") from None
        if stat.S_ISLNK(st.st_mode):
            raise RundirUnsafe(errno.ELOOP, f"{path} is a symlink: refusing to use it as a "
                                            f"rundir (remove it, or pass another --rundir)")
        if not stat.S_ISDIR(st.st_mode):
            raise RundirUnsafe(errno.ENOTDIR, f"{path} is not a directory: refusing to use it "
                                              f"as a rundir (pass another --rundir)")
        if st.st_uid != os.geteuid():
            raise RundirUnsafe(errno.EPERM, f"{path} is owned by uid {st.st_uid}, not by you "
                                            f"(uid {os.geteuid()}): refusing to use it as a "
                                            f"rundir (remove it, or pass another --rundir)")
        if st.st_mode & 0o077:
            raise RundirUnsafe(errno.EPERM, f"{path} is mode {stat.S_IMODE(st.st_mode):04o}, "
                                            f"not 0700: refusing to use it as a rundir "
                                            f"(chmod 700 it, or pass another --rundir)")

    # -- files --------------------------------------------------------------------------
    def write_file(self, name: str, text: str, replace: bool = True) -> Path:
        """Write a file of the rundir, mode 0600. replace: atomically over
        the old one (a reader sees the old file or the new, whole);
        otherwise it must not exist yet (O_EXCL: FileExistsError)."""
        path = self.path / name
        data = text.encode()
        if not replace:
            with os.fdopen(self.open_new(name), "wb") as f:
                f.write(data)
            return path
        # mkstemp: O_EXCL, mode 0600, a fresh random name in the same directory.
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    def open_new(self, name: str) -> int:
        """A descriptor appending to NAME, a file this call creates (mode
        0600; FileExistsError if there is one); the caller closes it."""
        return os.open(self.path / name,
                       os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | OPEN_FLAGS, PRIVATE_FILE)

    def open_read(self, name: str) -> int:
        """A descriptor reading NAME, once checked as read_file checks."""
        path = self.path / name
        fd = os.open(path, os.O_RDONLY | OPEN_FLAGS)
        try:
            _check_own_file(os.fstat(fd), path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read_file(self, name: str, private: bool = False) -> str | None:
        """A file of the rundir, or None if it is missing. Refused if the
        rundir or the file is not the caller's, or others may write it
        (private: or read it)."""
        self.check()
        path = self.path / name
        try:
            fd = os.open(path, os.O_RDONLY | OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RundirUnsafe(errno.ELOOP, f"{path} is a symlink: refusing to read it") from None
            raise
        with os.fdopen(fd, "rb") as f:
            _check_own_file(os.fstat(f.fileno()), path, private)
            return f.read().decode(errors="replace")

    def open_log(self, name: str) -> int:
        """A descriptor appending to logs/NAME, created 0600 if missing (and
        logs/, 0700); the caller closes it."""
        self.check()
        _mkdir_private(self.logs)
        self._check_dir(self.logs)
        path = self.logs / name
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | OPEN_FLAGS, PRIVATE_FILE)
        try:
            _check_own_file(os.fstat(fd), path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def create_log(self, name: str) -> Path:
        """logs/NAME, made (0600) for a writer that opens it by path."""
        os.close(self.open_log(name))
        return self.logs / name

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / name)

    # -- the hypervisor ---------------------------------------------------------------
    def record_hypervisor(self, shm_prefix: Path, domains_dir: Path | None = None) -> None:
        """Before it makes any memory segment: its process, the prefix of
        its segments' paths and its domains' directory (launcher.DomainsDir,
        outside the rundir), so that what a killed hypervisor leaves can be
        found. Refused while another hypervisor runs here."""
        current = self._record(HYPERVISOR, "process")
        if current is not None and current.pid != os.getpid() and current.running():
            raise RundirError(errno.EBUSY, f"a hypervisor (process {current.pid}) is already "
                                           f"running with rundir {self.path}")
        self.write_file(HYPERVISOR, json.dumps({
            "process": ProcessRecord.of().to_json(), "shm": str(shm_prefix),
            "domains": str(domains_dir) if domains_dir else ""}, indent=2) + "\n")

    def publish_hypervisor(self, address: str, secret: str) -> None:
        """Leave the address and Domain-0's secret for the toolstack. The
        address goes last: its presence says the hypervisor is ready."""
        self.write_file(SECRET, secret + "\n")
        self.write_file(ADDRESS, address + "\n")

    def withdraw_hypervisor(self) -> None:
        for name in (ADDRESS, SECRET, HYPERVISOR):
            self.remove(name)

    def address_ready(self) -> str | None:
        """The hypervisor's address once it is published; None before (an
        empty file is not an address)."""
        try:
            text = self.read_file(ADDRESS)
        except RundirMissing:
            return None
        address = (text or "").strip()
        return address or None

    def read_address(self) -> str:
        address = self._read_published(ADDRESS)
        if address is None:
            raise self._nothing_running()
        return address

    def read_dom0_secret(self) -> str:
        secret = self._read_published(SECRET, private=True)
        if secret is None:
            raise RundirMissing(errno.ENOENT, f"{self.dom0_secret_file} is missing: is the "
                                              f"hypervisor running with this rundir?")
        return secret

    def _read_published(self, name: str, private: bool = False) -> str | None:
        try:
            text = self.read_file(name, private)
        except RundirMissing:
            raise self._nothing_running() from None
        return (text or "").strip() or None

    def _nothing_running(self) -> RundirMissing:
        return RundirMissing(errno.ENOENT, f"no lab is running in {self.path} (start one with "
                                           f"`xenlab up`, or pass --rundir)")

    # -- the lab ----------------------------------------------------------------------
    def read_state(self) -> dict | None:
        """lab.json, or None when no lab runner recorded one."""
        try:
            text = self.read_file(LAB)
        except RundirMissing:
            return None
        try:
            state = json.loads(text) if text else None
        except ValueError:
            return None
        return state if isinstance(state, dict) else None

    def write_state(self, state: dict, first: bool = False) -> None:
        """first: the runner claims the rundir; it fails (FileExistsError)
        if another runner has claimed it since the caller looked."""
        self.write_file(LAB, json.dumps(state, indent=2) + "\n", replace=not first)

    # -- what runs here, and what a lab that was killed left ------------------------------
    def _record(self, name: str, key: str) -> ProcessRecord | None:
        try:
            data = json.loads(self.read_file(name) or "null")
        except (ValueError, RundirMissing):
            return None
        return ProcessRecord.from_json(data.get(key)) if isinstance(data, dict) else None

    def survey(self) -> Survey:
        """Which of the processes recorded here still run."""
        lab = self.read_state()
        processes: dict[str, ProcessRecord] = {}
        for name, data in ((lab or {}).get("processes") or {}).items():
            record = ProcessRecord.from_json(data)
            if record is not None:
                processes[name] = record
        hypervisor = self._record(HYPERVISOR, "process")
        if hypervisor is not None:
            processes.setdefault("hypervisor", hypervisor)
        survey = Survey(lab, processes, {n: p for n, p in processes.items() if p.running()})
        survey.unrecorded_address = hypervisor is None and os.path.lexists(self.address_file)
        return survey

    def clean(self, keep: tuple[str, ...] = (), remove_dir: bool = False) -> Cleaned:
        """Remove what a lab leaves here: its files, sockets and logs
        (logs/*.log, *.console), and the memory segments its hypervisor
        recorded; then the rundir itself if remove_dir and it is empty.
        Only when none of its processes run (survey()): a running
        hypervisor's memory is not for taking. Anything else is left alone."""
        self.check()
        cleaned = Cleaned()
        shm = self._shm_prefix()
        if shm is not None:
            for path in shm.parent.glob(glob_escape(shm.name) + "*"):
                try:
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                        os.unlink(path)
                        cleaned.segments += 1
                        cleaned.segment_bytes += st.st_size
                except OSError:
                    pass
        domains = self._recorded_path("domains")
        if domains is not None and domains.name.startswith(DOMAINS_DIR_PREFIX):
            with contextlib.suppress(OSError):
                st = os.lstat(domains)
                if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                    shutil.rmtree(domains)
                    cleaned.entries += 1
        for entry in os.scandir(self.path):
            if entry.name in keep:
                continue
            if entry.name == LOGS and entry.is_dir(follow_symlinks=False):
                cleaned.entries += _remove_entries(entry.path, _is_log)
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)
            elif entry.name == XENSTORED and entry.is_dir(follow_symlinks=False):
                cleaned.entries += _remove_entries(entry.path, _is_lab_entry)
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)
            elif _is_lab_entry(entry):
                cleaned.entries += _remove_entries(self.path, lambda e, name=entry.name: e.name == name)
        if remove_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)
        return cleaned

    def _shm_prefix(self) -> Path | None:
        return self._recorded_path("shm")

    def _recorded_path(self, key: str) -> Path | None:
        try:
            data = json.loads(self.read_file(HYPERVISOR) or "null")
        except (ValueError, RundirMissing):
            return None
        value = data.get(key) if isinstance(data, dict) else None
        return Path(value) if isinstance(value, str) and value.startswith("/") else None


def _is_lab_entry(entry: os.DirEntry) -> bool:
    try:
        return (entry.name in FILES or entry.name.startswith(TEMP_PREFIX)
                or stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode))
    except FileNotFoundError:
        return False


def _is_log(entry: os.DirEntry) -> bool:
    """A service's log or a domain's console: what a lab writes in logs/."""
    return entry.name.endswith((".log", ".console")) and not entry.is_dir(follow_symlinks=False)


def _remove_entries(directory: str | Path, which) -> int:
    removed = 0
    for entry in os.scandir(directory):
        if which(entry):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


def _mkdir_private(path: Path) -> bool:
    """mkdir, then exactly 0700 whatever the umask; False if it existed."""
    try:
        os.mkdir(path, PRIVATE_DIR)
    except FileExistsError:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | OPEN_FLAGS)
    try:
        os.fchmod(fd, PRIVATE_DIR)
    finally:
        os.close(fd)
    return True


def _check_own_file(st: os.stat_result, path: Path, private: bool = False) -> None:
    """A file to believe: regular, the caller's, writable by nobody else;
    private: readable by nobody else either (a secret)."""
    if not stat.S_ISREG(st.st_mode):
        raise RundirUnsafe(errno.EINVAL, f"{path} is not a regular file: refusing to use it")
    if st.st_uid != os.geteuid():
        raise RundirUnsafe(errno.EPERM, f"{path} is owned by uid {st.st_uid}, not by you "
                                        f"(uid {os.geteuid()}): refusing to use it")
    if st.st_mode & (0o077 if private else 0o022):
        raise RundirUnsafe(errno.EPERM, f"{path} is mode {stat.S_IMODE(st.st_mode):04o}: "
                                        f"refusing to use it (chmod 600 it)")


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


# -- sockets ----------------------------------------------------------------------------------
@contextlib.contextmanager
def private_umask():
    """Files and sockets made inside are 0600 at most, from the first
    instant. For binds done by a library (gRPC binds its own unix sockets
    in add_insecure_port). The umask is the process's: another thread's
    file made meanwhile only comes out stricter."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def bind_private(sock: socket.socket, path: str) -> None:
    """Bind a unix socket that only its owner may connect to."""
    with private_umask():
        sock.bind(path)
    os.chmod(path, PRIVATE_FILE)
