"""`python -m xenlab.domain`: a domain process. Its start_info (domain id,
secret, hypervisor address) arrives as one JSON line on standard input, as
the launcher writes it."""
from __future__ import annotations

import argparse
import logging
import sys

from xenlab import eventloop
from xenlab.hypervisor.launcher import StartInfo
from xenlab.osutil import die_with_parent, on_stop_signal

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="how much the domain's kernel logs to its console (default INFO)")
    parser.add_argument("--start-info", default="-", metavar="FILE",
                        help="start_info JSON (default: one line on standard input)")
    parser.add_argument("--orphan-ok", action="store_true",
                        help="keep running if the process that started it exits")


async def _main(start: StartInfo) -> int:
    from xenlab.domain.kernel import DomainKernel

    kernel = DomainKernel(start)
    on_stop_signal(kernel.stop, "poweroff")
    reason = await kernel.run()
    return 0 if reason in ("poweroff", "reboot") else 1


def run(args) -> int:
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.orphan_ok:
        die_with_parent()
    text = sys.stdin.readline() if args.start_info == "-" else open(args.start_info).read()
    if not text.strip():
        print("xenlab domain: no start_info on standard input (it is started by the hypervisor's launcher)",
              file=sys.stderr)
        return 2
    try:
        start = StartInfo.from_json(text)
    except (ValueError, KeyError, TypeError) as err:
        print(f"xenlab domain: malformed start_info: {err}", file=sys.stderr)
        return 2
    return eventloop.run(_main(start))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xenlab domain", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
