"""`xenlab graph`: the running lab's topology (domains, vifs, veths,
bridges, uplinks and the links between them) as Graphviz dot or Mermaid,
for docs: `xenlab graph | dot -Tsvg > lab.svg`."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc

from xenlab.lab import topology, view
from xenlab.rundir import Rundir, RundirError, RundirMissing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", "-f", choices=("dot", "mermaid"), default="dot",
                        help="dot (Graphviz: `| dot -Tsvg`) or mermaid (a flowchart, as "
                             "Markdown renderers draw it); default dot")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                        help="write it to FILE (default: standard output)")
    parser.add_argument("--rundir", type=Path, default=None,
                        help="the lab's rundir (default $XENLAB_RUNDIR, else "
                             "$XDG_RUNTIME_DIR/xenlab, else /tmp/xenlab-UID)")


def run(args) -> int:
    run_dir = Rundir(args.rundir)
    try:
        state = run_dir.read_state()
        if not state:
            raise RundirMissing(2, f"no lab is running in {run_dir.path}")
        lab_view = asyncio.run(view.gather(run_dir))
    except RundirError as err:
        print(f"xenlab graph: {err.strerror or err}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as err:
        print(f"xenlab graph: cannot ask the lab's services: {err.details()}", file=sys.stderr)
        return 1
    topo = topology.build(lab_view.domains, lab_view.bridges, lab_view.qdiscs)
    text = topology.to_dot(topo, state.get("name") or "lab") if args.format == "dot" \
        else topology.to_mermaid(topo)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0
