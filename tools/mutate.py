"""Mutation testing of the protocol cores: ``./dev mutate [MODULE...]``.

    ./dev mutate                    # every core in pyproject's [tool.mutmut] only_mutate
    ./dev mutate ring arp           # some of them (a name, xen/ring.py or xenlab.xen.ring)
    ./dev mutate --fail-under 0 ring

mutmut 3 copies the code into a mutants/ tree and can import it back only from
the ".", "src/" or "source/" layouts, so the run happens in .mutmut/, where
src/, tests/ and pyproject.toml are links to the repository's. Each run starts
from a fresh tree: mutmut keeps earlier verdicts and would not retest a
survivor that a new test kills, nor notice a test that now calls a function.

It prints, per module, the mutants killed, survived, timed out, untested and
equivalent, and the score: killed and timed out over all but the equivalent
ones, which pyproject's [tool.xenlab.mutate] equivalent lists, each with why.
Then every mutant no test caught, as file:line with the line before and after,
and any listed equivalent that no longer survives. ``cd .mutmut`` then
``mutmut show NAME`` gives a whole diff, ``mutmut browse`` the rest.
Exit status 1 when a module scores under --fail-under (90), or a listed
equivalent did not survive (the list is then wrong or stale).
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


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]


def cores() -> dict[str, Path]:
    """Dotted module name -> path under .mutmut, from only_mutate."""
    out = {}
    for pattern in pyproject()["mutmut"]["only_mutate"]:
        path = Path(pattern)
        out[".".join(path.with_suffix("").parts[1:])] = path
    return out


@dataclass(frozen=True)
class Equivalent:
    """A mutant that behaves as the original: the changed line before and after."""
    file: str           # under services/xenlab, as the survivors are printed
    before: str
    after: str
    why: str


def equivalents() -> list[Equivalent]:
    return [Equivalent(**e) for e in pyproject()["xenlab"]["mutate"]["equivalent"]]


def functions() -> dict[str, list[str]]:
    """Dotted module -> the only functions of it that are a core ("name" or
    "Class.method"); a module not named here is mutated whole."""
    return pyproject()["xenlab"]["mutate"].get("functions", {})


def mangled(function: str) -> str:
    """mutmut's name for a function: x_name, or xǁClassǁmethod."""
    cls, _, name = function.rpartition(".")
    return f"xǁ{cls}ǁ{name}" if cls else f"x_{name}"


def patterns(modules: list[str], only: dict[str, list[str]]) -> list[str]:
    """mutmut run's mutant-name patterns. A pattern must also match the
    function's own mangled name (without __mutmut_N): mutmut picks the clean
    run's tests by it."""
    out = []
    for m in modules:
        if m in only:
            out += [f"{m}.{mangled(f)}*" for f in only[m]]
        else:
            out.append(f"{m}.*")
    return out


def in_scope(name: str, module: str, only: dict[str, list[str]]) -> bool:
    if module not in only:
        return True
    base = name.partition("__mutmut_")[0].removeprefix(module + ".")
    return base in {mangled(f) for f in only[module]}


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


def prepare(fresh: bool = True) -> None:
    WORK.mkdir(exist_ok=True)
    for link, target in LINKS.items():
        path = WORK / link
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(Path("..") / target)
    if fresh:
        shutil.rmtree(WORK / "mutants", ignore_errors=True)


