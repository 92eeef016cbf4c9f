"""Checks that catch data traps before any training: bad settings, id collisions, duplicate products.

Real logs fail in ways a benchmark never does. Two of them silently inflate a transfer gain:
the same item id in both domains (the loader would treat two products as one, titles collide),
and the same product listed in both domains under two ids (a user's source interaction then
reveals the target answer). Both are found here, right after loading, and what was found
travels with the dataset (``RawDataset.checks``) into the dataset report of every run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from trainer.baselines.base import coo, sparse_matmul
from trainer.config import DataConfig, ExperimentConfig
from trainer.data import RawDataset

SPLITS = ("time", "leave_last_out", "random")
DUPLICATE_ACTIONS = ("report", "drop", "merge")
COLLISION_ACTIONS = ("error", "namespace")
SOURCE, TARGET = "source", "target"


def validate_data_config(data: DataConfig) -> None:
    """Rejects unknown choices up front, before anything is loaded or trained."""
    for name, value, allowed in (
        ("data.split", data.split, SPLITS),
        ("data.cross_domain_duplicates", data.cross_domain_duplicates, DUPLICATE_ACTIONS),
        ("data.item_id_collisions", data.item_id_collisions, COLLISION_ACTIONS),
    ):
        if value not in allowed:
            raise ValueError(f"{name}: unknown value '{value}'; choose one of {list(allowed)}")
    if not 0 < data.duplicate_jaccard <= 1:
        raise ValueError("data.duplicate_jaccard must be in (0, 1]")
    if data.duplicate_min_users < 1:
        raise ValueError("data.duplicate_min_users must be >= 1")


def check_text_fusion(has_titles: bool, config: ExperimentConfig) -> None:
    """Text fusion embeds titles; without them it would embed item ids and call that text."""
    if config.model.text_fusion and not has_titles:
        raise ValueError(
            "model.text_fusion is true but the data has no item titles; give data.items_path "
            "a table with a 'title' column, or set model.text_fusion=false"
        )


def check_dataset(raw: RawDataset, data: DataConfig) -> RawDataset:
    """Runs every data check; returns the dataset to train on with ``checks`` filled in."""
    from trainer.splits import assign_domains  # splits imports data: keep the import lazy

    validate_data_config(data)
    if data.split == "time" and not raw.has_timestamps:
        raise ValueError(
            f"{raw.name}: the log has no 'timestamp' column, so data.split=time would split on "
            "row order; set data.split=leave_last_out (per user: last interaction = test, the one "
            "before = validation, in row order) or data.split=random (seeded per-interaction draw)"
        )
    checks: dict = {}
    raw, checks["item_id_collisions"] = resolve_id_collisions(raw, data)
    domains = assign_domains(raw, data)
    pairs = find_cross_domain_duplicates(
        raw.users, raw.items, domains, data.duplicate_jaccard, data.duplicate_min_users
    )
    raw, checks["cross_domain_duplicates"] = apply_duplicates(
        raw, domains, pairs, data.cross_domain_duplicates
    )
    checks["duplicate_rule"] = (
        f"Jaccard(user sets) >= {data.duplicate_jaccard}, >= {data.duplicate_min_users} users each"
    )
    return dataclasses.replace(raw, checks=checks)


def resolve_id_collisions(raw: RawDataset, data: DataConfig) -> tuple[RawDataset, dict]:
    """The same id in both domains of a log with a domain column: reject or namespace it.

    Only a log's own domain column can put one id in both domains (category-based domains give
    each item one domain), so only such logs are checked.
    """
    if raw.domains is None:
        return raw, {"count": 0, "action": data.item_id_collisions}
    in_source = set(raw.items[raw.domains == SOURCE].tolist())
    in_target = set(raw.items[raw.domains == TARGET].tolist())
    colliding = sorted(in_source & in_target)
    info = {"count": len(colliding), "action": data.item_id_collisions, "examples": colliding[:5]}
    if not colliding:
        return raw, info
    if data.item_id_collisions == "error":
        raise ValueError(
            f"{raw.name}: {len(colliding)} item id(s) appear in both the source and the target "
            f"domain (e.g. {colliding[:5]}); item ids must be unique across domains. Give them "
            "distinct ids, or set data.item_id_collisions=namespace to rename them to "
            "'source:<id>' / 'target:<id>'"
        )
    collide = np.isin(raw.items, colliding)
    items = raw.items.astype(object)
    items[collide] = np.char.add(
        np.char.add(raw.domains[collide].astype(str), ":"), raw.items[collide].astype(str)
    )
    table = dict(raw.item_table)
    for item_id in colliding:
        item = table.pop(item_id)
        for domain in (SOURCE, TARGET):
            table[f"{domain}:{item_id}"] = dataclasses.replace(item)
    return dataclasses.replace(raw, items=items.astype(str), item_table=table), info


@dataclass
class DuplicatePair:
    source_item: str
    target_item: str
    jaccard: float
    source_users: int
    target_users: int


def _incidence(user_index: np.ndarray, item_index: np.ndarray, n_users: int, n_items: int):
    """Binary users x items matrix (sparse, COO, duplicates counted once)."""
    pairs = np.unique(np.stack([user_index, item_index]), axis=1)
    values = torch.ones(pairs.shape[1], dtype=torch.float32)
    return coo(torch.from_numpy(pairs), values, (n_users, n_items))


def find_cross_domain_duplicates(
    users: np.ndarray,
    items: np.ndarray,
    domains: np.ndarray,
    min_jaccard: float,
    min_users: int,
) -> list[DuplicatePair]:
    """Source/target item pairs whose user sets nearly coincide (sparse co-occurrence, no dense
    items x items matrix); each source item keeps its best-matching target item."""
    sides = {}
    _, user_index = np.unique(users, return_inverse=True)
    n_users = int(user_index.max()) + 1 if len(users) else 0
    for domain in (SOURCE, TARGET):
        rows = domains == domain
        ids, item_index = np.unique(items[rows], return_inverse=True)
        matrix = _incidence(user_index[rows], item_index, n_users, len(ids))
        support = torch.sparse.sum(matrix, 0).to_dense().numpy() if len(ids) else np.zeros(0)
        keep = np.flatnonzero(support >= min_users)
        sides[domain] = (ids[keep], support[keep], matrix.index_select(1, torch.from_numpy(keep)))
    (s_ids, s_sup, s_mat), (t_ids, t_sup, t_mat) = sides[SOURCE], sides[TARGET]
    if not len(s_ids) or not len(t_ids):
        return []
    overlap = sparse_matmul(s_mat.t().coalesce(), t_mat)
    (s_idx, t_idx), shared = overlap.indices().numpy(), overlap.values().numpy()
    jaccard = shared / (s_sup[s_idx] + t_sup[t_idx] - shared)
    found = np.flatnonzero(jaccard >= min_jaccard)
    best: dict[int, DuplicatePair] = {}
    for k in found[np.argsort(-jaccard[found], kind="stable")]:
        s = int(s_idx[k])
        if s not in best:
            best[s] = DuplicatePair(
                str(s_ids[s]),
                str(t_ids[t_idx[k]]),
                float(jaccard[k]),
                int(s_sup[s]),
                int(t_sup[t_idx[k]]),
            )
    return sorted(best.values(), key=lambda p: (-p.jaccard, p.source_item))


def apply_duplicates(
    raw: RawDataset, domains: np.ndarray, pairs: list[DuplicatePair], action: str
) -> tuple[RawDataset, dict]:
    """report: keep the data; drop: remove the source copies' rows (the target task keeps its
    catalogue, the source no longer carries the answer); merge: the source copy's rows become
    rows of the target item (a user who has both keeps one)."""
    mapping = {p.source_item: p.target_item for p in pairs}
    copies = (domains == SOURCE) & np.isin(raw.items, list(mapping))
    info = {
        "pairs": len(pairs),
        "action": action,
        "source_interactions": int(copies.sum()),
        "examples": [dataclasses.asdict(p) for p in pairs[:5]],
    }
    if not pairs or action == "report":
        return raw, info
    if action == "drop":
        keep = ~copies
        return _take(raw, keep), info
    items = raw.items.astype(object)
    items[copies] = [mapping[i] for i in raw.items[copies].tolist()]
    items = items.astype(str)
    row_domains = None if raw.domains is None else raw.domains.copy()
    if row_domains is not None:
        row_domains[copies] = TARGET
    # A user who already has the target item keeps that row, not a second copy of it.
    existing = set(
        zip(
            raw.users[domains == TARGET].tolist(),
            raw.items[domains == TARGET].tolist(),
            strict=True,
        )
    )
    keep = np.ones(len(raw), dtype=bool)
    for row in np.flatnonzero(copies):
        key = (raw.users[row], items[row])
        if key in existing:
            keep[row] = False
        else:
            existing.add(key)
    merged = dataclasses.replace(raw, items=items, domains=row_domains)
    return _take(merged, keep), info


def _take(raw: RawDataset, keep: np.ndarray) -> RawDataset:
    return dataclasses.replace(
        raw,
        users=raw.users[keep],
        items=raw.items[keep],
        timestamps=raw.timestamps[keep],
        ratings=raw.ratings[keep],
        domains=None if raw.domains is None else raw.domains[keep],
    )
