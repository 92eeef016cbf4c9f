"""Every config field checked before any training starts, all problems reported at once.

A typo or an out-of-range value found after an hour of training costs the hour; found here it
costs nothing. Types come from the dataclass annotations; ranges and names from the rules below.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from trainer.config import ExperimentConfig

# field -> (rule, message) for numbers; the message says what a valid value is.
RANGES: dict[str, tuple[Any, str]] = {
    "data.max_interactions_per_user_domain": (lambda v: v >= 0, ">= 0 (0 = no cap)"),
    "split.test_share": (lambda v: 0 < v < 1, "in (0, 1)"),
    "split.valid_share": (lambda v: 0 < v < 1, "in (0, 1)"),
    "split.cold_share": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "split.cold_valid_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "model.embedding_dim": (lambda v: v >= 1, ">= 1"),
    "model.hidden_dim": (lambda v: v >= 1, ">= 1"),
    "model.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.max_source_history": (lambda v: v >= 1, ">= 1"),
    "model.max_target_history": (lambda v: v >= 1, ">= 1"),
    "model.seq_layers": (lambda v: v >= 1, ">= 1"),
    "model.seq_heads": (lambda v: v >= 1, ">= 1"),
    "model.seq_max_len": (lambda v: v >= 1, ">= 1"),
    "train.future_window": (lambda v: v >= 0, ">= 0"),
    "model.recent_popularity_window": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.recency_steps": (lambda v: v >= 1, ">= 1"),
    "train.session_gap": (lambda v: v > 0, "> 0"),
    "train.denoise_share": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.recency_half_life": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "train.epochs": (lambda v: v >= 1, ">= 1"),
    "train.pretrain_epochs": (lambda v: v >= 0, ">= 0"),
    "train.bridge_epochs": (lambda v: v >= 1, ">= 1"),
    "train.batch_size": (lambda v: v >= 1, ">= 1"),
    "train.learning_rate": (lambda v: v > 0, "> 0"),
    "train.transferred_lr_scale": (lambda v: v >= 0, ">= 0"),
    "train.weight_decay": (lambda v: v >= 0, ">= 0"),
    "train.joint_lambda": (lambda v: v >= 0, ">= 0"),
    "train.history_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.cold_simulation_rate": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.patience": (lambda v: v >= 1, ">= 1"),
    "train.eval_every": (lambda v: v >= 1, ">= 1"),
    "train.num_negatives": (lambda v: v >= 1, ">= 1"),
    "train.negative_power": (lambda v: v >= 0, ">= 0"),
    "train.num_threads": (lambda v: v >= 0, ">= 0"),
    "fusion.grid_step": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "fusion.knn_neighbours": (lambda v: v >= 1, ">= 1"),
}
FREEZE_GROUPS = ("source_embeddings", "tower")
MODEL_FAMILIES = ("history_tower", "sequence")
OBJECTIVES = ("denoise", "future")
FUTURE_CUTS = ("uniform", "recent", "session")
RECENT_POPULARITY_AT = ("label", "cutoff")
# Strategies whose model is built around history towers (a bridge between two of them).
TOWER_ONLY_STRATEGIES = ("emcdr", "ptupcdr")
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _type_ok(value: Any, annotation: str) -> bool:
    annotation = annotation.replace(" ", "")
    if annotation.endswith("|None"):
        return value is None or _type_ok(value, annotation[: -len("|None")])
    if annotation.startswith("list["):
        inner = annotation[5:-1]
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation == "str":
        return isinstance(value, str)
    return True


def config_problems(config: ExperimentConfig) -> list[str]:
    """Every problem of the config, each naming the field and what a valid value is."""
    from trainer.strategies import strategy_names

    problems, type_errors = [], False
    for section_name in ("data", "split", "model", "train", "fusion"):
        section = getattr(config, section_name)
        for f in dataclasses.fields(section):
            key, value = f"{section_name}.{f.name}", getattr(section, f.name)
            if not _type_ok(value, str(f.type)):
                problems.append(f"{key}={value!r} must be of type {f.type}")
                type_errors = True
                continue
            if key in RANGES and not RANGES[key][0](value):
                problems.append(f"{key}={value!r} must be {RANGES[key][1]}")
    if type_errors:
        return problems  # the cross-field rules below assume the types are right
    s, d, t = config.split, config.data, config.train
    if s.test_share + s.valid_share >= 1:
        problems.append("split.test_share + split.valid_share must be < 1")
    if t.strategy not in strategy_names():
        problems.append(
            f"train.strategy='{t.strategy}' is unknown; choose from {', '.join(strategy_names())}"
        )
    if not t.seeds:
        problems.append("train.seeds must name at least one seed, e.g. [0, 1, 2]")
    elif len(set(t.seeds)) != len(t.seeds):
        problems.append(f"train.seeds={t.seeds} repeats a seed")
    if unknown := sorted(set(t.freeze) - set(FREEZE_GROUPS)):
        problems.append(
            f"train.freeze: unknown group(s) {unknown}; choose from {', '.join(FREEZE_GROUPS)}"
        )
    m = config.model
    if m.family not in MODEL_FAMILIES:
        problems.append(
            f"model.family='{m.family}' is unknown; choose from {', '.join(MODEL_FAMILIES)}"
        )
    elif m.family == "sequence":
        if m.embedding_dim % m.seq_heads:
            problems.append(
                f"model.embedding_dim={m.embedding_dim} must be divisible by model.seq_heads={m.seq_heads}"
            )
        if t.strategy in TOWER_ONLY_STRATEGIES:
            problems.append(
                f"train.strategy='{t.strategy}' bridges two history towers; with model.family="
                "sequence choose target_only, pretrain_finetune or joint"
            )
        if m.content_fusion or m.source_domain_embedding:
            problems.append(
                "model.content_fusion / model.source_domain_embedding are history_tower options; "
                "the sequence family has its own per-source domain embedding and no content "
                "fusion yet: set them false or use model.family=history_tower"
            )
    if t.objective not in OBJECTIVES:
        problems.append(
            f"train.objective='{t.objective}' is unknown; choose from {', '.join(OBJECTIVES)}"
        )
    if t.recent_popularity_at not in RECENT_POPULARITY_AT:
        problems.append(
            f"train.recent_popularity_at='{t.recent_popularity_at}' is unknown; choose from "
            f"{', '.join(RECENT_POPULARITY_AT)}"
        )
    if t.cold_recency_at not in RECENT_POPULARITY_AT:
        problems.append(
            f"train.cold_recency_at='{t.cold_recency_at}' is unknown; choose from "
            f"{', '.join(RECENT_POPULARITY_AT)}"
        )
    if t.future_cut not in FUTURE_CUTS:
        problems.append(
            f"train.future_cut='{t.future_cut}' is unknown; choose from {', '.join(FUTURE_CUTS)}"
        )
    if not DEVICE.match(t.device):
        problems.append(f"train.device='{t.device}' must be auto, cpu, cuda or cuda:N")
    if d.dataset == "generic":
        for key in ("interactions_path", "items_path"):
            path = getattr(d, key)
            if key == "interactions_path" and not path:
                problems.append("data.interactions_path is required when data.dataset is 'generic'")
            elif path and not Path(path).exists():
                problems.append(f"data.{key}={path!r}: no such file")
    problems += _data_problems(config)
    problems += _fusion_problems(config)
    return problems


def _fusion_problems(config: ExperimentConfig) -> list[str]:
    from trainer.config import FUSION_COMPONENTS

    f, problems = config.fusion, []
    if unknown := [c for c in f.components if c not in FUSION_COMPONENTS]:
        problems.append(
            f"fusion.components: unknown component(s) {unknown}; choose from "
            f"{', '.join(FUSION_COMPONENTS)}"
        )
    if len(set(f.components)) != len(f.components):
        problems.append(f"fusion.components={f.components} repeats a component")
    return problems


def _data_problems(config: ExperimentConfig) -> list[str]:
    """Source domains and item vectors: the rules trainer/data_checks.py and
    trainer/item_vectors.py enforce, checked here before anything is loaded."""
    from trainer.data_checks import validate_source_domains

    d, problems = config.data, []
    try:
        validate_source_domains(d)
    except ValueError as error:
        problems.append(str(error))
    if d.unlisted_domains not in ("error", "drop"):
        problems.append(f"data.unlisted_domains={d.unlisted_domains!r} must be error or drop")
    if config.model.content_fusion and not (d.item_vectors or d.item_vectors_column):
        problems.append(
            "model.content_fusion is true but no item vectors are configured; set "
            "data.item_vectors (.npz, or .npy with data.item_vectors_ids) or "
            "data.item_vectors_column (a list column of data.items_path)"
        )
    for key in ("item_vectors", "item_vectors_ids"):
        path = getattr(d, key)
        if path and not Path(path).exists():
            problems.append(f"data.{key}={path!r}: no such file")
    if config.model.source_domain_embedding and len(d.sources()) < 2:
        problems.append(
            "model.source_domain_embedding is true but there is one source domain; list "
            "several in data.source_domains, or set it to false"
        )
    return problems


def check_config(config: ExperimentConfig) -> None:
    problems = config_problems(config)
    if problems:
        raise ValueError("invalid config:\n  - " + "\n  - ".join(problems))
