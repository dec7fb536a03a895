"""Regenerate the committed Python code for protos/xacthuc/v1/*.proto.

The one way to produce `*_pb2.py`, `*_pb2.pyi`, `*_pb2_grpc.py` and `*_pb2_grpc.pyi`.
Pinned generator versions make the output byte-for-byte reproducible; the test
`tests/test_protos.py` regenerates into a temporary folder and fails when the committed
files differ. Usage: `python scripts/gen_protos.py [--out DIR]`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import sys
import tempfile
from pathlib import Path

PINNED = {"grpcio-tools": "1.85.1", "mypy-protobuf": "5.1.0"}
ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = PROTO_ROOT / "xacthuc" / "v1"


def check_versions() -> None:
    for dist, want in PINNED.items():
        have = importlib.metadata.version(dist)
        if have != want:
            sys.exit(
                f"gen_protos: {dist} {have} is installed; the generated code is pinned to {want}"
            )


def generate(out: Path) -> list[Path]:
    """Generate into out/xacthuc/v1 and return the generated files."""
    from grpc_tools import protoc  # imported late: only the generator needs grpcio-tools

    check_versions()
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PACKAGE.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        shutil.which("protoc-gen-mypy") or sys.exit("gen_protos: protoc-gen-mypy not on PATH")
        if protoc.main(args) != 0:
            sys.exit("gen_protos: protoc failed")
        target = out / "xacthuc" / "v1"
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted((Path(tmp) / "xacthuc" / "v1").iterdir()):
            dest = target / f.name
            shutil.copyfile(f, dest)
            written.append(dest)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=PROTO_ROOT, help="root to write xacthuc/v1 into"
    )
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))


if __name__ == "__main__":
    main()
