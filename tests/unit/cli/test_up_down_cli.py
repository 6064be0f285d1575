"""`xenlab up`, `down` and `status` as a user meets them, without starting
a lab: refused rundirs, nothing to stop, a lab whose processes were killed
(its state made by hand here; tests/integration/test_lab_rundir.py kills
real ones)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xenlab.rundir import ProcessRecord, Rundir

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def xenlab(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("XENLAB_RUNDIR", "XDG_RUNTIME_DIR")}
    return subprocess.run([sys.executable, "-m", "xenlab.cli.main", *args], capture_output=True,
                          text=True, timeout=60, env={**environ, **(env or {})})


def dead_process() -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    record = ProcessRecord.of(proc.pid)
    proc.communicate(b"")
    return record.to_json()


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


@needs_root
@pytest.mark.parametrize("command", [
    ["up", "LAB"], ["up", "--detach", "LAB"], ["down"], ["status"], ["xl", "list"],
    ["hypervisor", "--listen", "unix:RUNDIR/hv.sock"], ["bridge-service"], ["dom0"],
])
def test_a_rundir_owned_by_another_user_is_refused(tmp_path, command):
    """Another local user made the predictable rundir first, with a planted
    dom0.secret and up.log: every command refuses it in one line and writes
    nothing there, nor through its links."""
    lab = tmp_path / "lab.toml"
    lab.write_text('[[domain]]\nname = "web"\nmemory = 16\n')
    theirs = tmp_path / "theirs"
    theirs.write_text("")
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    for name in ("dom0.secret", "up.log"):
        (rundir / name).symlink_to(theirs)
    os.chown(rundir, NOBODY, NOBODY)
    args = [a.replace("RUNDIR", str(rundir)).replace("LAB", str(lab)) for a in command]
    result = xenlab(*args, "--rundir", str(rundir))
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"{rundir} is owned by uid {NOBODY}, not by you" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(rundir)) == ["dom0.secret", "up.log"]
    assert theirs.read_text() == ""


def test_up_refuses_a_rundir_open_to_others_or_a_symlink(tmp_path):
    lab = tmp_path / "lab.toml"
    lab.write_text('[[domain]]\nname = "web"\nmemory = 16\n')
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o755)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    for rundir, why in ((open_dir, "is mode 0755, not 0700"), (tmp_path / "link", "is a symlink")):
        result = xenlab("up", "--detach", str(lab), "--rundir", str(rundir))
        assert result.returncode == 1 and why in result.stderr and result.stderr.count("\n") == 1
    assert os.listdir(open_dir) == [] and not (tmp_path / "elsewhere").exists()


def test_down_with_nothing_up_exits_0_and_says_so(tmp_path):
    for rundir in (tmp_path / "never", tmp_path):
        result = xenlab("down", "--rundir", str(rundir))
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"no lab is running in {rundir}\n"
    assert "exits 0" in xenlab("down", "--help").stdout.replace("\n", " ")


def test_xdg_runtime_dir_is_the_default_rundir(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = xenlab("down", env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.stdout == f"no lab is running in {runtime}/xenlab\n"
    result = xenlab("xl", "list", env={"XDG_RUNTIME_DIR": str(runtime)})
    assert f"no lab is running in {runtime}/xenlab (start one with `xenlab up`" in result.stderr



@pytest.mark.parametrize("command", [("bridge", "fdb", "show"), ("brctl", "show"),
                                     ("ip", "link", "show"), ("tc", "qdisc", "show")])
def test_commands_that_parse_their_own_line_default_to_the_same_rundir(tmp_path, command):
    # bridge, brctl and ip looked in /tmp/xenlab-UID whatever XDG_RUNTIME_DIR
    # said, so they missed the lab `xenlab up` had started there.
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = xenlab(*command, env={"XDG_RUNTIME_DIR": str(runtime)})
    assert f"no lab is running in {runtime}/xenlab (start one with `xenlab up`" in result.stderr


def stale_lab(rundir: Path, shm: Path) -> None:
    """What a lab killed with SIGKILL leaves: its state, the hypervisor's
    files and sockets, and its domains' memory segments."""
    run = Rundir(rundir)
    run.create()
    shm.mkdir(exist_ok=True)
    prefix = shm / "xenlab-424242-beef-"
    for domid in (0, 1):
        (shm / f"{prefix.name}d{domid}").write_bytes(b"\0" * 8192)
    dead = dead_process()
    run.write_file("hypervisor.json", json.dumps({"process": dead, "shm": str(prefix)}))
    run.publish_hypervisor(f"unix:{rundir}/hv.sock", "secret")
    run.write_state({"name": "office", "state": "up", "pid": dead["pid"],
                     "processes": {"runner": dead_process(), "hypervisor": dead}}, first=True)
    os.close(run.open_log("hypervisor.log"))
    import socket
    for name in ("hv.sock", "evtchn.sock", "agent-d1.sock"):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(rundir / name))
        sock.close()


