"""`xenlab web`: serve the live view of the running lab on localhost
(xenlab.web.app; needs the `web` extra: pip install 'xenlab[web]')."""
from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from pathlib import Path

from xenlab.osutil import on_stop_signal
from xenlab.rundir import Rundir, RundirError

DEFAULT_PORT = 8090


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}", metavar="HOST:PORT",
                        help=f"where to serve the page (default 127.0.0.1:{DEFAULT_PORT}; port 0: "
                             f"a free one)")
    parser.add_argument("--token", default=None,
                        help="the token the page's URL carries (default: a random one, printed)")
    parser.add_argument("--rundir", type=Path, default=None,
                        help="the lab's rundir (default $XENLAB_RUNDIR, else "
                             "$XDG_RUNTIME_DIR/xenlab, else /tmp/xenlab-UID)")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def run(args) -> int:
    try:
        from aiohttp import web  # lazy: optional, the web extra
        from xenlab.web.app import make_app  # lazy: it needs aiohttp
    except ImportError as err:
        print(f"xenlab web: needs the web extra ({err.name} is missing): pip install 'xenlab[web]'",
              file=sys.stderr)
        return 1
    try:
        host, port = _host_port(args.listen)
        run_dir = Rundir(args.rundir)
        run_dir.read_address()          # a hypervisor runs there (xenlab up, or compose's)
        state = run_dir.read_state() or {}
    except ValueError as err:
        print(f"xenlab web: {err}", file=sys.stderr)
        return 2
    except RundirError as err:
        print(f"xenlab web: {err.strerror or err}", file=sys.stderr)
        return 1
    token = args.token or secrets.token_urlsafe(24)

    async def serve() -> None:
        runner = web.AppRunner(make_app(args.rundir, token))
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        print(f"xenlab web: lab {state.get('name', '')} on http://{shown}:{bound[1]}/?token={token}",
              flush=True)
        stopped = asyncio.Event()
        on_stop_signal(stopped.set)
        try:
            await stopped.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except OSError as err:
        print(f"xenlab web: cannot listen on {args.listen}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0
