"""Every shipped config loads, and config mistakes are reported with the field to fix."""

from pathlib import Path

import pytest
import yaml

from trainer.config import ExperimentConfig, apply_overrides
from trainer.distillation.config import build_student_experiment

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "trainer" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    raw = yaml.safe_load(path.read_text())
    if "distill" in raw:  # a student config (xdrec distill): data and split are the teacher's
        student = build_student_experiment(raw, None)
        student.distill.check()
        config = student.experiment
    else:
        config = ExperimentConfig.load(path)
    assert config.train.seeds and config.data.dataset in {"ml-100k", "ml-1m", "generic"}


def test_overrides_are_typed_and_checked():
    config = apply_overrides(
        ExperimentConfig(), ["train.epochs=3", "train.seeds=[4, 5]", "model.text_fusion=true"]
    )
    assert (
        config.train.epochs == 3
        and config.train.seeds == [4, 5]
        and config.model.text_fusion is True
    )
    with pytest.raises(ValueError, match="section.field=value"):
        apply_overrides(ExperimentConfig(), ["epochs=3"])
    with pytest.raises(ValueError, match=r"unknown field\(s\) in 'train': \['epoch'\]"):
        apply_overrides(ExperimentConfig(), ["train.epoch=3"])
