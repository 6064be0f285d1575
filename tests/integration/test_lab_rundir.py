"""`xenlab up` and `xenlab down` as real processes, from the user's side:
the modes of what a lab makes, a lab killed with SIGKILL and recovered,
Ctrl-C and SIGTERM while it starts, a failed start, and `up --detach` on a
lab already up. Labs are small (one domU) and each test starts at most two."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xenlab.rundir import ProcessRecord
from xenlab.testing import short_tempdir

pytestmark = pytest.mark.integration

LAB = """
[lab]
name = "tiny"

[mqtt]
broker = "{broker}"

[hypervisor]
memory = {hv_memory}

[[domain]]
name = "web"
memory = {memory}
vif = ["ip=10.0.0.1/24"]
"""


def lab_file(where: Path, broker: str = "none", memory: int = 32, hv_memory: int = 512) -> Path:
    path = where / "tiny.toml"
    path.write_text(LAB.format(broker=broker, memory=memory, hv_memory=hv_memory))
    return path


def xenlab(*args: str, umask: int | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XENLAB_RUNDIR", "XDG_RUNTIME_DIR")}
    return subprocess.run([sys.executable, "-m", "xenlab.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, env=env,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def recorded(rundir: Path) -> dict[str, ProcessRecord]:
    state = json.loads((rundir / "lab.json").read_text())
    return {name: ProcessRecord.from_json(data) for name, data in state["processes"].items()}


def descendants(pids: set[int]) -> set[int]:
    """`pids` and every process under them (the domains, under the hypervisor)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            parents[int(entry)] = int(text[text.rindex(")") + 2:].split()[1])
    found = set(pids)
    while True:
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        if not more:
            return found
        found |= more


def segments(rundir: Path) -> list[Path]:
    prefix = Path(json.loads((rundir / "hypervisor.json").read_text())["shm"])
    return sorted(prefix.parent.glob(prefix.name + "*"))


def domains_dir(rundir: Path) -> Path | None:
    """The domains' directory outside the rundir (with domain uids), if any."""
    recorded = json.loads((rundir / "hypervisor.json").read_text()).get("domains")
    return Path(recorded) if recorded else None


def kill_everything(rundir: Path) -> list[ProcessRecord]:
    """SIGKILL every process of the lab at once, as `kill -9` would."""
    records = list(recorded(rundir).values())
    for pid in descendants({r.pid for r in records}):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    while any(r.running() for r in records):
        assert time.monotonic() < deadline, "the lab's processes outlived SIGKILL"
        time.sleep(0.05)
    return records


@pytest.fixture
def place():
    """A directory for a rundir that `xenlab up` makes; whatever runs there
    is stopped at the end."""
    where = short_tempdir("xl-rd-")
    yield where
    if (where / "run").exists():
        xenlab("down", "--force", "--timeout", "20", "--rundir", str(where / "run"))
    shutil.rmtree(where, ignore_errors=True)


# -- one lab, brought up with --detach under umask 000 ----------------------------------------
@pytest.fixture(scope="module")
def detached():
    """(rundir, the CompletedProcess of `xenlab up --detach`), run under
    umask 000: everything the lab makes must be private all the same."""
    where = short_tempdir("xl-rd-")
    rundir = where / "run"
    result = xenlab("up", "--detach", str(lab_file(where)), "--rundir", str(rundir), umask=0)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield rundir, result
    finally:
        xenlab("down", "--force", "--timeout", "20", "--rundir", str(rundir))
        shutil.rmtree(where, ignore_errors=True)


def test_up_detach_leaves_rundir_0700(detached):
    rundir, _ = detached
    assert mode(rundir) == 0o700
    assert mode(rundir / "logs") == 0o700
    files = [p for p in [*rundir.iterdir(), *(rundir / "logs").iterdir()] if p.is_file()]
    assert {p.name for p in files} >= {"dom0.secret", "hypervisor.addr", "lab.json", "up.log",
                                       "hypervisor.log", "bridge.log", "dom0.log", "d1-web.console"}
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_sockets_are_0600_under_umask_000(detached):
    rundir, _ = detached
    sockets = {p.name: mode(p) for p in rundir.iterdir() if stat.S_ISSOCK(os.lstat(p).st_mode)}
    domains = domains_dir(rundir)
    domu_agent = {"agent-d1.sock"} if domains is None else set()
    assert set(sockets) == {"hv.sock", "evtchn.sock", "bridge.sock", "bridge-xenbr0.sock",
                            "agent-d0.sock"} | domu_agent
    assert sockets == {name: 0o600 for name in sockets}
    if domains is not None:
        # With domain uids, a domU's sockets are outside the rundir: the
        # hypervisor's for domains is its group's, its agent's its own.
        assert mode(domains) == 0o710 and mode(domains / "hv.sock") == 0o660
        assert mode(domains / "d1") == 0o700 and mode(domains / "d1" / "agent.sock") == 0o600


def test_up_detach_says_what_is_starting_and_hints_the_rundir(detached):
    rundir, result = detached
    lines = result.stdout.splitlines()
    starting = [line for line in lines if "starting the hypervisor" in line]
    assert len(starting) == 1 and "s] starting the hypervisor" in starting[0]
    assert any("lab tiny is up in" in line for line in lines)
    assert f"xenlab xl list --rundir {rundir}" in result.stdout
    assert f"Stop with `xenlab down --rundir {rundir}`" in result.stdout
    assert "Ctrl-C" not in result.stdout
    status = xenlab("status", "--rundir", str(rundir))
    assert status.returncode == 0 and "lab tiny (" in status.stdout and ": up," in status.stdout


