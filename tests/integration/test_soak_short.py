"""The soak in short (`xenlab soak` runs it for minutes, with a MAC flood of
1,000,000 frames): mixed traffic, a vif detached and attached, a domU killed
and restarted, a MAC flood, and at the end every frame accounted for at
every hop of every path."""
import json
import shutil

import pytest

from xenlab.lab.soak import run_soak
from xenlab.testing import short_tempdir

pytestmark = pytest.mark.integration


def print_logs(rundir) -> None:
    for log in sorted((rundir / "logs").glob("*.log")):
        print(f"---- {log.name} ----\n" + log.read_text(errors="replace")[-4000:])


async def test_a_short_soak_accounts_for_every_frame():
    rundir = short_tempdir("xl-soak-")
    try:
        result = await run_soak(rundir, seconds=20, flood_frames=20_000, progress=lambda s: None,
                                log_level="DEBUG")
        print(result.report())
        assert result.errors == []
        assert min(result.faults.values()) >= 1, result.faults
        assert result.traffic.get("ping replies", 0) > 0 and result.traffic.get("udp echoes", 0) > 0
        assert result.traffic.get("injected", 0) > 0 and result.traffic.get("blasted", 0) > 0
        checked = [h for h in result.hops if h.checked]
        assert len(checked) > 30 and sum(h.sent for h in checked) > 10_000
        assert result.unaccounted == [], "\n".join(
            f"{h.path} {h.name}: {h.unaccounted}" for h in result.unaccounted)
        # The killed domain's ring hops are reported as such, not silently passed.
        assert any(not h.checked and "killed" in h.note for h in result.hops)
    except BaseException:
        print_logs(rundir)
        raise
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def test_a_terminated_soak_takes_its_lab_down_and_removes_its_rundir(tmp_path):
    """SIGTERM (or Ctrl-C) in the middle: the services are stopped, nothing
    of the lab stays behind, and the exit status says it was stopped."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    before = set(Path(tempfile.gettempdir()).glob("xl-soak-*"))
    # stderr to a file: a pipe nobody reads could fill and stall the soak
    with open(tmp_path / "stderr", "w+") as errfile:
        proc = subprocess.Popen([sys.executable, "-m", "xenlab.cli.main", "soak", "--seconds", "120",
                                 "--flood", "0", "--log-level", "WARNING"],
                                stdout=subprocess.PIPE, stderr=errfile, text=True)
        try:
            lines = []
            for line in proc.stdout:                    # until the soak itself is running
                lines.append(line)
                if "fault:" in line:
                    break
            assert proc.poll() is None, "".join(lines)
            rundirs = set(Path(tempfile.gettempdir()).glob("xl-soak-*")) - before
            assert len(rundirs) == 1
            state = json.loads((rundirs.pop() / "lab.json").read_text())
            pids = [p["pid"] for name, p in state["processes"].items() if name != "runner"]
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        errfile.seek(0)
        err = errfile.read()
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "stopped before the end; the lab is down" in err
    assert set(Path(tempfile.gettempdir()).glob("xl-soak-*")) - before == set()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        assert open(f"/proc/{pid}/stat").read().split()[2] == "Z", f"service {pid} still runs"
