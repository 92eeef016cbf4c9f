"""torchrun with 2 CPU processes (gloo) gives the same model as one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]


def _train(nproc: int, strategy: str, out: Path, num_negatives: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(ROOT / "tests/unit/trainer/ddp_worker.py"),
        strategy,
        str(out),
        str(num_negatives),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "num_negatives"),
    [("pretrain_finetune", 4096), ("joint", 4096), ("joint", 64)],
    ids=["pretrain_finetune", "joint", "joint-sampled-sparse"],
)
def test_two_gloo_processes_match_one(strategy, num_negatives, tmp_path):
    _train(1, strategy, tmp_path / "single.pt", num_negatives)
    _train(2, strategy, tmp_path / "ddp.pt", num_negatives)
    single, ddp = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    assert single.keys() == ddp.keys()
    assert len(single) >= 10
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], atol=2e-5, rtol=1e-4, msg=name)