def test_down_after_the_lab_was_killed_cleans_it_up(tmp_path):
    rundir, shm = tmp_path / "run", tmp_path / "shm"
    stale_lab(rundir, shm)
    status = xenlab("status", "--rundir", str(rundir))
    assert status.returncode == 3 and "NOT RUNNING" in status.stdout
    assert "`xenlab up` or `xenlab down` cleans" in status.stdout
    result = xenlab("down", "--rundir", str(rundir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"lab office (process ")
    assert "was not running (its processes were gone: killed?); cleaned up" in result.stdout
    assert "2 memory segment(s)" in result.stdout
    assert os.listdir(rundir) == [] and os.listdir(shm) == []
    assert xenlab("down", "--rundir", str(rundir)).stdout == f"no lab is running in {rundir}\n"


def test_up_refuses_a_rundir_whose_lab_runs_and_writes_nothing(tmp_path, sleeper):
    lab = tmp_path / "lab.toml"
    lab.write_text('[[domain]]\nname = "web"\nmemory = 16\n')
    run = Rundir(tmp_path / "run")
    run.create()
    state = {"name": "office", "pid": sleeper.pid,
             "processes": {"runner": ProcessRecord.of(sleeper.pid).to_json()}}
    run.write_state(state, first=True)
    (run.path / "up.log").write_text("an old lab's output\nTraceback (most recent call last):\n")
    before = sorted(os.listdir(run.path))
    for args in (["up", str(lab)], ["up", "--detach", str(lab)]):
        result = xenlab(*args, "--rundir", str(run.path))
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == (f"xenlab up: lab office (process {sleeper.pid}) is already running "
                                 f"in {run.path}: stop it with `xenlab down --rundir {run.path}`\n")
    assert sorted(os.listdir(run.path)) == before and run.read_state() == state


def test_a_hand_made_rundir_is_never_cleaned(tmp_path):
    """docs/COMPOSE.md's host rundir: an address and a secret, no process
    recorded. `down` has nothing to stop; `up` will not start over it."""
    rundir = tmp_path / "compose"
    rundir.mkdir(mode=0o700)
    (rundir / "hypervisor.addr").write_text("127.0.0.1:9770\n")
    fd = os.open(rundir / "dom0.secret", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"secret\n")
    os.close(fd)
    assert xenlab("down", "--rundir", str(rundir)).stdout == f"no lab is running in {rundir}\n"
    lab = tmp_path / "lab.toml"
    lab.write_text('[[domain]]\nname = "web"\nmemory = 16\n')
    result = xenlab("up", "--detach", str(lab), "--rundir", str(rundir))
    assert result.returncode == 1 and "names a hypervisor no xenlab process recorded" in result.stderr
    assert sorted(os.listdir(rundir)) == ["dom0.secret", "hypervisor.addr"]


def test_up_detach_says_a_bad_lab_file_before_making_anything(tmp_path):
    lab = tmp_path / "lab.toml"
    lab.write_text("[[domain]\n")
    result = xenlab("up", "--detach", str(lab), "--rundir", str(tmp_path / "run"))
    assert result.returncode == 1 and result.stderr.startswith("xenlab up: ")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_up_says_which_xl_keys_of_a_lab_it_ignores(tmp_path):
    """A lab's disk= was kept without a word (its warnings went nowhere)."""
    lab = tmp_path / "lab.toml"
    lab.write_text('[[domain]]\nname = "web"\nmemory = 16\ndisk = ["phy:/dev/vg/web,xvda,w"]\n')
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    result = xenlab("up", "--detach", str(lab), "--rundir", str(tmp_path / "link"))
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and len(lines) == 2
    assert lines[0] == f"{lab}:4: warning: disk= is not emulated (xenlab's guests have vifs only); ignored"
    assert "is a symlink" in lines[1]


def test_up_hints_name_the_rundir_only_when_it_is_not_the_default(tmp_path):
    import argparse
    from xenlab.cli.lab import _hints
    from xenlab.lab.spec import demo_lab
    default = tmp_path / "xenlab"
    same = argparse.Namespace(rundir=default, default_rundir=default, ready_fd=None)
    other = argparse.Namespace(rundir=tmp_path / "other", default_rundir=default, ready_fd=3)
    assert "--rundir" not in _hints(demo_lab(), same)
    assert "xenlab xl list, xenlab status. Stop with Ctrl-C or `xenlab down`." in _hints(demo_lab(), same)
    hint = _hints(demo_lab(), other)
    assert f"xenlab xl list --rundir {tmp_path / 'other'}," in hint
    assert hint.endswith(f"Stop with `xenlab down --rundir {tmp_path / 'other'}`.")


STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
OBEDIENT = "import time; print('ready', flush=True); time.sleep(120)"


def started(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"          # its SIGTERM handler is set
    return proc


def test_down_force_kills_a_lab_that_does_not_stop(tmp_path):
    run = Rundir(tmp_path / "run")
    run.create()
    runner, service = started(STUBBORN), started(STUBBORN)
    try:
        run.write_state({"name": "stuck", "pid": runner.pid, "processes": {
            "runner": ProcessRecord.of(runner.pid).to_json(),
            "bridge": ProcessRecord.of(service.pid).to_json()}}, first=True)
        polite = xenlab("down", "--timeout", "1", "--rundir", str(run.path))
        assert polite.returncode == 1
        assert polite.stderr == (f"xenlab down: lab stuck (process {runner.pid}) is still stopping "
                                 f"after 1s (runner, bridge); `xenlab down --force` kills it\n")
        forced = xenlab("down", "--timeout", "1", "--force", "--rundir", str(run.path))
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout.startswith(f"lab stuck (process {runner.pid}) killed; cleaned up {run.path}")
        assert runner.wait(10) == -9 and service.wait(10) == -9
        assert os.listdir(run.path) == []
    finally:
        for proc in (runner, service):
            proc.kill()
            proc.wait()


def test_down_stops_the_services_of_a_lab_whose_up_was_killed(tmp_path):
    run = Rundir(tmp_path / "run")
    run.create()
    service = started(OBEDIENT)
    try:
        run.write_state({"name": "orphaned", "pid": 1, "processes": {
            "runner": dead_process(), "hypervisor": ProcessRecord.of(service.pid).to_json()}},
            first=True)
        result = xenlab("down", "--rundir", str(run.path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("lab orphaned (process ") and " stopped; cleaned up" in result.stdout
        assert service.wait(10) == -15
    finally:
        service.kill()
        service.wait()
