"""Generates the Python gRPC stubs from ``protos/`` with grpcio-tools.

The generated modules are committed (so the services import without a build step) and
``--check`` regenerates into a temporary folder and fails when the committed copy is stale.
The output root ``services/protogen`` is mapped to the importable package ``xdrec`` by
``pyproject.toml``, which keeps the proto import paths (``xdrec/common/v1/...``) valid as is.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = Path(__file__).resolve().parent


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc into ``out_dir``; returns the generated files (plus package __init__ files)."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    generated = [p for p in out_dir.rglob("*") if p.suffix in (".py", ".pyi")]
    for directory in {p.parent for p in generated}:
        while directory != out_dir:
            init = directory / "__init__.py"
            if not init.exists():
                init.write_text("")
            generated.append(init)
            directory = directory.parent
    return sorted(set(generated))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args()
    target = OUT_ROOT / "xdrec"
    if not args.check:
        generate(OUT_ROOT)
        print(f"generated stubs for {len(proto_files())} proto files under {target}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        stale = []
        for fresh in (fresh_root / "xdrec").rglob("*"):
            if fresh.is_file():
                committed = target / fresh.relative_to(fresh_root / "xdrec")
                if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False):
                    stale.append(str(committed.relative_to(ROOT)))
        if stale:
            print("stale generated stubs (run `make protos`):\n  " + "\n  ".join(stale))
            return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
