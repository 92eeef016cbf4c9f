"""A CrossDomainSplit written by hand: tiny logs where the right recommendation is known."""

from __future__ import annotations

import numpy as np

from trainer.splits import CrossDomainSplit, EvalSet, Vocab


def hand_split(
    train_target: dict[str, list[int]],
    train_source: dict[str, list[int]] | None = None,
    n_target: int = 6,
    n_source: int = 4,
    valid: dict[str, EvalSet] | None = None,
    test: dict[str, EvalSet] | None = None,
    target_events: dict[str, np.ndarray] | None = None,
) -> CrossDomainSplit:
    """Target items are indices 1..n_target ("t1".."tN"), source 1..n_source ("s1".."sN")."""
    target_vocab = Vocab(["<pad>", *[f"t{i}" for i in range(1, n_target + 1)]])
    source_vocab = Vocab(["<pad>", *[f"s{i}" for i in range(1, n_source + 1)]])
    as_arrays = {u: np.array(h, dtype=np.int64) for u, h in train_target.items()}
    popularity = np.zeros(n_target + 1, dtype=np.int64)
    for history in as_arrays.values():
        np.add.at(popularity, history, 1)
    empty = {"warm": evalset("x", []), "cold": evalset("x", [])}
    return CrossDomainSplit(
        source_vocab=source_vocab,
        target_vocab=target_vocab,
        target_titles=list(target_vocab.ids),
        source_titles=list(source_vocab.ids),
        train_source={u: np.array(h, dtype=np.int64) for u, h in (train_source or {}).items()},
        train_target=as_arrays,
        valid=valid or empty,
        test=test or empty,
        cold_users=set(),
        feature_rows=[],
        target_popularity=popularity,
        boundaries={"valid_start": 100.0, "test_start": 200.0},
        fingerprint="hand",
        target_events=target_events or {},
    )


def evalset(
    name: str,
    rows: list[tuple[str, list[int], list[int], list[int]]],
) -> EvalSet:
    """rows: (user, source history, target history, relevant target items)."""
    return EvalSet(
        name,
        [r[0] for r in rows],
        [np.array(r[1], dtype=np.int64) for r in rows],
        [np.array(r[2], dtype=np.int64) for r in rows],
        [np.array(r[3], dtype=np.int64) for r in rows],
    )
