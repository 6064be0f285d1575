"""The README's "Testing your own lab" example, copied out of README.md as
it is written and run as a user runs it: a file in a fresh project (no
pytest.ini, no pyproject.toml, no conftest), `python -m pytest`. It must
pass with no warning and no marker or configuration of the user's
(issue 19: it needed @pytest.mark.asyncio and asyncio_mode, warned about
asyncio_default_fixture_loop_scope, and its lab.bridge() was a tuple)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from markdown_examples import ROOT, block_after

pytestmark = pytest.mark.integration

MARKER = "<!-- test: harness-example"


def test_the_readme_harness_example_passes_in_a_fresh_project_without_warnings(tmp_path):
    example = block_after(ROOT / "README.md", MARKER)
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
    assert "1 passed" in out and "warning" not in out.lower(), out
    assert "rootdir: " + str(project) in out and "configfile" not in out, out
