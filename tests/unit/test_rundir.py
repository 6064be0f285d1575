"""The rundir's contract (xenlab.rundir): who may use it, how its files are
made and read, how a lab's processes are recognised, and what clean()
removes. Each test is named after the break it guards against."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from xenlab.rundir import (ProcessRecord, Rundir, RundirMissing, RundirUnsafe, bind_private,
                           default_rundir)

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_000():
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def rundir(tmp_path):
    run = Rundir(tmp_path / "run")
    run.create()
    return run


def dead_process() -> ProcessRecord:
    """The record of a process that ran and is gone (reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    record = ProcessRecord.of(proc.pid)
    proc.communicate(b"")
    return record


# -- who may use it ---------------------------------------------------------------------------
def test_a_new_rundir_is_0700_and_its_logs_0700_under_umask_000(tmp_path, umask_000):
    run = Rundir(tmp_path / "a" / "run")
    assert run.create() is True
    os.close(run.open_log("x.log"))
    assert mode(run.path) == 0o700 and mode(run.logs) == 0o700
    assert run.create() is False            # exists: checked, not made


@needs_root
def test_a_rundir_owned_by_another_user_is_refused(tmp_path):
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(RundirUnsafe, match=f"owned by uid {NOBODY}, not by you"):
        Rundir(path).create()
    with pytest.raises(RundirUnsafe):
        Rundir(path).read_address()
    assert os.listdir(path) == []


def test_a_rundir_open_to_others_is_refused(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    os.chmod(path, 0o755)
    with pytest.raises(RundirUnsafe, match="mode 0755, not 0700"):
        Rundir(path).create()
    assert os.listdir(path) == []


def test_a_rundir_that_is_a_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(target)
    with pytest.raises(RundirUnsafe, match="is a symlink"):
        Rundir(tmp_path / "run").create()
    assert os.listdir(target) == []


def test_a_missing_rundir_means_nothing_runs_and_says_up(tmp_path):
    with pytest.raises(RundirMissing, match=r"no lab is running in .* \(start one with `xenlab up`"):
        Rundir(tmp_path / "none").read_address()


# -- files ------------------------------------------------------------------------------------
def test_a_planted_dom0_secret_symlink_is_not_followed(rundir, tmp_path):
    """Publishing replaces a planted link instead of writing through it, and
    a reader refuses a link it finds."""
    theirs = tmp_path / "theirs"
    theirs.write_text("")
    rundir.dom0_secret_file.symlink_to(theirs)
    with pytest.raises(RundirUnsafe, match="symlink"):
        rundir.read_dom0_secret()
    rundir.publish_hypervisor("unix:/x/hv.sock", "s3cret")
    assert theirs.read_text() == ""
    assert not rundir.dom0_secret_file.is_symlink()
    assert mode(rundir.dom0_secret_file) == 0o600
    assert rundir.read_dom0_secret() == "s3cret"


def test_a_secret_others_may_read_is_refused(rundir):
    rundir.publish_hypervisor("unix:/x/hv.sock", "s3cret")
    os.chmod(rundir.dom0_secret_file, 0o644)
    with pytest.raises(RundirUnsafe, match="mode 0644"):
        rundir.read_dom0_secret()


@needs_root
def test_a_secret_owned_by_another_user_is_refused(rundir):
    rundir.publish_hypervisor("unix:/x/hv.sock", "theirs")
    os.chown(rundir.dom0_secret_file, NOBODY, NOBODY)
    with pytest.raises(RundirUnsafe, match=f"owned by uid {NOBODY}"):
        rundir.read_dom0_secret()


def test_files_are_0600_under_umask_000(rundir, umask_000):
    rundir.publish_hypervisor("unix:/x/hv.sock", "s3cret")
    rundir.write_state({"name": "l"}, first=True)
    os.close(rundir.open_log("svc.log"))
    for path in (rundir.address_file, rundir.dom0_secret_file, rundir.state_file,
                 rundir.logs / "svc.log"):
        assert mode(path) == 0o600, path


def test_a_planted_log_symlink_is_not_appended_to(rundir, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.write_text("")
    rundir.logs.mkdir(mode=0o700)
    (rundir.logs / "hypervisor.log").symlink_to(theirs)
    with pytest.raises(OSError):
        rundir.open_log("hypervisor.log")
    (rundir.path / "up.log").symlink_to(theirs)
    with pytest.raises(FileExistsError):
        rundir.open_new("up.log")
    assert theirs.read_text() == ""


def test_hypervisor_addr_is_never_seen_half_written(rundir):
    """The writer replaces the file (a new inode, renamed over the old one):
    a reader holding the old one still reads it whole, and a reader polling
    meanwhile only ever sees a whole address. A reader given an empty file
    treats it as not ready, never as the address ''."""
    rundir.address_file.write_text("")
    assert rundir.address_ready() is None
    with pytest.raises(RundirMissing, match="no lab is running"):
        rundir.read_address()

    rundir.publish_hypervisor("unix:/run/one.sock", "s")
    with open(rundir.address_file) as old:
        rundir.publish_hypervisor("unix:/run/two.sock", "s")
        assert old.read() == "unix:/run/one.sock\n"
    assert rundir.read_address() == "unix:/run/two.sock"

    stop = threading.Event()

    def publish():
        while not stop.is_set():
            rundir.publish_hypervisor("unix:/run/" + "x" * 200 + ".sock", "s")
    writer = threading.Thread(target=publish)
    writer.start()
    try:
        seen = {rundir.address_ready() for _ in range(3000)}
    finally:
        stop.set()
        writer.join()
    assert seen <= {"unix:/run/two.sock", "unix:/run/" + "x" * 200 + ".sock"}


def test_lab_state_is_claimed_once(rundir):
    rundir.write_state({"name": "first"}, first=True)
    with pytest.raises(FileExistsError):
        rundir.write_state({"name": "second"}, first=True)
    assert rundir.read_state() == {"name": "first"}


# -- sockets ----------------------------------------------------------------------------------
def test_a_bound_socket_is_0600_under_umask_000(rundir, umask_000):
    import socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        bind_private(sock, str(rundir.socket("x.sock")))
        assert mode(rundir.socket("x.sock")) == 0o600
    finally:
        sock.close()


async def test_grpc_unix_sockets_are_0600_under_umask_000(rundir, umask_000):
    from xenlab.rpc import start_server
    server, _ = await start_server(f"unix:{rundir.socket('api.sock')}", [], [])
    try:
        assert mode(rundir.socket("api.sock")) == 0o600
    finally:
        await server.stop(0)
    assert os.umask(0) == 0                 # the process's umask is given back


# -- defaults ---------------------------------------------------------------------------------
def test_xdg_runtime_dir_is_the_default_rundir(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    assert default_rundir({"XDG_RUNTIME_DIR": str(runtime)}) == runtime / "xenlab"
    assert default_rundir({"XDG_RUNTIME_DIR": str(runtime), "XENLAB_RUNDIR": "/x"}) == \
        default_rundir({"XENLAB_RUNDIR": "/x"})
    # Not the caller's private directory (as after sudo -E): passed over.
    os.chmod(runtime, 0o755)
    assert default_rundir({"XDG_RUNTIME_DIR": str(runtime)}) == default_rundir({})
    assert default_rundir({"XDG_RUNTIME_DIR": "relative"}) == default_rundir({})
    assert str(default_rundir({})) == f"/tmp/xenlab-{os.getuid()}"


# -- processes --------------------------------------------------------------------------------
def test_a_reused_pid_is_not_taken_for_the_labs_process():
    me = ProcessRecord.of()
    assert me.running()
    assert not ProcessRecord(me.pid, me.start + 1, me.boot, me.pidns).running()
    assert not ProcessRecord(me.pid, me.start, "another-boot", me.pidns).running()
    assert not dead_process().running()
    assert ProcessRecord.from_json(me.to_json()) == me
    assert ProcessRecord.from_json({"pid": "x"}) is None


def test_a_process_of_another_pid_namespace_is_never_signalled():
    me = ProcessRecord.of()
    elsewhere = ProcessRecord(me.pid, me.start, me.boot, me.pidns + 1)
    assert elsewhere.running()             # cannot be looked at: taken as running
    assert not elsewhere.local
    assert elsewhere.signal(0) is False


def test_a_zombie_is_not_running():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    record = ProcessRecord.of(proc.pid)
    proc.stdin.close()
    while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    assert not record.running()
    proc.wait()


# -- survey and clean -------------------------------------------------------------------------
def test_clean_removes_a_killed_labs_files_sockets_and_segments_and_nothing_else(rundir, tmp_path):
    import socket
    shm = tmp_path / "shm"
    shm.mkdir()
    prefix = shm / "xenlab-999-abcd-"
    for name in ("d0", "d1"):
        (shm / f"{prefix.name}{name}").write_bytes(b"\0" * 4096)
    (shm / "xenlab-998-abcd-d0").write_bytes(b"")          # another hypervisor's
    rundir.record_hypervisor(prefix)
    rundir.publish_hypervisor("unix:/x", "s")
    os.close(rundir.open_log("hypervisor.log"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    bind_private(sock, str(rundir.socket("agent-d1.sock")))
    sock.close()
    (rundir.path / "notes.txt").write_text("the user's")
    (rundir.logs / "mine.txt").write_text("the user's too")
    dead = dead_process().to_json()
    rundir.write_state({"name": "l", "processes": {"runner": dead}}, first=True)
    # This process wrote hypervisor.json: as if it had been killed.
    rundir.write_file("hypervisor.json", rundir.read_file("hypervisor.json").replace(
        f'"pid": {os.getpid()}', f'"pid": {dead["pid"]}'))

    survey = rundir.survey()
    assert survey.stale and survey.name == "l" and set(survey.processes) == {"runner", "hypervisor"}
    cleaned = rundir.clean(remove_dir=True)
    assert (cleaned.segments, cleaned.segment_bytes) == (2, 8192)
    assert sorted(os.listdir(shm)) == ["xenlab-998-abcd-d0"]
    assert sorted(os.listdir(rundir.path)) == ["logs", "notes.txt"]   # so the rundir stays
    assert os.listdir(rundir.logs) == ["mine.txt"]


def test_a_hypervisor_refuses_a_rundir_whose_hypervisor_runs(rundir, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = ProcessRecord.of(sleeper.pid)
        rundir.write_file("hypervisor.json", json.dumps({"process": record.to_json()}))
        with pytest.raises(OSError, match=f"a hypervisor \\(process {sleeper.pid}\\) is already running"):
            rundir.record_hypervisor(tmp_path / "xenlab-1-")
        assert rundir.survey().running == {"hypervisor": record}
    finally:
        sleeper.kill()
        sleeper.wait()
    rundir.record_hypervisor(tmp_path / "xenlab-1-")          # gone: taken over
