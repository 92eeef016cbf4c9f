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

from trainer.config import SOURCE_GENRES, DataConfig, ExperimentConfig
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
    if data.unlisted_domains not in ("error", "drop"):
        raise ValueError(
            f"data.unlisted_domains: unknown value '{data.unlisted_domains}'; "
            "choose one of ['error', 'drop']"
        )
    validate_source_domains(data)
    if not 0 < data.duplicate_jaccard <= 1:
        raise ValueError("data.duplicate_jaccard must be in (0, 1]")
    if data.duplicate_min_users < 1:
        raise ValueError("data.duplicate_min_users must be >= 1")


def validate_source_domains(data: DataConfig) -> None:
    """Names unique, none equal to the target's, and one way of saying what the sources are."""
    if data.source_domains is None:
        return
    if not data.source_domains:
        raise ValueError(
            "data.source_domains is empty; list at least one source, e.g. "
            "[{name: action, categories: [Action]}], or remove it to use data.source_categories"
        )
    if data.source_categories != SOURCE_GENRES:
        raise ValueError(
            "data.source_domains and data.source_categories are both set; list the categories "
            "inside each source domain and drop data.source_categories"
        )
    if not any(s.enabled for s in data.source_domains):
        raise ValueError("data.source_domains: every source has enabled: false; enable one")
    names = [s.name for s in data.source_domains]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated or not all(names):
        raise ValueError(f"data.source_domains: names must be non-empty and unique; got {names}")
    if data.target_domain in names:
        raise ValueError(
            f"data.source_domains: {data.target_domain!r} is also data.target_domain; a domain "
            "is either a source or the target"
        )


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
        raw, domains, pairs, data.cross_domain_duplicates, data.target_domain
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
    from trainer.splits import assign_domains

    if raw.domains is None:
        return raw, {"count": 0, "action": data.item_id_collisions}
    coarse = assign_domains(raw, data)  # several named sources are all "source" here
    in_source = set(raw.items[coarse == SOURCE].tolist())
    in_target = set(raw.items[coarse == TARGET].tolist())
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
    collide = np.isin(raw.items, colliding) & (coarse != "")
    items = raw.items.astype(object)
    items[collide] = np.char.add(
        np.char.add(coarse[collide].astype(str), ":"), raw.items[collide].astype(str)
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


def _item_users(item_ids: np.ndarray, user_index: np.ndarray, rank: np.ndarray, min_users: int):
    """Per item (with >= min_users users): its users sorted rarest first, as one flat array."""
    ids, item_index = np.unique(item_ids, return_inverse=True)
    pairs = np.unique(np.stack([item_index, user_index]), axis=1)
    support = np.bincount(pairs[0], minlength=len(ids))
    pairs = pairs[:, support[pairs[0]] >= min_users]
    order = np.lexsort((rank[pairs[1]], pairs[0]))
    items, users = pairs[0][order], pairs[1][order]
    starts = np.searchsorted(items, np.arange(len(ids)))
    return ids, support, items, users, starts


def find_cross_domain_duplicates(
    users: np.ndarray,
    items: np.ndarray,
    domains: np.ndarray,
    min_jaccard: float,
    min_users: int,
) -> list[DuplicatePair]:
    """Source/target item pairs whose user sets nearly coincide; each source item keeps its
    best-matching target item.

    Exact, without an items x items co-occurrence matrix (that grows with users x history
    length squared): prefix filtering. With users ordered rarest first, two sets with
    Jaccard >= t must share a user among the first ``n - ceil(t * n) + 1`` users of each, so only
    pairs meeting in those short prefixes are candidates; their overlap is then counted exactly.
    """
    _, user_index = np.unique(users, return_inverse=True)
    in_domains = (domains == SOURCE) | (domains == TARGET)
    frequency = np.bincount(user_index[in_domains], minlength=int(user_index.max(initial=-1)) + 1)
    rank = np.empty(len(frequency), dtype=np.int64)
    rank[np.lexsort((np.arange(len(frequency)), frequency))] = np.arange(len(frequency))
    sides = {}
    for domain in (SOURCE, TARGET):
        rows = domains == domain
        ids, support, flat_items, flat_users, starts = _item_users(
            items[rows], user_index[rows], rank, min_users
        )
        position = np.arange(len(flat_items)) - starts[flat_items]
        sizes = support[flat_items]
        in_prefix = position < sizes - np.ceil(min_jaccard * sizes - 1e-9) + 1
        sides[domain] = (
            ids,
            support,
            flat_users,
            starts,
            flat_items[in_prefix],
            flat_users[in_prefix],
        )
    s_ids, s_sup, s_users, s_starts, s_pre_items, s_pre_users = sides[SOURCE]
    t_ids, t_sup, t_users, t_starts, t_pre_items, t_pre_users = sides[TARGET]
    # Candidates: source and target items meeting in a prefix user.
    order = np.argsort(t_pre_users, kind="stable")
    t_pre_users, t_pre_items = t_pre_users[order], t_pre_items[order]
    lo = np.searchsorted(t_pre_users, s_pre_users, "left")
    counts = np.searchsorted(t_pre_users, s_pre_users, "right") - lo
    total = int(counts.sum())
    take = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(total)
    candidates = np.unique(np.stack([np.repeat(s_pre_items, counts), t_pre_items[take]]), axis=1)
    best: dict[int, DuplicatePair] = {}
    for s, t in candidates.T.tolist():
        small, large = sorted((s_sup[s], t_sup[t]))
        if small < min_jaccard * large:
            continue
        shared = len(
            np.intersect1d(
                s_users[s_starts[s] : s_starts[s] + s_sup[s]],
                t_users[t_starts[t] : t_starts[t] + t_sup[t]],
                assume_unique=True,
            )
        )
        jaccard = shared / (s_sup[s] + t_sup[t] - shared)
        if jaccard >= min_jaccard and (s not in best or jaccard > best[s].jaccard):
            best[s] = DuplicatePair(
                str(s_ids[s]), str(t_ids[t]), float(jaccard), int(s_sup[s]), int(t_sup[t])
            )
    return sorted(best.values(), key=lambda p: (-p.jaccard, p.source_item))


def apply_duplicates(
    raw: RawDataset,
    domains: np.ndarray,
    pairs: list[DuplicatePair],
    action: str,
    target_name: str = TARGET,
) -> tuple[RawDataset, dict]:
    """report: keep the data; drop: remove the source copies' rows (the target task keeps its
    catalogue, the source no longer carries the answer); merge: the source copy's rows become
    rows of the target item (a user who has both keeps one). ``target_name``: the target's
    value in the log's own domain column."""
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
        return raw.rows(keep), info
    items = raw.items.astype(object)
    items[copies] = [mapping[i] for i in raw.items[copies].tolist()]
    items = items.astype(str)
    row_domains = None if raw.domains is None else raw.domains.copy()
    if row_domains is not None:
        row_domains = row_domains.astype(object)
        row_domains[copies] = target_name
        row_domains = row_domains.astype(str)
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
    return merged.rows(keep), info