def not_caught(modules: list[str], known: dict[str, Path]) -> list[str]:
    """The mutants of `modules` the last run did not catch, by name."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    here, only, names = os.getcwd(), functions(), []
    os.chdir(WORK)
    try:
        for module in modules:
            data = SourceFileMutationData(path=known[module])
            data.load()
            names += [name for name, code in data.exit_code_by_key.items()
                      if in_scope(name, module, only) and status_by_exit_code[code] not in DETECTED]
    finally:
        os.chdir(here)
    return names


def run_mutmut(modules: list[str], max_children: int, names: list[str] | None = None) -> int:
    # Named mutants are retested even when they have a verdict; patterns
    # match every mutant of the module (a fresh tree has no verdicts).
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children),
           *(names if names is not None else patterns(modules, functions()))]
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
    def catchable(self) -> int:
        return self.total - self.counts["equivalent"]

    @property
    def percent(self) -> float:
        return 100.0 * self.detected / self.catchable if self.catchable else 100.0


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


def collect(modules: list[str], known: dict[str, Path],
            listed: list[Equivalent]) -> tuple[list[Score], list[Equivalent], list[Equivalent]]:
    """The scores, the listed equivalents found, and those that did not survive."""
    os.chdir(WORK)
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    scores, matched, unmatched = [], [], [e for e in listed if _module_of(e) in modules]
    only = functions()
    for module in modules:
        path = known[module]
        data = SourceFileMutationData(path=path)
        data.load()
        source = path.read_text()
        lines = source.splitlines()
        score = Score(module)
        for name, code in sorted(data.exit_code_by_key.items(), key=lambda kv: _order(kv[0])):
            if not in_scope(name, module, only):
                continue
            status = status_by_exit_code[code]
            if status not in DETECTED:
                where, before, after = describe(name, path, lines, source)
                file = where.rpartition(":")[0]
                match = next((e for e in unmatched if (e.file, e.before, e.after) ==
                              (file, before, after)), None)
                if match:
                    unmatched.remove(match)
                    matched.append(match)
                    status = "equivalent"
                else:
                    score.survivors.append(Survivor(name, status, where, before, after))
            score.counts[status] += 1
        scores.append(score)
    return scores, matched, unmatched


def _module_of(e: Equivalent) -> str:
    return "xenlab." + e.file.removesuffix(".py").replace("/", ".")


def _order(name: str) -> tuple[str, int]:
    base, _, number = name.rpartition("__mutmut_")
    return base, int(number) if number.isdigit() else 0


COLUMNS = ("killed", "survived", "timeout", "no tests", "equivalent")


def report(scores: list[Score], matched: list[Equivalent], unmatched: list[Equivalent],
           seconds: float, fail_under: float) -> bool:
    ok = True
    width = max(len(s.module) for s in scores)
    print(f"\n{'module':<{width}}  mutants  killed  survived  timeout  no tests  "
          f"equivalent  other  score")
    for s in scores:
        other = s.total - sum(s.counts[k] for k in COLUMNS)
        flag = "" if s.percent >= fail_under else f"  < {fail_under:g}%"
        ok = ok and not flag
        print(f"{s.module:<{width}}  {s.total:>7}  {s.counts['killed']:>6}  "
              f"{s.counts['survived']:>8}  {s.counts['timeout']:>7}  {s.counts['no tests']:>8}  "
              f"{s.counts['equivalent']:>10}  {other:>5}  {s.percent:5.1f}%{flag}")
    total = sum(s.total for s in scores)
    catchable = sum(s.catchable for s in scores)
    detected = sum(s.detected for s in scores)
    print(f"{'all':<{width}}  {total:>7}  {'':>6}  {'':>8}  {'':>7}  {'':>8}  {'':>10}  "
          f"{'':>5}  {100.0 * detected / catchable if catchable else 100.0:5.1f}%   "
          f"({seconds:.0f} s)")
    if matched:
        print("\nequivalent, so not scored (pyproject's [tool.xenlab.mutate]):")
    for e in matched:
        print(f"  {e.file}: {e.before}  ->  {e.after}\n      {e.why}")
    for e in unmatched:
        print(f"\nlisted as equivalent but not among the survivors (caught, or the line "
              f"changed): {e.file}\n      - {e.before}\n      + {e.after}")
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
    parser.add_argument("--survivors", action="store_true",
                        help="retest only what the last run of these modules did not catch, "
                             "keeping its tree: its kills stand, which holds while tests are "
                             "only added, not weakened (new tests are found)")
    args = parser.parse_args()
    known = cores()
    listed = equivalents()
    modules = select(args.modules, known)
    retest = None
    if args.survivors:
        if not (WORK / "mutants").is_dir():
            sys.exit("mutate: --survivors needs an earlier run's tree in .mutmut/mutants")
        retest = not_caught(modules, known)
    prepare(fresh=retest is None)
    only = functions()
    names = [f"{m} ({', '.join(only[m])} only)" if m in only else m for m in modules]
    what = f"the {len(retest)} survivors of " if retest is not None else ""
    print(f"mutating {what}{', '.join(names)} (mutmut's log: {LOG.relative_to(ROOT)})", flush=True)
    start = time.monotonic()
    code = run_mutmut(modules, args.max_children, retest) if retest != [] else 0
    seconds = time.monotonic() - start
    if code:
        print(LOG.read_text()[-4000:], file=sys.stderr)
        print(f"mutate: mutmut exited {code}", file=sys.stderr)
        return code
    scores, matched, unmatched = collect(modules, known, listed)
    ok = report(scores, matched, unmatched, seconds, args.fail_under)
    return 0 if ok and not unmatched else 1


if __name__ == "__main__":
    sys.exit(main())
