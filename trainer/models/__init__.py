"""Recommender models. Every model implements :class:`trainer.models.base.CrossDomainModel`.

``build_model`` rebuilds any of them from a checkpoint's ``model_spec``, which is how the exporter
loads a run without knowing which strategy trained it.
"""

from __future__ import annotations

from trainer.config import ModelConfig
from trainer.models.base import CrossDomainModel
from trainer.models.bridged import BridgedModel
from trainer.models.fused import FusedModel
from trainer.models.history_tower import HistoryTowerModel
from trainer.models.sequence import SequenceModel

__all__ = [
    "BridgedModel",
    "CrossDomainModel",
    "FusedModel",
    "HistoryTowerModel",
    "SequenceModel",
    "build_model",
    "model_spec",
]


def model_spec(model: CrossDomainModel) -> dict:
    if isinstance(model, FusedModel):  # a blend around any model (trainer/fusion.py)
        return {"class": "FusedModel", "inner": model_spec(model.inner), **model.shape_spec()}
    if isinstance(model, BridgedModel):
        return {
            "class": "BridgedModel",
            "bridge": model.bridge_kind,
            **model.target_model.shape_spec(),
        }
    if isinstance(model, SequenceModel):
        return {"class": "SequenceModel", "num_source_domains": model.num_source_domains}
    return {"class": "HistoryTowerModel", **model.shape_spec()}


def build_model(
    spec: dict, num_source_items: int, num_target_items: int, config: ModelConfig
) -> CrossDomainModel:
    if spec["class"] == "FusedModel":
        inner = build_model(spec["inner"], num_source_items, num_target_items, config)
        return FusedModel(
            inner,
            num_source_items,
            num_target_items,
            tuple(spec["item_features"]),
            spec["knn_neighbours"],
        )
    shape = {k: spec[k] for k in ("content_dim", "num_source_domains") if k in spec}
    if spec["class"] == "HistoryTowerModel":
        return HistoryTowerModel(num_source_items, num_target_items, config, **shape)
    if spec["class"] == "SequenceModel":
        return SequenceModel(
            num_source_items,
            num_target_items,
            config,
            num_source_domains=spec.get("num_source_domains", 1),
        )
    if spec["class"] == "BridgedModel":
        return BridgedModel(
            HistoryTowerModel(num_source_items, num_target_items, config, **shape),
            HistoryTowerModel(num_source_items, num_target_items, config, **shape),
            spec["bridge"],
            config.hidden_dim,
        )
    raise ValueError(f"unknown model class {spec['class']!r}")
