"""The container images' commands work, proven without a Docker engine.

No Docker engine exists on the machines that run the tests, so the serving image is checked by
doing what its build does: the build stage's COPY instructions are replayed into a temporary
context and its RUN lines are executed verbatim (``/opt/xdrec`` mapped to a fresh virtual
environment without system site packages), then the final stage's ENTRYPOINT runs. This proves
the torch-free install works from the pinned constraints, that ``xdrec`` and every ``serve``
sub-command start there, and that torch is not importable. Both Dockerfiles are also checked
statically (non-root numeric USER, exec-form ENTRYPOINT, pinned install commands).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from chart_tools import REPO_ROOT

IMAGES = REPO_ROOT / "k8s" / "images"
SERVING = IMAGES / "serving.Dockerfile"
TRAINER = IMAGES / "trainer.Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    value: str
    stage: int  # index of the FROM it belongs to (-1 before the first FROM: global ARGs)


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped (Dockerfile rules)."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may also sit between continuation lines
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, value.strip(), stage))
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    count = max(i.stage for i in instructions) + 1
    return [[i for i in instructions if i.stage == s] for s in range(count)]


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    out = {}
    for i in instructions:
        if i.keyword == "ARG" and "=" in i.value:
            name, _, default = i.value.partition("=")
            out[name.strip()] = default.strip().strip('"')
    return out


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), value
    return parsed


@pytest.mark.parametrize("dockerfile", [SERVING, TRAINER], ids=["serving", "trainer"])
def test_dockerfile_runs_non_root_with_exec_entrypoint(dockerfile: Path) -> None:
    final = stages(parse_dockerfile(dockerfile))[-1]
    users = [i.value for i in final if i.keyword == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == 10001, "numeric non-root uid (runAsNonRoot checks it)"
    (entrypoint,) = [i.value for i in final if i.keyword == "ENTRYPOINT"]
    assert exec_form(entrypoint) == ["xdrec"], "exec form: xdrec is PID 1 and gets SIGTERM"
    for cmd in [i.value for i in final if i.keyword == "CMD"]:
        exec_form(cmd)
    assert (dockerfile.parent / f"{dockerfile.name}.dockerignore").is_file()


def test_serving_dockerfile_is_slim_and_torch_free() -> None:
    instructions = parse_dockerfile(SERVING)
    args = arg_defaults(instructions)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    installs = [i.value for i in instructions if i.keyword == "RUN" and "pip install" in i.value]
    assert any(re.search(r"pip install -c constraints\.txt \.(\s|$)", v) for v in installs)
    for run in installs:
        assert "[train]" not in run and "torch" not in run, run


def test_trainer_dockerfile_installs_the_train_extra_on_a_cuda_base() -> None:
    instructions = parse_dockerfile(TRAINER)
    args = arg_defaults(instructions)
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    runs = " ".join(i.value for i in instructions if i.keyword == "RUN")
    assert "python3.11" in runs
    assert '".[train]"' in runs and "constraints" in runs
    assert "torch==${TORCH_VERSION}" in runs
    constraints = (REPO_ROOT / "constraints.txt").read_text()
    pinned = re.search(r"^torch==([0-9.]+)", constraints, re.M)
    assert pinned and args["TORCH_VERSION"] == pinned.group(1), "same torch as constraints.txt"


def _replay_build_stage(tmp: Path) -> tuple[Path, list[Instruction]]:
    """Runs the serving Dockerfile's build stage here; returns the venv that /opt/xdrec became."""
    instructions = parse_dockerfile(SERVING)
    build, *_ = stages(instructions)
    venv = tmp / "opt-xdrec"
    root = tmp / "rootfs"
    shim = tmp / "shim"  # `python` = the base interpreter, as on python:3.11-slim's PATH
    shim.mkdir()
    base_python = Path(getattr(sys, "_base_executable", sys.executable))
    (shim / "python").symlink_to(base_python)
    (shim / "python3").symlink_to(base_python)

    def local(path: str) -> Path:
        if path.startswith("/opt/xdrec"):
            return Path(str(venv) + path[len("/opt/xdrec") :])
        return root / path.lstrip("/")

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDREC_", "VIRTUAL_ENV", "PYTHON", "CONDA"))
    }
    env["HOME"] = str(tmp / "home")
    env["PATH"] = f"{venv / 'bin'}:{shim}:/usr/local/bin:/usr/bin:/bin"
    env.update(arg_defaults(instructions))
    root.mkdir()
    workdir = root
    for ins in build:
        if ins.keyword == "WORKDIR":
            workdir = local(ins.value)
            workdir.mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "ENV":
            for name, value in re.findall(r'(\w+)=("[^"]*"|\S+)', ins.value):
                if name != "PATH":  # PATH is mapped above
                    env[name] = value.strip('"')
        elif ins.keyword == "COPY":
            parts = shlex.split(ins.value)
            assert not any(p.startswith("--") for p in parts), "build-stage COPY from the context"
            *sources, dest = parts
            target = workdir / dest if not dest.startswith("/") else local(dest)
            for src in sources:
                path = REPO_ROOT / src
                assert path.exists(), f"COPY {src}: not in the build context"
                if path.is_dir():
                    shutil.copytree(
                        path,
                        target,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"),
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target / path.name)
        elif ins.keyword == "RUN":
            command = ins.value.replace("/opt/xdrec", str(venv))
            proc = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            assert proc.returncode == 0, (
                f"RUN {ins.value}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
    return venv, instructions


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_serving_image_commands_work_in_a_fresh_venv(tmp_path: Path) -> None:
    venv, instructions = _replay_build_stage(tmp_path)
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg

    final = stages(instructions)[-1]
    (entrypoint,) = [exec_form(i.value) for i in final if i.keyword == "ENTRYPOINT"]
    (cmd,) = [exec_form(i.value) for i in final if i.keyword == "CMD"]
    run_dir = tmp_path / "run"  # outside the repository: nothing importable from the cwd
    run_dir.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("XDREC_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(PATH=f"{venv / 'bin'}:/usr/bin:/bin", HOME=str(run_dir), PYTHONUNBUFFERED="1")

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=run_dir, env=env, capture_output=True, text=True, timeout=120, check=False
        )

    binary = str(venv / "bin" / entrypoint[0])
    default = run([binary, *entrypoint[1:], *cmd])
    assert default.returncode == 0, default.stderr
    for component, flag in [
        ("encoder", "--model-repo"),
        ("scorer", "--model-repo"),
        ("ranker", "--encoder"),
    ]:
        proc = run([binary, *entrypoint[1:], "serve", component, "--help"])
        assert proc.returncode == 0, f"xdrec serve {component} --help:\n{proc.stderr}"
        assert flag in proc.stdout, proc.stdout

    python = str(venv / "bin" / "python")
    torch = run([python, "-c", "import torch"])
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr, (
        "serving image must not contain torch"
    )
    deps = run([python, "-c", "import onnxruntime, grpc, numpy, cli.main, xdrec.ranker.v1"])
    assert deps.returncode == 0, deps.stderr
