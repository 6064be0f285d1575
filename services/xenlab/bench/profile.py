"""Where the time goes: py-spy attached to every process of the lab while one
extra (unmeasured) blast runs, and a summary of its samples.

py-spy (https://github.com/benfred/py-spy, on PyPI) samples a running
Python process from outside, without changing it; ``--nonblocking`` keeps
it from pausing the process to sample. Idle threads (an event loop waiting
in epoll) are left out, so the shares are of the CPU each process used.
Each process's samples are summed by function ("self": the innermost
frame), by area (the innermost frame's module: a xenlab module, or grpc,
protobuf, asyncio), and by xenlab function on the stack ("inclusive");
samples in the event loop itself are counted apart (see ``summarise``).
The CPU share of each process comes from /proc schedstat (``labs.SchedMeter``), which
py-spy's samples do not give reliably under uvloop.
"""
from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
from pathlib import Path

from xenlab.xen.digits import is_decimal

RATE = 500                      # samples per second
WARMUP = 1.0                    # seconds for py-spy to attach to a process
# Innermost frames that are the event loop or an idle thread, not Python
# work: uvloop runs its loop in C, so py-spy shows the waiting and the loop's
# own work as Runner.run (it cannot always tell waiting in epoll from work).
LOOP_FRAMES = {("Runner.run", "asyncio"), ("run_forever", "asyncio"), ("_run_once", "asyncio"),
               ("select", "selectors"), ("EpollSelector.select", "selectors"),
               ("Thread.run", "threading.py"), ("_worker", "thread.py"), ("wait", "threading.py")}
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def find_py_spy(explicit: str | None = None) -> str | None:
    return explicit if explicit and Path(explicit).exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, py_spy: str, outdir: Path, rate: int = RATE):
        self.py_spy = py_spy
        self.outdir = outdir
        self.rate = rate
        self.warmup = WARMUP
        self.procs: dict[str, subprocess.Popen] = {}
        self.files: dict[str, Path] = {}

    def start(self, pids: dict[str, int]) -> None:
        self.outdir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            out = self.outdir / f"{name}.folded"
            self.files[name] = out
            self.procs[name] = subprocess.Popen(
                [self.py_spy, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw",
                 "--nonblocking", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)      # py-spy writes its output on SIGINT
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def summaries(self, top: int = 12) -> dict[str, dict]:
        return {name: summarise(path.read_text() if path.exists() else "", top)
                for name, path in self.files.items()}


def _parse(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip(), ""
    return m.group("func"), m.group("file")


def area(path: str) -> str:
    """What a frame's file belongs to: a xenlab module, or the library."""
    # py-spy shortens paths to what follows the sys.path entry: "xenlab/net/veth.py".
    p = "/" + path.replace("\\", "/").lstrip("/")
    if "/xenlab/" in p:
        return "xenlab." + p.rsplit("/xenlab/", 1)[1].removesuffix(".py").replace("/", ".")
    for lib in ("grpc", "google/protobuf", "asyncio", "uvloop", "selectors", "socket", "json", "logging"):
        if f"/{lib}/" in p or p.endswith(f"/{lib}.py"):
            return lib.replace("google/", "")
    return Path(p).name or "?"


def _entry(func: str, where: str) -> bool:
    """A process's entry frames (the command line, the event loop's start):
    on every stack, so they say nothing."""
    return (where in ("xenlab.cli.main", "xenlab.eventloop") or where.endswith(".__main__")
            or where.startswith("xenlab.boot."))


def summarise(folded: str, top: int = 12) -> dict:
    """From py-spy's raw (folded) output: total samples, and those in the
    event loop itself (LOOP_FRAMES); of the others (``work_samples``, the
    base of every percentage): the top functions by self samples (the
    innermost frame), the samples by the innermost frame's area, and the
    xenlab functions by inclusive samples (on the stack at all), which is
    where a process's time goes from xenlab's point of view."""
    total = loop = 0
    by_self: collections.Counter = collections.Counter()
    by_area: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not is_decimal(count):
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        func, path = _parse(frames[-1])
        if (func, area(path)) in LOOP_FRAMES:
            loop += n
            continue
        by_self[f"{func} ({area(path)})"] += n
        by_area[area(path)] += n
        seen = set()
        for frame in frames:
            f, p = _parse(frame)
            where = area(p)
            if where.startswith("xenlab.") and not _entry(f, where) and (f, where) not in seen:
                seen.add((f, where))
                inclusive[f"{f} ({where})"] += n
    work = total - loop

    def share(counter):
        return [{"name": k, "samples": v, "percent": round(100.0 * v / work, 1)}
                for k, v in counter.most_common(top)] if work else []
    return {"samples": total, "loop_samples": loop, "work_samples": work,
            "top_self": share(by_self), "by_area": share(by_area),
            "top_inclusive_xenlab": share(inclusive)}
