"""The README's "Testing your own lab" examples, copied out of README.md as
they are written and run as a user runs them: a file in a fresh project (no
pytest.ini, no pyproject.toml, no conftest), `python -m pytest`. Each must
pass with no warning and no marker or configuration of the user's
(issue 19: the first needed @pytest.mark.asyncio and asyncio_mode, warned
about asyncio_default_fixture_loop_scope, and its lab.bridge() was a tuple).
The second uses xenlab.testing's in-process lab, ManualClock and eventually."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from markdown_examples import ROOT, block_after

pytestmark = pytest.mark.integration

MARKER = "<!-- test: harness-example"
IN_PROCESS_MARKER = "<!-- test: in-process-example"


def run_in_a_fresh_project(tmp_path, marker: str) -> str:
    """The README block after ``marker``, as test_lab.py of a new project,
    run by pytest; its output, which must report a pass and no warning."""
    example = block_after(ROOT / "README.md", marker)
    assert example.lang == "python"
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "test_lab.py").write_text(example.text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "XENLAB_"))}
    result = subprocess.run([sys.executable, "-m", "pytest", "-W", "error::DeprecationWarning",
                             "test_lab.py"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "warning" not in out.lower(), out
    assert "rootdir: " + str(project) in out and "configfile" not in out, out
    return out


def test_the_readme_harness_example_passes_in_a_fresh_project_without_warnings(tmp_path):
    assert "1 passed" in run_in_a_fresh_project(tmp_path, MARKER)


def test_the_readme_in_process_example_passes_in_a_fresh_project_without_warnings(tmp_path):
    assert "2 passed" in run_in_a_fresh_project(tmp_path, IN_PROCESS_MARKER)
