"""`xenlab demo` after a plain `pip install xenlab`: it failed with "No
module named 'pytest'" (the demo imported xenlab.testing, which was the
pytest plugin). Here it runs with pytest, pytest-asyncio and hypothesis
shadowed for every process of the lab (the CLI, the hypervisor, the bridge,
the domains): a module of theirs that refuses to load and records who
tried, so an import caught and ignored is noticed too."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

TEST_PACKAGES = ("pytest", "_pytest", "pytest_asyncio", "hypothesis")
SHADOW = '''import os, traceback
with open(os.environ["XENLAB_TEST_SHADOW_LOG"], "a") as log:
    log.write("{name} imported by:\\n" + "".join(traceback.format_stack()[:-1]) + "\\n")
raise ModuleNotFoundError("No module named {name!r} (shadowed)", name={name!r})
'''


def test_the_demo_runs_with_the_test_packages_absent(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    for name in TEST_PACKAGES:
        (shadow / f"{name}.py").write_text(SHADOW.format(name=name))
    log = tmp_path / "shadowed-imports.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "XENLAB_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    env["XENLAB_TEST_SHADOW_LOG"] = str(log)
    result = subprocess.run([sys.executable, "-m", "xenlab.cli.main", "demo"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "== ping mesh" in out and ", 0 lost" in out, out
    assert not log.exists(), log.read_text()
