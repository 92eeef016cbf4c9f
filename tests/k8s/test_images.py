"""The Dockerfiles' static rules, and the fallback for machines without podman.

Where podman is installed (CI: .ci/run installs it), ``test_image_stage.py`` builds and runs the
real images and the replay below is skipped. Without podman, the serving image is checked by
doing what its build does: the build stage's COPY instructions are replayed into a temporary
context (filtered by the Dockerfile's .dockerignore allow-list) and its RUN lines are executed
verbatim (``/opt/xdrec`` mapped to a fresh virtual environment without system site packages),
then the final stage's ENTRYPOINT runs. This proves the torch-free install works from the pinned
constraints, that ``xdrec`` and every ``serve`` sub-command start there, and that torch is not
importable. Both Dockerfiles are also checked statically (non-root numeric USER, exec-form
ENTRYPOINT, pinned install commands). The test summary says which path ran.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from chart_tools import REPO_ROOT
from podman_tools import podman_usable
from stage_report import record_path, record_step

IMAGES = REPO_ROOT / "k8s" / "images"
SERVING = IMAGES / "serving.Dockerfile"
TRAINER = IMAGES / "trainer.Dockerfile"
PODMAN_USABLE, PODMAN_WHY = podman_usable()


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
    # every dependency pinned by constraints.txt, the project itself without dependencies
    assert any(re.search(r"pip install -c constraints\.txt -r \S+ ", v) for v in installs)
    assert any(re.search(r"pip install --no-deps \.(\s|$)", v) for v in installs)
    # the variant picks the ONNX Runtime package: the CPU-only one unless VARIANT=gpu
    assert any('ort="onnxruntime"' in v and "onnxruntime-gpu[cuda,cudnn]" in v for v in installs)
    assert args["VARIANT"] == "cpu"
    constraints = (REPO_ROOT / "constraints.txt").read_text()
    for package in ("onnxruntime", "onnxruntime-gpu"):  # both variants install pinned versions
        assert re.search(rf"^{package}==\S+$", constraints, re.M), f"{package} is not pinned"
    for run in installs:
        assert "[train]" not in run and "torch" not in run, run


def test_trainer_dockerfile_installs_the_train_extra_on_a_cuda_base() -> None:
    instructions = parse_dockerfile(TRAINER)
    args = arg_defaults(instructions)
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:"), "CUDA by default; CPU by build argument"
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu")
    runs = " ".join(i.value for i in instructions if i.keyword == "RUN")
    assert "python3.11" in runs
    assert "['optional-dependencies']['train']" in runs and "constraints" in runs
    assert "torch==${TORCH_VERSION}" in runs
    constraints = (REPO_ROOT / "constraints.txt").read_text()
    pinned = re.search(r"^torch==([0-9.]+)", constraints, re.M)
    assert pinned and args["TORCH_VERSION"] == pinned.group(1), "same torch as constraints.txt"


def dockerignore_allow_list(dockerfile: Path) -> tuple[list[str], list[str]]:
    """(included paths, excluded name patterns) of an allow-list `<Dockerfile>.dockerignore`.

    Only the allow-list form the project uses is understood (`**`, then `!path` or `!dir/**`,
    then `**/<name pattern>` exclusions); anything else fails, so the replay never silently
    copies a different context than a real build.
    """
    lines = [
        line.strip()
        for line in (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "**", "the .dockerignore must start by excluding everything"
    included, excluded = [], []
    for line in lines[1:]:
        if line.startswith("!"):
            included.append(line[1:].removesuffix("/**"))
        else:
            assert line.startswith("**/") and "/" not in line[3:], f"unsupported pattern {line!r}"
            excluded.append(line[3:])
    return included, excluded


def copy_context(dockerfile: Path, src: str, target: Path) -> None:
    """COPY <src> <target> from the build context as the .dockerignore filters it."""
    included, excluded = dockerignore_allow_list(dockerfile)
    src = src.rstrip("/")
    chosen = [p for p in included if src == "." or p == src or p.startswith(src + "/")]
    assert chosen, f"COPY {src}: nothing of it is in the build context"
    for rel in chosen:
        path = REPO_ROOT / rel
        if not path.exists():
            continue  # an allow-list entry for a package this checkout does not have
        dest = target / (rel if src == "." else Path(rel).relative_to(src))
        if path.is_dir():
            shutil.copytree(
                path, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*excluded)
            )
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)


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
    for name, default in arg_defaults(instructions).items():
        if default or name not in env:  # empty build-time ARGs (PIP_CERT, ...) keep the host's
            env[name] = default
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
                copy_context(SERVING, src, target)
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
@pytest.mark.skipif(
    PODMAN_USABLE, reason="podman is here: test_image_stage.py builds the real images"
)
def test_serving_image_commands_work_in_a_fresh_venv(tmp_path: Path) -> None:
    record_path("venv replay", f"fallback without podman ({PODMAN_WHY})")
    started = time.monotonic()
    venv, instructions = _replay_build_stage(tmp_path)
    record_step("replay serving.Dockerfile's build stage in a venv", time.monotonic() - started)
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
