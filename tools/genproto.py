"""Regenerate the protobuf/gRPC stubs in services/xenlab/proto from protos/.

    python tools/genproto.py          # rewrite the committed stubs
    python tools/genproto.py --check  # exit 1 if they differ from protos/

The stubs are committed so that an install needs no protoc; the check keeps
them honest (tests/unit/test_protos.py runs it).
"""
from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "services"
PACKAGE = Path("xenlab") / "proto"


def generate(out: Path) -> None:
    from grpc_tools import protoc
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *sources]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out / PACKAGE / "__init__.py").touch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh, committed = Path(tmp) / PACKAGE, OUT / PACKAGE
        names = sorted(p.name for p in fresh.iterdir() if p.suffix in (".py", ".pyi"))
        _, mismatch, missing = filecmp.cmpfiles(fresh, committed, names, shallow=False)
        extra = sorted(p.name for p in committed.glob("*_pb2*.py*") if p.name not in names)
        for name in mismatch + missing + extra:
            print(f"stale: services/{PACKAGE}/{name}", file=sys.stderr)
        if mismatch or missing or extra:
            print("run: python tools/genproto.py", file=sys.stderr)
            return 1
    print("protobuf stubs match protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
