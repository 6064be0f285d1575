"""`./dev setup` says what it is doing, with the time it has taken, while pip
runs (issue 19: it ran pip silently for half a minute). Run on a copy of
the script with a stand-in pip, so that nothing is installed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

FAKE_PIP = """#!/bin/sh
# a stand-in for .venv/bin/python -m pip
case "$*" in
  *"-e .[test,web]"*)
    echo "Obtaining file://$PWD"
    echo "Collecting grpcio>=1.76.0"
    echo "  Using cached grpcio-1.76.0.whl"
    echo "Collecting protobuf>=6.31.1"
    [ -n "$FAIL" ] && { echo "ERROR: No matching distribution found for protobuf>=6.31.1"; exit 1; }
    echo "Installing collected packages: protobuf, grpcio, xenlab"
    echo "Successfully installed grpcio-1.76.0 protobuf-6.31.1 xenlab-0.1.0" ;;
  *) echo "Requirement already satisfied: pip" ;;
esac
"""


def dev_setup(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "dev", tmp_path / "dev")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True, exist_ok=True)
    fakes = tmp_path / "fakebin"
    fakes.mkdir(exist_ok=True)
    for path, text in ((venv_bin / "python", FAKE_PIP), (fakes / "id", "#!/bin/sh\necho 1000\n")):
        path.write_text(text)
        path.chmod(0o755)
    # Not root (the fake id): no Debian packages are looked at.
    return subprocess.run(["bash", str(tmp_path / "dev"), "setup"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}",
                               "PYTHON": sys.executable, **env})


def test_setup_prints_each_step_and_each_package_with_the_time_taken(tmp_path):
    result = dev_setup(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert all(re.match(r"==> \[ *\d+s\] ", line) for line in lines), lines
    said = [re.sub(r"^==> \[ *\d+s\] ", "", line) for line in lines]
    assert said[:2] == ["setting up .venv (xenlab and its test,web tools)", "upgrading pip"]
    assert "installing xenlab and its test,web tools (pip install -e '.[test,web]')" in said
    assert "    Collecting grpcio>=1.76.0" in said and "    Collecting protobuf>=6.31.1" in said
    assert "    Successfully installed grpcio-1.76.0 protobuf-6.31.1 xenlab-0.1.0" in said
    assert said[-1] == ".venv is ready"
    assert any(re.fullmatch(r"    done in \d+s", s) for s in said)
    # Set up already: nothing to say.
    again = dev_setup(tmp_path)
    assert (again.returncode, again.stderr) == (0, "")


def test_a_failing_pip_shows_its_whole_output_and_stops(tmp_path):
    result = dev_setup(tmp_path, FAIL="1")
    assert result.returncode == 1
    assert "ERROR: No matching distribution found for protobuf>=6.31.1" in result.stderr
    assert "pip failed (its output is above, and in .venv/pip.log)" in result.stderr
    assert not (tmp_path / ".venv" / ".xenlab-installed").exists()