def test_up_detach_on_a_running_rundir_does_not_print_the_old_log(detached):
    rundir, _ = detached
    before = (rundir / "up.log").read_text()
    again = xenlab("up", "--detach", "--rundir", str(rundir))
    assert again.returncode == 1
    assert again.stdout == ""
    assert again.stderr.startswith("xenlab up: lab tiny (process ")
    assert again.stderr.endswith(f"is already running in {rundir}: stop it with "
                                 f"`xenlab down --rundir {rundir}`\n")
    assert (rundir / "up.log").read_text() == before


# -- killed, recovered -------------------------------------------------------------------------
def test_up_recovers_after_the_previous_up_was_killed_with_sigkill(place):
    rundir = place / "run"
    lab = lab_file(place, broker="embedded")
    first = xenlab("up", "--detach", str(lab), "--rundir", str(rundir))
    assert first.returncode == 0, first.stdout + first.stderr
    assert set(recorded(rundir)) == {"runner", "mqtt", "hypervisor", "bridge", "dom0"}
    old_segments = segments(rundir)
    assert len(old_segments) == 2                   # Domain-0's and web's memory
    old_domains = domains_dir(rundir)
    kill_everything(rundir)

    # What a user then met: `down` said no lab was running, `up` that a
    # hypervisor was.
    again = xenlab("up", "--detach", str(lab), "--rundir", str(rundir))
    assert again.returncode == 0, again.stdout + again.stderr
    cleaned = again.stdout.splitlines()[0]
    assert "cleaned up after lab tiny (process " in cleaned
    assert "whose processes were gone (killed?)" in cleaned and "2 memory segment(s)" in cleaned
    assert "lab tiny is up in" in again.stdout
    assert not any(p.exists() for p in old_segments)
    assert old_domains is None or not old_domains.exists()

    new_segments = segments(rundir)
    kill_everything(rundir)
    down = xenlab("down", "--rundir", str(rundir))
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("lab tiny (process ")
    assert "was not running (its processes were gone: killed?); cleaned up" in down.stdout
    assert not any(p.exists() for p in new_segments)
    assert os.listdir(rundir) == []
    assert xenlab("down", "--rundir", str(rundir)).stdout == f"no lab is running in {rundir}\n"


def test_a_planted_up_log_symlink_is_not_appended_to(place):
    """Even in the caller's own rundir (the realistic plant, in someone
    else's, is refused: tests/unit/lab/test_up_down_cli.py)."""
    rundir = place / "run"
    rundir.mkdir(mode=0o700)
    victim = place / "victim"
    victim.write_text("")
    (rundir / "up.log").symlink_to(victim)
    result = xenlab("up", "--detach", str(lab_file(place)), "--rundir", str(rundir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert victim.read_text() == ""
    assert not (rundir / "up.log").is_symlink() and mode(rundir / "up.log") == 0o600
    assert "lab tiny is up in" in (rundir / "up.log").read_text()
    down = xenlab("down", "--rundir", str(rundir))
    assert down.returncode == 0 and down.stdout.startswith("lab tiny (process ")
    assert down.stdout.rstrip().endswith("stopped")


# -- interrupted or failed while starting ----------------------------------------------------------
def start_then_signal(args: list[str], sig: int, when: str) -> tuple[int, str, str, dict]:
    """Run `xenlab ARGS`, send `sig` once its output shows `when`; its exit
    status, output, and the processes the rundir had recorded by then."""
    env = {k: v for k, v in os.environ.items() if k not in ("XENLAB_RUNDIR", "XDG_RUNTIME_DIR")}
    proc = subprocess.Popen([sys.executable, "-m", "xenlab.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    out = []
    rundir = Path(args[args.index("--rundir") + 1])
    try:
        for line in proc.stdout:
            out.append(line)
            if when in line:
                break
        seen = recorded(rundir) if (rundir / "lab.json").exists() else {}
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(out) + rest, err, seen


@pytest.mark.parametrize("detach", [False, True], ids=["up", "up --detach"])
def test_ctrl_c_during_up_exits_130_and_removes_the_rundir(place, detach):
    rundir = place / "run"
    args = ["up", *(["--detach"] if detach else []), str(lab_file(place)), "--rundir", str(rundir)]
    status, out, err, seen = start_then_signal(args, signal.SIGINT, "starting the bridge service")
    assert status == 130, out + err
    assert "SIGINT while starting: the lab is down" in err
    assert "lab tiny is up" not in out and "Domain " not in out
    assert not rundir.exists()
    assert "hypervisor" in seen and not any(p.running() for p in seen.values())


def test_sigterm_during_up_exits_143_and_removes_the_rundir(place):
    rundir = place / "run"
    status, out, err, seen = start_then_signal(["up", str(lab_file(place)), "--rundir", str(rundir)],
                                               signal.SIGTERM, "starting Domain-0's kernel")
    assert status == 143, out + err
    assert "SIGTERM while starting" in err
    assert not rundir.exists()
    assert not any(p.running() for p in seen.values())


def test_a_failed_up_removes_its_rundir(place):
    rundir = place / "run"
    result = xenlab("up", str(lab_file(place, memory=4096)), "--rundir", str(rundir))
    assert result.returncode == 1
    assert result.stderr.startswith("xenlab up: cannot create web: ")
    assert "Traceback" not in result.stderr
    assert not rundir.exists()
