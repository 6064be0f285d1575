"""The package map of docs/ARCHITECTURE.md, held: the layers (import-linter's
contracts in pyproject.toml), no import cycle, and every package of
services/xenlab named in the document."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
PACKAGE = SERVICES / "xenlab"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(),
                                reason="import-linter is not installed (pip install -e '.[test]')")


def lint_imports(services: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(services)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
                          cwd=services, env=env, capture_output=True, text=True, timeout=300)


def test_every_layer_contract_is_kept():
    result = lint_imports(SERVICES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    # The Xen ABI reaching up into the CLI.
    ("xen/abi.py", "import xenlab.cli.main", "Layers: nothing imports upward"),
    # A hypercall core reaching up into the toolstack that drives it.
    ("hypervisor/grants.py", "from xenlab.toolstack import vif", "Layers: nothing imports upward"),
    # A pure core doing I/O.
    ("bridge/fdb.py", "import socket", "The protocol cores do no I/O"),
    # The ABI importing the transport.
    ("xen/ring.py", "import grpc", "The Xen ABI (xenlab.xen) imports nothing of ours"),
])
def test_a_forbidden_import_breaks_the_build(tmp_path, module, line, contract):
    """The contracts can fail: the same tree with one bad import added."""
    services = tmp_path / "services"
    shutil.copytree(PACKAGE, services / "xenlab",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = services / "xenlab" / module
    target.write_text(target.read_text() + f"\n{line}  # planted by test_architecture\n")
    result = lint_imports(services)
    assert result.returncode != 0
    broken = result.stdout[result.stdout.index("Broken contracts"):]
    assert contract in broken
    assert "xenlab." + module.removesuffix(".py").replace("/", ".") in broken


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SERVICES).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(path: Path, name: str, modules) -> set[str]:
    """Modules of ours that ``path`` imports when it is imported: the
    statements at module level (not inside functions, not under
    ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # "from package import module" imports the module (the
                # package is being imported already); a name is the module's.
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                             for a in node.names)
    visit(tree.body)
    return {m for m in found if m == "xenlab" or m.startswith("xenlab.")}


def test_no_import_cycle():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "proto" not in p.parts}
    graph = {name: sorted(m for m in _top_level_imports(path, name, modules) if m in modules and m != name)
             for name, path in modules.items()}
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    assert cycles == []


def test_every_package_is_on_the_map():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    packages = sorted(p.name for p in PACKAGE.iterdir()
                      if p.is_dir() and (p / "__init__.py").exists())
    missing = [p for p in packages if not re.search(rf"`(xenlab\.)?{p}[/`]", text)]
    assert missing == []


def test_nothing_cites_a_document_outside_the_repository():
    pattern = re.compile(r"\.\./shared|\bDESIGN(\.md| section| §)")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    offenders = []
    for name in files:
        path = ROOT / name
        if path == Path(__file__) or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue                # binary
        if pattern.search(text):
            offenders.append(name)
    assert offenders == []


def test_an_import_inside_a_function_says_why():
    """An import belongs at the top of its module. One inside a function is
    kept only with a reason on its line (``# lazy: ...``: an optional
    dependency, or a command's start-up), never to dodge a cycle."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "proto" in path.relative_to(PACKAGE).parts:
            continue
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for statement in ast.walk(node):
                    if isinstance(statement, (ast.Import, ast.ImportFrom)) \
                            and "# lazy:" not in lines[statement.end_lineno - 1]:
                        unexplained.append(f"{path.relative_to(SERVICES)}:{statement.lineno}")
    assert sorted(set(unexplained)) == []
