"""Per-user caps on interactions per domain: MovieLens made as sparse as a review log.

Review logs (e.g. product categories of a shop) hold a handful of interactions per user and
domain, where MovieLens users rate hundreds of films. ``data.max_interactions_per_user_domain``
keeps, for every user and domain, at most that many interactions drawn uniformly at random with
``data.subsample_seed``, before the split, so every command (train, the benchmark, export) can
train and evaluate on the sparse form. The draw depends only on the log and the seed: the same
config gives the same rows on every machine. What it removed is in the dataset report.
"""

from __future__ import annotations

import numpy as np

from trainer.config import DataConfig
from trainer.data import RawDataset


def domain_labels(raw: RawDataset, data: DataConfig) -> np.ndarray:
    """Per row, the domain it is capped in ("" = in no domain: left alone, the split drops it).

    Several named source domains count as separate domains when the split can tell them apart
    (``assign_source_domains``), so each source keeps its own cap, as in a multi-category log.
    """
    from trainer import splits  # splits imports data: keep the import lazy

    if hasattr(splits, "assign_source_domains"):
        assignment = splits.assign_source_domains(raw, data)
        domains = np.asarray(assignment.domains).astype(str)
        numbers = np.asarray(assignment.source_numbers).astype(str)
        return np.where(domains == "", "", np.char.add(np.char.add(domains, ":"), numbers))
    return np.asarray(splits.assign_domains(raw, data)).astype(str)


def capped_rows(users: np.ndarray, domains: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Boolean mask keeping at most ``cap`` random rows per (user, domain); rows with domain ""
    are all kept. A random key per row, sorted within each group: the ``cap`` smallest stay."""
    n = len(users)
    keep = np.ones(n, dtype=bool)
    if cap <= 0 or n == 0:
        return keep
    key = np.random.default_rng(seed).random(n)
    order = np.lexsort((key, domains, users))
    u, d = users[order], domains[order]
    new_group = np.r_[True, (u[1:] != u[:-1]) | (d[1:] != d[:-1])]
    starts = np.flatnonzero(new_group)
    group_start = starts[np.cumsum(new_group) - 1]
    rank = np.arange(n) - group_start
    keep[order] = (rank < cap) | (d == "")
    return keep


def cap_interactions(raw: RawDataset, data: DataConfig) -> RawDataset:
    """Applies ``data.max_interactions_per_user_domain`` (0 = no cap) and records what it did in
    ``raw.checks["subsample"]`` (the dataset report prints it)."""
    cap = data.max_interactions_per_user_domain
    if cap < 0:
        raise ValueError(
            f"data.max_interactions_per_user_domain={cap} must be >= 0 (0 keeps every interaction)"
        )
    if cap == 0:
        return raw
    domains = domain_labels(raw, data)
    keep = capped_rows(raw.users, domains, cap, data.subsample_seed)
    in_domain = domains != ""
    info = {
        "max_interactions_per_user_domain": cap,
        "subsample_seed": data.subsample_seed,
        "interactions_before": int(in_domain.sum()),
        "interactions_after": int((keep & in_domain).sum()),
    }
    capped = raw.rows(keep)
    capped.checks = {**raw.checks, "subsample": info}
    return capped
