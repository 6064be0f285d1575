"""`xenlab up`, `xenlab down`, `xenlab status`."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from xenlab.client import Rundir
from xenlab.lab.runner import Lab, LabError, read_state, _alive
from xenlab.lab.spec import demo_lab, load_lab
from xenlab.osutil import on_stop_signal
from xenlab.xen.errors import ConfigError


def up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lab", nargs="?", type=Path,
                        help="a lab file (TOML); without one, the built-in demo lab: three domUs on xenbr0")
    parser.add_argument("--rundir", type=Path, default=None,
                        help="where sockets, state and logs go (default $XENLAB_RUNDIR or /tmp/xenlab-UID)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for every vif to connect (default 120)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log level of the services (their logs go to RUNDIR/logs)")
    parser.add_argument("--detach", action="store_true",
                        help="return once the lab is up, leaving it running (stop it with `xenlab down`)")


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def _up(args) -> int:
    spec = load_lab(args.lab) if args.lab else demo_lab()
    lab = Lab(spec, args.rundir, log_level=args.log_level, progress=_progress)
    stop = asyncio.Event()
    on_stop_signal(stop.set)
    await lab.up(timeout=args.timeout)
    print(await lab.summary(), flush=True)
    print(f"\nrundir {args.rundir}; logs in {args.rundir}/logs. "
          f"Try: xenlab ping {spec.domains[0].name if spec.domains else 'DOMAIN'} ADDRESS, "
          f"xenlab xl list, xenlab status. Stop with Ctrl-C or `xenlab down`.", flush=True)
    await stop.wait()
    _progress("stopping the lab")
    await lab.down()
    _progress("stopped")
    return 0


def up(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.detach:
        return _detach(args)
    try:
        return asyncio.run(_up(args))
    except ConfigError as err:
        print(f"xenlab up: {err.message}", file=sys.stderr)
    except LabError as err:
        print(f"xenlab up: {err}", file=sys.stderr)
    return 1


def _detach(args) -> int:
    """Run `xenlab up` in the background and wait until it reports up."""
    import subprocess
    cmd = [sys.executable, "-m", "xenlab.cli.main", "up", "--rundir", str(args.rundir),
           "--timeout", str(args.timeout), "--log-level", args.log_level]
    if args.lab:
        cmd.append(str(args.lab))
    args.rundir.mkdir(parents=True, exist_ok=True)
    out = open(args.rundir / "up.log", "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + args.timeout + 30
    while time.monotonic() < deadline:
        state = read_state(args.rundir)
        if state and state.get("pid") == proc.pid:
            print(f"lab {state['name']} is up (process {proc.pid}); `xenlab status` shows it, "
                  f"`xenlab down` stops it")
            return 0
        if proc.poll() is not None:
            print((args.rundir / "up.log").read_text()[-4000:], file=sys.stderr)
            return 1
        time.sleep(0.2)
    proc.terminate()
    print("xenlab up: the lab did not come up in time; see " + str(args.rundir / "up.log"), file=sys.stderr)
    return 1


def down_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rundir", type=Path, default=None, help="the lab's rundir")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")


def down(args) -> int:
    state = read_state(args.rundir)
    if not state or not _alive(state.get("pid", 0)):
        print(f"xenlab down: no lab is running in {args.rundir}", file=sys.stderr)
        return 1
    pid = state["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        print(f"xenlab down: the lab (process {pid}) is still stopping after {args.timeout:g}s", file=sys.stderr)
        return 1
    print(f"lab {state['name']} stopped")
    return 0


def status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rundir", type=Path, default=None, help="the lab's rundir")


def status(args) -> int:
    state = read_state(args.rundir)
    if not state:
        print(f"no lab is running in {args.rundir}")
        return 3
    alive = _alive(state.get("pid", 0))
    print(f"lab {state['name']} ({state.get('source')}): {'up' if alive else 'NOT RUNNING'}, "
          f"process {state.get('pid')}, started {time.ctime(state.get('started', 0))}")
    for name, pid in state.get("services", {}).items():
        print(f"  {name:<12} pid {pid:<8} {'running' if _alive(pid) else 'gone'}")
    if not alive:
        return 3
    xenstored = Rundir(args.rundir).xenstored_socket
    if xenstored.exists():
        # for Xen's own tools: export it, then xenstore-ls, xenstore-watch...
        print(f"\nXENSTORED_PATH={xenstored}")
    from xenlab.cli.main import main as xenlab
    print()
    xenlab(["xl", "--rundir", str(args.rundir), "list"])
    domids = state.get("domains", {})
    if domids:
        print()
        xenlab(["xl", "--rundir", str(args.rundir), "network-list", *[str(d) for d in domids.values()]])
    return 0
