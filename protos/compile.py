"""Regenerate the Python stubs from the .proto files: `make protos` (or `python -m protos.compile`).

The .proto files are compiled with the repository root as the include path, so generated modules
import each other as `from protos import x_pb2` and need no rewriting.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

PROTOS_DIR = Path(__file__).resolve().parent
ROOT = PROTOS_DIR.parent


def proto_files() -> list[Path]:
    return sorted(PROTOS_DIR.glob("*.proto"))


def compile_protos(out_dir: Path = ROOT) -> None:
    """Write `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` for every proto into out_dir/protos/."""
    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(path.relative_to(ROOT)) for path in proto_files()),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def generated_files(directory: Path) -> list[Path]:
    return sorted(p for pattern in ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py") for p in directory.glob(pattern))


if __name__ == "__main__":
    compile_protos()
    print(f"generated {len(generated_files(PROTOS_DIR))} files from {len(proto_files())} protos", file=sys.stderr)
