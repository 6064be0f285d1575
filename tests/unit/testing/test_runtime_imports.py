"""xenlab runs without its test extras: `pip install xenlab` then `xenlab
demo` failed with "No module named 'pytest'", because the demo imported
xenlab.testing, then the pytest plugin. Every module of xenlab but the
plugin must import with pytest, pytest-asyncio and hypothesis absent.

Each check imports the modules in a fresh interpreter whose import system
refuses the test packages and records who asked, so a module that catches
the ImportError (or imports them lazily at import time) is caught too.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Only the pytest plugin (the pytest11 entry point) may need them.
ALLOWED = {"xenlab.testing.plugin"}
TEST_PACKAGES = ("pytest", "_pytest", "pytest_asyncio", "hypothesis")

PROBE = textwrap.dedent("""
    import importlib, importlib.abc, json, pkgutil, sys, traceback

    BLOCKED = {blocked!r}
    asked = []

    class NoTestPackages(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                importer = sys._getframe(1)
                while importer and importer.f_globals.get("__name__", "").startswith(
                        ("importlib", "_frozen_importlib")):
                    importer = importer.f_back
                who = importer.f_globals.get("__name__", "?") if importer else "?"
                asked.append([name, who, current[-1] if current else "?"])
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, NoTestPackages())
    current = []
    failed = {{}}
    import xenlab
    modules = {modules!r} or sorted(
        m.name for m in pkgutil.walk_packages(xenlab.__path__, "xenlab.")
        if m.name not in {allowed!r})
    for name in modules:
        current.append(name)
        try:
            importlib.import_module(name)
        except BaseException as err:
            failed[name] = "".join(traceback.format_exception_only(type(err), err)).strip()
    print(json.dumps({{"modules": modules, "asked": asked, "failed": failed}}))
""")


def probe(modules: list[str] = ()) -> dict:
    """Import ``modules`` (default: every module of xenlab but the plugin)
    with the test packages blocked; what was imported, what asked for a
    test package, and what failed."""
    code = PROBE.format(blocked=set(TEST_PACKAGES), modules=list(modules), allowed=ALLOWED)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_every_runtime_module_imports_without_the_test_extras():
    report = probe()
    assert "xenlab.cli.demo" in report["modules"] and "xenlab.testing" in report["modules"]
    assert report["failed"] == {}
    assert report["asked"] == [], "modules that reach for a test package: " + json.dumps(
        report["asked"])


def test_the_probe_catches_a_runtime_module_that_imports_pytest(tmp_path):
    # The check above can fail: a module of the xenlab package (put there
    # for this test, outside the source tree's copy when it is installed)
    # that imports pytest is reported, and so is one that swallows the error.
    plain, hidden = "xenlab._probe_imports_pytest", "xenlab._probe_hides_hypothesis"
    package = tmp_path / "xenlab"
    package.mkdir()
    (package / "_probe_imports_pytest.py").write_text("import pytest\n")
    (package / "_probe_hides_hypothesis.py").write_text(
        "try:\n    import hypothesis\nexcept ImportError:\n    hypothesis = None\n")
    code = ("import xenlab, sys; xenlab.__path__.append(%r); " % str(package)) + \
        PROBE.format(blocked=set(TEST_PACKAGES), modules=[plain, hidden], allowed=ALLOWED)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=240)
    report = json.loads(result.stdout.splitlines()[-1])
    assert "No module named 'pytest'" in report["failed"][plain]
    assert hidden not in report["failed"]
    assert [name for name, _, _ in report["asked"]] == ["pytest", "hypothesis"]
    assert [module for _, _, module in report["asked"]] == [plain, hidden]


def test_the_plugin_is_the_module_that_needs_pytest():
    report = probe(sorted(ALLOWED))
    assert "No module named 'pytest'" in report["failed"]["xenlab.testing.plugin"]
