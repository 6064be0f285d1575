"""`xenlab up`, `xenlab down`, `xenlab status`."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from xenlab.cli.main import main as xenlab_cli
from xenlab.lab import view
from xenlab.lab.pool import Pool
from xenlab.lab.runner import Lab, LabError, reclaim
from xenlab.lab.spec import demo_lab, load_lab
from xenlab.launchers.domains_dir import add_domain_uids_argument
from xenlab.osutil import on_stop_signal
from xenlab.rundir import UP_LOG, Rundir, RundirError, RundirMissing
from xenlab.xen.errors import ConfigError

RUNDIR_HELP = ("where sockets, state and logs go (default $XENLAB_RUNDIR, else "
               "$XDG_RUNTIME_DIR/xenlab, else /tmp/xenlab-UID)")
DOWN_GRACE = 5.0        # seconds to wait for processes killed by `down --force`


def up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start a lab (the demo lab when no file is given) and keep it up until Ctrl-C, "
        "SIGTERM or `xenlab down`. A rundir whose lab was killed (kill -9) is cleaned up "
        "first, saying so. Ctrl-C or SIGTERM while it starts stops it and removes what "
        "it made (exit 130 / 143).")
    parser.add_argument("lab", nargs="?", type=Path,
                        help="a lab file (TOML); without one, the built-in demo lab: three domUs on xenbr0")
    parser.add_argument("--rundir", type=Path, default=None, help=RUNDIR_HELP)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for every vif to connect (default 120)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log level of the services (their logs go to RUNDIR/logs)")
    parser.add_argument("--detach", action="store_true",
                        help="return once the lab is up, leaving it running (stop it with "
                             "`xenlab down`); its output goes to RUNDIR/up.log")
    # --detach runs `xenlab up --ready-fd N` in the background: it writes
    # "up" to descriptor N once the lab is up (a pipe; closed unwritten if
    # it failed).
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    add_domain_uids_argument(parser)


def _progress_printer():
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - started:.1f}s] {text}", flush=True)
    return progress


def _rundir_flag(args) -> str:
    """` --rundir R` for hints, when R is not the one commands find alone."""
    default = getattr(args, "default_rundir", None)
    run = Rundir(args.rundir)
    return "" if default is not None and Rundir(default).path == run.path else f" --rundir {run.path}"


def _hints(spec, args) -> str:
    run = Rundir(args.rundir)
    flag = _rundir_flag(args)
    first = spec.domains[0].name if spec.domains else "DOMAIN"
    stop = f"`xenlab down{flag}`" if args.ready_fd is not None else f"Ctrl-C or `xenlab down{flag}`"
    return (f"\nrundir {run.path}; logs in {run.logs}. Try: xenlab ping {first} ADDRESS{flag}, "
            f"xenlab xl list{flag}, xenlab status{flag}. Stop with {stop}.")


def _say_warnings(spec) -> None:
    """What xl create would warn about each domain's config (a key xl knows
    that xenlab does not act on), said before anything starts."""
    for domain in spec.domains:
        for warning in domain.warnings:
            print(warning, file=sys.stderr, flush=True)


async def _up(args) -> int:
    spec = load_lab(args.lab) if args.lab else demo_lab()
    if args.ready_fd is None:       # detached, _detach has said them
        _say_warnings(spec)
    if spec.hosts:
        return await _up_pool(args, spec)
    progress = _progress_printer()
    detached = args.ready_fd is not None
    lab = Lab(spec, args.rundir, log_level=args.log_level, progress=progress,
              remove_on_failure=True, keep=(UP_LOG,) if detached else (),
              domain_uids=args.domain_uids)
    stop = asyncio.Event()
    received = on_stop_signal(stop.set)
    if not await _started(lab.up(timeout=args.timeout), stop):
        await lab.discard()        # in case it came up in the same instant
        print(f"xenlab up: {signal.Signals(received.signum).name} while starting: the lab is "
              f"down and what it made in {Rundir(args.rundir).path} is removed", file=sys.stderr)
        return received.exit_status
    print(await lab.summary(), flush=True)
    print(_hints(spec, args), flush=True)
    return await _until_stopped(lab, "lab", args, stop, progress)


async def _until_stopped(running, what: str, args, stop: asyncio.Event, progress) -> int:
    """Up: say so on --ready-fd (a detached start waits for it), run until
    a stop signal or `xenlab down`, then take ``running`` (a lab or a pool)
    down."""
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"up\n")
        os.close(args.ready_fd)
    await stop.wait()
    progress(f"stopping the {what}")
    await running.down()
    progress("stopped")
    return 0


async def _started(up, stop: asyncio.Event) -> bool:
    """Await ``up`` (a lab's or a pool's) unless ``stop`` is set first:
    a stop signal before it is up stops the start-up itself (False; the
    caller takes down what came up). Its failure is raised."""
    starting = asyncio.create_task(up)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        return False
    stopped.cancel()
    starting.result()
    return True


async def _up_pool(args, spec) -> int:
    """A lab file with [[host]] tables: each host a lab in a network
    namespace of its own (xenlab.lab.pool), up until Ctrl-C, SIGTERM, or
    `xenlab down` on its rundir (or any host's); with --detach, in the
    background as a lab is."""
    progress = _progress_printer()
    run = Rundir(args.rundir)
    pool = Pool(spec, run.path, log_level=args.log_level, progress=progress,
                domain_uids=args.domain_uids)
    stop = asyncio.Event()
    received = on_stop_signal(stop.set)
    if not await _started(pool.up(timeout=args.timeout), stop):
        await pool.down()
        print(f"xenlab up: {signal.Signals(received.signum).name} while starting: the pool is down",
              file=sys.stderr)
        return received.exit_status
    print(await pool.summary(), flush=True)
    first = spec.hosts[0].name
    print(f"\nrundir {run.path}: one per host under hosts/. Reach a host with --rundir "
          f"{pool.host_rundir(first)} (xenlab xl list, xenlab ping DOMAIN ADDRESS, ...). "
          f"Stop with {'' if args.ready_fd is not None else 'Ctrl-C or '}"
          f"`xenlab down --rundir {run.path}`.", flush=True)
    return await _until_stopped(pool, "pool", args, stop, progress)


def up(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.detach:
        return _detach(args)
    if args.ready_fd is not None:
        os.set_inheritable(args.ready_fd, False)
    try:
        return asyncio.run(_up(args))
    except ConfigError as err:
        print(f"xenlab up: {err.message}", file=sys.stderr)
    except (LabError, RundirError) as err:
        print(f"xenlab up: {err}", file=sys.stderr)
    except KeyboardInterrupt:        # before the loop took the signals over
        return 128 + signal.SIGINT
    return 1


# -- up --detach ---------------------------------------------------------------------------
class _Echo:
    """Copies what the background `xenlab up` writes to up.log, line by
    line, as it comes: its progress to stdout; from its error on (a line
    `xenlab up: ...`, or a traceback) to stderr."""

    def __init__(self, fd: int):
        self.fd = fd
        self.partial = b""
        self.out = sys.stdout

    def pump(self, final: bool = False) -> None:
        while chunk := os.read(self.fd, 65536):
            self.partial += chunk
        *lines, self.partial = self.partial.split(b"\n")
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        for line in lines:
            text = line.decode(errors="replace")
            if text.startswith(("xenlab up: ", "Traceback ")):
                self.out = sys.stderr
            print(text, file=self.out, flush=True)


def _detach(args) -> int:
    """Run `xenlab up` in the background, echo its progress, and return
    once it says the lab is up (or failed)."""
    run = Rundir(args.rundir)
    progress = _progress_printer()
    try:
        if args.lab:
            # A mistake in it is said here, before anything is made.
            _say_warnings(load_lab(args.lab))
        made = run.create()
        # Here, not only in the background: a lab running there is refused
        # before anything is written, and a clean-up is said on the terminal.
        with run.lock():
            reclaim(run, progress=progress)
            log_fd = run.open_new(UP_LOG)
        reader = run.open_read(UP_LOG)
    except ConfigError as err:
        print(f"xenlab up: {err.message}", file=sys.stderr)
        return 1
    except (LabError, RundirError) as err:
        print(f"xenlab up: {err}", file=sys.stderr)
        return 1
    ready_r, ready_w = os.pipe()
    cmd = [sys.executable, "-m", "xenlab.cli.main", "up", "--rundir", str(run.path),
           "--timeout", str(args.timeout), "--log-level", args.log_level, "--ready-fd", str(ready_w),
           "--domain-uids", args.domain_uids]
    if args.lab:
        cmd.append(str(args.lab))
    echo = _Echo(reader)
    interrupted = 0
    proc = None

    def forward(signum, frame) -> None:
        # It runs in a session of its own: the terminal's Ctrl-C reaches
        # only this process, which passes it on; it then stops the start-up.
        nonlocal interrupted
        interrupted = interrupted or signum
        if proc is not None:
            proc.send_signal(signum)
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline = time.monotonic() + args.timeout + 60
    ready = False
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                                start_new_session=True, pass_fds=(ready_w,))
        os.close(log_fd)
        os.close(ready_w)
        if interrupted:
            proc.send_signal(interrupted)
        while True:
            readable, _, _ = select.select([ready_r], [], [], 0.1)
            echo.pump()
            if readable:
                ready = os.read(ready_r, 16).startswith(b"up")
                break
            if time.monotonic() > deadline and not interrupted:
                print(f"xenlab up: the lab did not come up in {args.timeout + 60:g}s; stopping it",
                      file=sys.stderr)
                forward(signal.SIGTERM, None)
        if not ready:
            status = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(ready_r)
    echo.pump(final=True)
    os.close(reader)
    if ready:
        print(f"(in the background as process {proc.pid}; its output goes on in {run.up_log})")
        return 0
    # It removed what it made but up.log, which was this process's to show.
    run.remove(UP_LOG)
    if made:
        try:
            os.rmdir(run.path)
        except OSError:
            pass
    if interrupted:
        return 128 + interrupted
    return status if status > 0 else 1


# -- down ------------------------------------------------------------------------------------
def down_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Stop the lab that `xenlab up` runs in the rundir (SIGTERM to its `xenlab up`, which "
        "destroys the domains and stops every service), and wait for it. A lab whose processes "
        "were killed is cleaned up: its rundir's files and sockets, its domains' memory "
        "segments. With no lab there, it says so and exits 0.")
    parser.add_argument("--rundir", type=Path, default=None, help=RUNDIR_HELP)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    parser.add_argument("--force", action="store_true",
                        help="if the lab has not stopped within --timeout, kill (SIGKILL) every "
                             "process it recorded, then clean up as for a killed lab")


def down(args) -> int:
    run = Rundir(args.rundir)
    try:
        survey = run.survey()
    except RundirMissing:
        print(f"no lab is running in {run.path}")
        return 0
    except RundirError as err:
        print(f"xenlab down: {err}", file=sys.stderr)
        return 1
    if not survey.processes:
        hosts = _pool_hosts(run)
        if hosts:
            # A pool: its runner is recorded in each host's rundir.
            status = max(down(argparse.Namespace(**{**vars(args), "rundir": host})) for host in hosts)
            left = asyncio.run(Pool.remove_namespaces(run.path)) if shutil.which("ip") else []
            if left:
                print(f"removed the network namespaces the pool left: {', '.join(left)}")
            return status
        print(f"no lab is running in {run.path}")
        return 0
    what = survey.describe()
    elsewhere = [n for n, p in survey.running.items() if not p.local]
    if elsewhere:
        print(f"xenlab down: {what} runs in another pid namespace ({', '.join(elsewhere)}): "
              f"stop it from there", file=sys.stderr)
        return 1
    if survey.stale:
        cleaned = _clean_stale(run)
        if cleaned is not None:
            print(f"{what} was not running (its processes were gone: killed?); "
                  f"cleaned up {run.path}: {cleaned}")
            return 0
        survey = run.survey()       # a new lab claimed it meanwhile
        what = survey.describe()
    # The runner stops its own services; without one, each is stopped.
    runner = survey.running.get("runner")
    for process in [runner] if runner else list(survey.running.values()):
        process.signal(signal.SIGTERM)
    killed = False
    if not _wait_gone(survey, args.timeout):
        left = ", ".join(n for n, p in survey.processes.items() if p.running())
        if not args.force:
            print(f"xenlab down: {what} is still stopping after {args.timeout:g}s ({left}); "
                  f"`xenlab down --force` kills it", file=sys.stderr)
            return 1
        for process in survey.processes.values():
            process.signal(signal.SIGKILL)
        killed = True
        if not _wait_gone(survey, DOWN_GRACE):
            print(f"xenlab down: {what} still runs after SIGKILL", file=sys.stderr)
            return 1
    message = f"{what} {'killed' if killed else 'stopped'}"
    try:
        cleaned = _clean_stale(run)
    except FileNotFoundError:
        cleaned = None          # stopped while starting: it removed its rundir itself
    if cleaned is not None:
        message += f"; cleaned up {run.path}: {cleaned}"
    print(message)
    return 0


def _pool_hosts(run: Rundir) -> list[Path]:
    """The hosts' rundirs of a pool whose rundir this is (RUNDIR/hosts/NAME)."""
    hosts = run.path / "hosts"
    return sorted(p for p in hosts.iterdir() if p.is_dir()) if hosts.is_dir() else []


def _clean_stale(run: Rundir):
    """Clean what a lab whose processes are all gone left; None if something
    recorded runs (again: a new `xenlab up` may have claimed it since)."""
    with run.lock():
        return run.clean() if run.survey().stale else None


def _wait_gone(survey, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(p.running() for p in survey.processes.values()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# -- status ----------------------------------------------------------------------------------
def status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rundir", type=Path, default=None, help=RUNDIR_HELP)
    parser.add_argument("--json", action="store_true",
                        help="one JSON document: the processes, where the hypervisor, xenstored, "
                             "every bridge and every guest agent listen (with the agent's token), "
                             "each bridge's ports and counters (README: Inspecting a lab)")


def status(args) -> int:
    run = Rundir(args.rundir)
    try:
        survey = run.survey()
    except RundirMissing:
        print(f"no lab is running in {run.path}")
        return 3
    except RundirError as err:
        print(f"xenlab status: {err}", file=sys.stderr)
        return 1
    state = survey.lab
    if not state:
        hosts = _pool_hosts(run)
        if hosts and not args.json:
            # A pool: each host's status, in turn.
            codes = []
            for host in hosts:
                print(f"== host {host.name} (--rundir {host}) ==")
                codes.append(status(argparse.Namespace(**{**vars(args), "rundir": host})))
                print()
            return max(codes)
        print(f"no lab is running in {run.path}")
        return 3
    alive = "runner" in survey.running
    if args.json:
        return _status_json(run, state, survey, alive)
    phase = state.get("state", "up") if alive else "NOT RUNNING"
    print(f"lab {state.get('name')} ({state.get('source')}): {phase}, process {state.get('pid')}, "
          f"started {time.ctime(state.get('started', 0))}")
    for name, process in survey.processes.items():
        print(f"  {name:<12} pid {process.pid:<8} {'running' if name in survey.running else 'gone'}")
    if survey.stale:
        print(f"its processes are gone (killed?): `xenlab up` or `xenlab down` cleans {run.path}")
    if not alive:
        return 3
    xenstored = Rundir(args.rundir).xenstored_socket
    if xenstored.exists():
        # for Xen's own tools: export it, then xenstore-ls, xenstore-watch...
        print(f"\nXENSTORED_PATH={xenstored}")
    print()
    xenlab_cli(["xl", "--rundir", str(run.path), "list"])
    domids = state.get("domains", {})
    if domids:
        print()
        # By name: a domain restored (xl restore) or restarted has another id.
        xenlab_cli(["xl", "--rundir", str(run.path), "network-list", *domids])
    try:
        lab_view = asyncio.run(view.gather(run))
    except (grpc.aio.AioRpcError, RundirError) as err:
        print(f"\nxenlab status: cannot ask the lab's services: {err}", file=sys.stderr)
        return 1
    if lab_view.bridges:
        print("\n" + view.bridges_text(lab_view))
        print(f"(the FDB: xenlab bridge fdb show{_rundir_flag(args)}; addresses: "
              f"xenlab status --json{_rundir_flag(args)})")
    return 0


def _status_json(run: Rundir, state: dict, survey, alive: bool) -> int:
    doc = {"lab": state.get("name"), "source": state.get("source"), "rundir": str(run.path),
           "state": state.get("state", "up") if alive else "not running",
           "mqtt": state.get("mqtt") or None,
           "processes": {name: {"pid": p.pid, "running": name in survey.running}
                         for name, p in survey.processes.items()}}
    status = 0 if alive else 3
    if alive:
        try:
            lab_view = asyncio.run(view.gather(run))
        except (grpc.aio.AioRpcError, RundirError) as err:
            doc["error"] = f"cannot ask the lab's services: {err}"
            status = 1
        else:
            doc.update(hypervisor=lab_view.hypervisor, xenstored=lab_view.xenstored,
                       bridges=lab_view.bridges, domains=lab_view.domains)
    print(json.dumps(doc, indent=2))
    return status
