"""Mutation testing of the protocol cores: ``./dev mutate [MODULE...]``.

    ./dev mutate                    # every core in pyproject's [tool.mutmut] only_mutate
    ./dev mutate ring arp           # some of them (a name, xen/ring.py or xenlab.xen.ring)
    ./dev mutate --fail-under 0 ring

mutmut 3 copies the code into a mutants/ tree and can import it back only from
the ".", "src/" or "source/" layouts, so the run happens in .mutmut/, where
src/, tests/ and pyproject.toml are links to the repository's. Each run starts
from a fresh tree: mutmut keeps earlier verdicts and would not retest a
survivor that a new test kills, nor notice a test that now calls a function.

It prints, per module, the mutants killed, survived, timed out and untested
and the score (killed and timed out over all), then every mutant no test
caught as file:line with the line before and after. ``cd .mutmut`` then
``mutmut show NAME`` gives a whole diff, ``mutmut browse`` the rest.
Exit status 1 when a module scores under --fail-under (90).
"""
from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutmut"
LINKS = {"src": "services", "tests": "tests", "pyproject.toml": "pyproject.toml"}
LOG = WORK / "mutmut.log"
# Caught: a test failed, or the tests ran past mutmut's CPU limit (SIGXCPU, then SIGKILL).
DETECTED = {"killed", "timeout", "segfault"}


def cores() -> dict[str, Path]:
    """Dotted module name -> path under .mutmut, from only_mutate."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    out = {}
    for pattern in config["only_mutate"]:
        path = Path(pattern)
        out[".".join(path.with_suffix("").parts[1:])] = path
    return out


def select(names: list[str], known: dict[str, Path]) -> list[str]:
    if not names:
        return list(known)
    chosen = []
    for name in names:
        dotted = name.removesuffix(".py").replace("/", ".")
        dotted = dotted.removeprefix("services.").removeprefix("xenlab.")
        matches = [m for m in known if m == f"xenlab.{dotted}" or m.endswith(f".{dotted}")]
        if len(matches) != 1:
            hint = "matches " + ", ".join(matches) if matches else "is not a core"
            sys.exit(f"mutate: {name} {hint}; the cores: {', '.join(known)}")
        chosen.append(matches[0])
    return chosen


def prepare() -> None:
    WORK.mkdir(exist_ok=True)
    for link, target in LINKS.items():
        path = WORK / link
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(Path("..") / target)
    shutil.rmtree(WORK / "mutants", ignore_errors=True)


def run_mutmut(modules: list[str], max_children: int) -> int:
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children),
           *(f"{m}.*" for m in modules)]
    with open(LOG, "w") as log:
        return subprocess.run(cmd, cwd=WORK, stdout=log, stderr=subprocess.STDOUT).returncode


@dataclass
class Survivor:
    name: str
    status: str
    where: str
    before: str
    after: str


@dataclass
class Score:
    module: str
    counts: Counter = field(default_factory=Counter)
    survivors: list[Survivor] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def detected(self) -> int:
        return sum(self.counts[s] for s in DETECTED)

    @property
    def percent(self) -> float:
        return 100.0 * self.detected / self.total if self.total else 100.0


def function_span(source: str, function: str, cls: str | None) -> tuple[int, int]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and cls and node.name == cls:
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == function:
                    return item.lineno, item.end_lineno
        if not cls and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            return node.lineno, node.end_lineno
    return 1, len(source.splitlines())


def describe(name: str, path: Path, lines: list[str], source: str) -> tuple[str, str, str]:
    """file:line, and the changed line before and after the mutation."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    diff = get_diff_for_mutant(name, path=path).splitlines()[2:]
    removed = [d[1:].strip() for d in diff if d.startswith("-")]
    added = [d[1:].strip() for d in diff if d.startswith("+")]
    function, cls = orig_function_and_class_names_from_key(name)
    first, last = function_span(source, function, cls)
    rel = Path(*path.parts[2:])          # src/xenlab/xen/ring.py -> xen/ring.py
    line = first
    if removed:
        for number in range(first, last + 1):
            if lines[number - 1].strip() == removed[0]:
                line = number
                break
    return f"{rel}:{line}", " ".join(removed), " ".join(added)


def collect(modules: list[str], known: dict[str, Path]) -> list[Score]:
    os.chdir(WORK)
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    scores = []
    for module in modules:
        path = known[module]
        data = SourceFileMutationData(path=path)
        data.load()
        source = path.read_text()
        lines = source.splitlines()
        score = Score(module)
        for name, code in sorted(data.exit_code_by_key.items(), key=lambda kv: _order(kv[0])):
            status = status_by_exit_code[code]
            score.counts[status] += 1
            if status not in DETECTED:
                where, before, after = describe(name, path, lines, source)
                score.survivors.append(Survivor(name, status, where, before, after))
        scores.append(score)
    return scores


def _order(name: str) -> tuple[str, int]:
    base, _, number = name.rpartition("__mutmut_")
    return base, int(number) if number.isdigit() else 0


def report(scores: list[Score], seconds: float, fail_under: float) -> bool:
    ok = True
    width = max(len(s.module) for s in scores)
    print(f"\n{'module':<{width}}  {'mutants':>7}  {'killed':>6}  {'survived':>8}  "
          f"{'timeout':>7}  {'no tests':>8}  {'other':>5}  score")
    for s in scores:
        other = s.total - sum(s.counts[k] for k in ("killed", "survived", "timeout", "no tests"))
        flag = "" if s.percent >= fail_under else f"  < {fail_under:g}%"
        ok = ok and not flag
        print(f"{s.module:<{width}}  {s.total:>7}  {s.counts['killed']:>6}  {s.counts['survived']:>8}  "
              f"{s.counts['timeout']:>7}  {s.counts['no tests']:>8}  {other:>5}  {s.percent:5.1f}%{flag}")
    total = sum(s.total for s in scores)
    detected = sum(s.detected for s in scores)
    print(f"{'all':<{width}}  {total:>7}  {'':>6}  {'':>8}  {'':>7}  {'':>8}  {'':>5}  "
          f"{100.0 * detected / total if total else 100.0:5.1f}%   ({seconds:.0f} s)")
    for s in scores:
        if s.survivors:
            print(f"\n{s.module}: {len(s.survivors)} not caught")
        for v in s.survivors:
            print(f"  {v.where}  {v.status}  {v.name}")
            print(f"      - {v.before}")
            print(f"      + {v.after}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="cores to mutate (default: all)")
    parser.add_argument("--fail-under", type=float, default=90.0,
                        help="exit 1 when a module scores under this percentage (default 90)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2,
                        help="mutants tested at once (default: the number of CPUs)")
    args = parser.parse_args()
    known = cores()
    modules = select(args.modules, known)
    prepare()
    print(f"mutating {', '.join(modules)} (mutmut's log: {LOG.relative_to(ROOT)})", flush=True)
    start = time.monotonic()
    code = run_mutmut(modules, args.max_children)
    seconds = time.monotonic() - start
    if code:
        print(LOG.read_text()[-4000:], file=sys.stderr)
        print(f"mutate: mutmut exited {code}", file=sys.stderr)
        return code
    return 0 if report(collect(modules, known), seconds, args.fail_under) else 1


if __name__ == "__main__":
    sys.exit(main())
