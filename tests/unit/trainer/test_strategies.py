"""Each strategy trains on a tiny configuration and the transfer reaches cold-start users."""

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from trainer.evaluation import evaluate_model
from trainer.training import Trainer, multinomial_loss


@pytest.mark.parametrize(
    "strategy", ["target_only", "pretrain_finetune", "joint", "emcdr", "ptupcdr"]
)
def test_strategy_trains_and_selects_on_validation(strategy, ml100k_split):
    trainer = Trainer(tiny_config(), ml100k_split, show_progress=False)
    result = trainer.fit(strategy, seed=0)
    assert result.best_epoch in {2, 4}
    assert set(result.valid) == {"warm", "cold"}
    losses = [p["loss"] for p in result.curve]
    assert all(np.isfinite(losses))


def test_training_is_deterministic_per_seed(ml100k_split):
    trainer = Trainer(tiny_config(epochs=2), ml100k_split, show_progress=False)
    a = trainer.fit("pretrain_finetune", seed=3).model.state_dict()
    b = trainer.fit("pretrain_finetune", seed=3).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_groups_do_not_move(ml100k_split):
    config = tiny_config(freeze=["source_embeddings"], epochs=2)
    trainer = Trainer(config, ml100k_split, show_progress=False)
    result = trainer.fit("pretrain_finetune", seed=0)
    # Fine-tuning froze the source embeddings: they equal the pre-trained ones. Re-run pretraining
    # alone with the same random streams as fit() uses.
    torch.manual_seed(0)
    model = trainer.new_model()
    trainer.pretrain(model, torch.Generator().manual_seed(0), 0)
    assert torch.equal(
        model.source_embeddings.ids.weight, result.model.source_embeddings.ids.weight
    )
    assert not torch.equal(model.tower[1].weight, result.model.tower[1].weight)


def test_unknown_freeze_group_is_a_clear_error(ml100k_split):
    trainer = Trainer(tiny_config(freeze=["everything"]), ml100k_split, show_progress=False)
    with pytest.raises(ValueError, match="unknown group"):
        trainer.fit("pretrain_finetune", seed=0)


def test_cold_users_get_personal_scores_only_with_transfer(ml100k_split):
    """Target-only sees no source history, so all cold users get the same list; transfer differs per user."""
    trainer = Trainer(tiny_config(), ml100k_split, show_progress=False)
    cold = ml100k_split.test["cold"]
    for strategy, expect_personal in (("target_only", False), ("pretrain_finetune", True)):
        model = trainer.fit(strategy, seed=0).model
        metrics = evaluate_model(model, cold, 50, 50, use_source=expect_personal)
        assert metrics["users"] == len(cold)
        from trainer.batching import pad_histories

        src, src_mask = pad_histories(cold.source_histories[:5], 50)
        tgt, tgt_mask = pad_histories(cold.target_histories[:5], 50)
        if not expect_personal:
            src_mask[:] = 0
        with torch.no_grad():
            user = model.user_representation(
                *(torch.from_numpy(a) for a in (src, src_mask, tgt, tgt_mask))
            )
        spread = float((user - user[0]).abs().max())
        assert (spread > 1e-4) == expect_personal


def test_multinomial_loss_prefers_the_right_items():
    labels = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    good = multinomial_loss(torch.tensor([[0.0, 5.0, -5.0, 5.0]]), labels)
    bad = multinomial_loss(torch.tensor([[0.0, -5.0, 5.0, -5.0]]), labels)
    assert good < bad
