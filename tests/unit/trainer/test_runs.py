"""Runs that survive: names and config checked before training, checkpoints, incremental results,
--resume, shared per-seed work and honest progress lines."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_config
from trainer import command
from trainer.config_checks import config_problems
from trainer.experiment import run_experiment, table_entries
from trainer.strategies import STRATEGIES, Strategy, get_strategy, strategy_names
from trainer.training import Trainer

FIVE = ["target_only", "pretrain_finetune", "joint", "emcdr", "ptupcdr"]


def test_registry_names_all_five_strategies_as_classes():
    assert strategy_names() == FIVE
    assert all(issubclass(cls, Strategy) for cls in STRATEGIES.values())
    assert get_strategy("target_only").uses_source is False
    with pytest.raises(ValueError, match="unknown strategy 'jiont'; choose from target_only"):
        get_strategy("jiont")


def test_cli_lists_and_validates_every_strategy(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in FIVE:
        assert name in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", "x", "--compare", "jiont"])
    assert "invalid choice: 'jiont'" in capsys.readouterr().err


def test_unknown_names_and_bad_fields_fail_before_any_data_or_training(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before validating")

    monkeypatch.setattr(Trainer, "__init__", no_training)
    with pytest.raises(ValueError, match=r"unknown strategy \['jiont'\]"):
        run_experiment(tiny_config(), tmp_path, ["jiont"], show_progress=False)
    config = tiny_config(epochs=0, history_dropout=1.5, strategy="nope")
    problems = config_problems(config)
    assert any("train.epochs=0 must be >= 1" in p for p in problems)
    assert any("train.history_dropout=1.5" in p for p in problems)
    assert any("train.strategy='nope' is unknown" in p for p in problems)
    with pytest.raises(ValueError, match="invalid config"):
        run_experiment(config, tmp_path, show_progress=False)
    assert table_entries()[0] == "popularity" and table_entries()[1:] == FIVE


def test_checkpoints_incremental_results_and_resume(tmp_path, ml100k_split, monkeypatch):
    config = tiny_config(epochs=2, strategy="emcdr", bridge_epochs=2)
    out = tmp_path / "run"
    run_experiment(config, out, show_progress=False, split=ml100k_split)
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert checkpoints == ["emcdr-seed0.pt", "target_only-seed0.pt"]
    first = json.loads((out / "results.json").read_text())
    assert first["complete"] is True and (out / "model.pt").exists()

    # An interrupted run: the emcdr checkpoint is missing; --resume trains only emcdr and reuses
    # the target-only model from its checkpoint (no target-only training at all).
    (out / "checkpoints" / "emcdr-seed0.pt").unlink()
    trained = []
    fit = Trainer.fit

    def counting_fit(self, strategy, seed):
        trained.append(strategy)
        return fit(self, strategy, seed)

    monkeypatch.setattr(Trainer, "fit", counting_fit)
    report = run_experiment(config, out, show_progress=False, split=ml100k_split, resume=True)
    assert trained == ["emcdr"]
    assert report["strategies"]["target_only"]["test"] == first["strategies"]["target_only"]["test"]

    # A different config cannot resume into the same folder.
    with pytest.raises(ValueError, match="different config"):
        run_experiment(
            tiny_config(epochs=3), out, show_progress=False, split=ml100k_split, resume=True
        )


def test_results_are_written_after_each_run(tmp_path, ml100k_split, monkeypatch):
    """The results file exists (marked partial) as soon as the first strategy/seed finishes."""
    config = tiny_config(epochs=2, strategy="joint")
    seen = []
    fit = Trainer.fit

    def watching_fit(self, strategy, seed):
        if (tmp_path / "results.json").exists():
            seen.append(json.loads((tmp_path / "results.json").read_text())["complete"])
        return fit(self, strategy, seed)

    monkeypatch.setattr(Trainer, "fit", watching_fit)
    run_experiment(config, tmp_path, show_progress=False, split=ml100k_split)
    assert seen == [False]  # before joint trained, target-only's results were on disk


def test_target_only_is_trained_once_per_seed(ml100k_split, monkeypatch):
    trainer = Trainer(tiny_config(epochs=2, bridge_epochs=2), ml100k_split, show_progress=False)
    pretrains = []
    pretrain = Trainer.pretrain
    monkeypatch.setattr(
        Trainer, "pretrain", lambda self, *a: (pretrains.append(1), pretrain(self, *a))
    )
    first = trainer.fit("target_only", 0)
    assert trainer.fit("emcdr", 0).model.target_model is first.model
    trainer.fit("ptupcdr", 0)
    trainer.fit("pretrain_finetune", 0)
    assert len(pretrains) == 1


def test_progress_lines_never_repeat_a_stale_validation(ml100k_split, monkeypatch):
    from trainer import progress

    lines = []
    monkeypatch.setattr(progress.Progress, "set_postfix", lambda self, **v: lines.append(v))
    Trainer(tiny_config(epochs=4), ml100k_split, show_progress=False).fit("target_only", 0)
    assert [line["valid_ndcg"] for line in lines][0] == "-"  # epoch 1: nothing validated yet
    assert "@best" in lines[2]["valid_ndcg"]  # epoch 3 says which epoch the score is from
    assert len({line["loss"] for line in lines}) == 4  # a fresh loss every epoch


def test_listing_strategies_does_not_import_torch():
    """`xdrec --help` and the serving commands register `train` too: they must stay torch-free."""
    import subprocess
    import sys

    code = (
        "import argparse, sys; from trainer import command; "
        "command.register(argparse.ArgumentParser().add_subparsers()); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
