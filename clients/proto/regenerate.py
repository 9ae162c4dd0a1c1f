"""Regenerate the committed ``*_pb2.py`` / ``*_pb2.pyi`` modules from the ``.proto`` files here.

Public API:

- ``PROTO_FILES``: the ``.proto`` files, relative to the repository root.
- ``generate(out_dir)``: run grpcio-tools' protoc, writing ``clients/proto/*_pb2.py[i]`` under
  ``out_dir`` (the repository root regenerates in place; a temporary directory lets a test compare).

Run ``python -m clients.proto.regenerate [OUT_DIR]`` (``make proto`` regenerates in place).
grpcio-tools is a dev dependency; nothing in the client imports this module. Run it in its own
process where TensorFlow is loaded: grpcio-tools' in-process protoc and TensorFlow's bundled
protobuf library crash together (segmentation fault).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent.parent
PROTO_FILES = sorted(str(p.relative_to(REPO_ROOT)) for p in PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Compile every .proto file into ``out_dir`` (import paths rooted at the repository)."""
    from grpc_tools import protoc  # dev dependency, imported only when regenerating

    well_known_types = str(resources.files("grpc_tools") / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{REPO_ROOT}",
        f"-I{well_known_types}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT
    generate(out)
    print(f"generated {len(PROTO_FILES)} proto modules under {out}", file=sys.stderr)
