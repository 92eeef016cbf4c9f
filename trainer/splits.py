"""Domain assignment and the honest evaluation split (design brief, section 3).

The target domain is split on one global timeline: the last slice of time is test, the slice
before it validation, everything earlier training, so nothing from the future reaches training.
A fixed share of the users present in both domains become cold-start users: all their target
interactions leave training; half of them select models (validation), the other half are
reported (test). Histories fed to the model at evaluation time stop at the split's cutoff.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainer.config import DataConfig, SplitConfig
from trainer.data import RawDataset
from trainer.dataset_report import build_dataset_report

PAD = "<pad>"
SOURCE, TARGET = "source", "target"


@dataclass
class Vocab:
    """Item ids of one domain; position 0 is padding so index 0 never names an item."""

    ids: list[str]
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {item: i for i, item in enumerate(self.ids)}

    @classmethod
    def build(cls, items: list[str]) -> Vocab:
        return cls([PAD, *sorted(set(items))])

    def __len__(self) -> int:  # including padding
        return len(self.ids)


@dataclass
class EvalSet:
    """Users to evaluate with their input histories (indices, oldest first) and relevant items."""

    name: str
    users: list[str]
    source_histories: list[np.ndarray]
    target_histories: list[np.ndarray]
    labels: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class CrossDomainSplit:
    source_vocab: Vocab
    target_vocab: Vocab
    target_titles: list[str]  # aligned with target_vocab (title of index i)
    source_titles: list[str]
    # Training histories per user (indices, oldest first): cut at the validation boundary.
    train_source: dict[str, np.ndarray]
    train_target: dict[str, np.ndarray]
    valid: dict[str, EvalSet]  # "warm", "cold"
    test: dict[str, EvalSet]
    cold_users: set[str]
    # Event log the serving feature store starts from: (user, domain, item, timestamp).
    feature_rows: list[tuple[str, str, str, float]]
    target_popularity: np.ndarray  # training-window interaction count per target index
    boundaries: dict[str, float]
    fingerprint: str
    # Known target interactions of non-cold users (index, original time, phase 0 train / 1 valid
    # / 2 test): what windowed baselines (recent popularity) count up to a cutoff.
    target_events: dict[str, np.ndarray] = field(default_factory=dict)
    # trainer/dataset_report.py: sizes, split name, what the data checks found.
    dataset_report: dict = field(default_factory=dict)
    split_method: str = "time"

    def stats(self) -> dict[str, int | float]:
        return {
            "source_items": len(self.source_vocab) - 1,
            "target_items": len(self.target_vocab) - 1,
            "train_source_interactions": int(sum(len(v) for v in self.train_source.values())),
            "train_target_interactions": int(sum(len(v) for v in self.train_target.values())),
            "cold_users": len(self.cold_users),
            **{f"valid_{k}_users": len(v) for k, v in self.valid.items()},
            **{f"test_{k}_users": len(v) for k, v in self.test.items()},
        }


def assign_domains(raw: RawDataset, config: DataConfig) -> np.ndarray:
    """Returns per-interaction "source" / "target" / "" (dropped), from the log or item categories."""
    if raw.domains is not None:
        return raw.domains
    source_set, target_set = set(config.source_categories), set(config.target_categories)
    if not source_set or not target_set:
        raise ValueError("data.source_categories and data.target_categories must both be non-empty")
    item_domain: dict[str, str] = {}
    for item_id, item in raw.item_table.items():
        cats = set(item.categories)
        in_source, in_target = bool(cats & source_set), bool(cats & target_set)
        if in_source and in_target:
            item_domain[item_id] = "" if config.drop_overlapping_items else TARGET
        elif in_source:
            item_domain[item_id] = SOURCE
        elif in_target:
            item_domain[item_id] = TARGET
    return np.array([item_domain.get(i, "") for i in raw.items.tolist()])


def _group_by_user(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> dict[str, tuple]:
    """Groups rows by user, each group sorted by time (ties keep file order)."""
    order = np.lexsort((np.arange(len(users)), times, users))
    users, items, times = users[order], items[order], times[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    return {users[s]: (items[s:e], times[s:e]) for s, e in zip(starts, ends, strict=True)}


def per_user_split_times(
    raw: RawDataset, is_tgt: np.ndarray, method: str, config: SplitConfig
) -> tuple[np.ndarray, float, float]:
    """Times that turn a per-user split into the global-cutoff form the rest of the code uses.

    Every row gets ``phase * (n + 1) + rank`` (rank = position on the original timeline, row
    order for ties): phase 0 rows sit before the validation cutoff, 1 between the cutoffs, 2 after,
    and each user's order inside a phase is kept. Source rows are all phase 0 (input only).
    """
    n = len(raw)
    rank = np.empty(n, dtype=np.float64)
    rank[np.lexsort((np.arange(n), raw.timestamps))] = np.arange(n)
    phase = np.zeros(n, dtype=np.int64)
    target_rows = np.flatnonzero(is_tgt)
    if method == "leave_last_out":
        order = target_rows[np.lexsort((rank[target_rows], raw.users[target_rows]))]
        users = raw.users[order]
        ends = np.r_[np.flatnonzero(users[1:] != users[:-1]), len(order) - 1]
        starts = np.r_[0, ends[:-1] + 1]
        counts = ends - starts + 1
        phase[order[ends[counts >= 2]]] = 2  # last interaction: test
        phase[order[ends[counts >= 3] - 1]] = 1  # the one before: validation
    elif method == "random":
        draw = np.random.default_rng(config.split_seed).random(len(target_rows))
        phase[target_rows] = np.where(
            draw < config.test_share,
            2,
            np.where(draw < config.test_share + config.valid_share, 1, 0),
        )
    else:
        raise ValueError(f"unknown split '{method}'")
    return phase * (n + 1) + rank, float(n + 1), float(2 * (n + 1))


def split_dataset(raw: RawDataset, data: DataConfig, config: SplitConfig) -> CrossDomainSplit:
    if not 0 < config.test_share < 1 or not 0 < config.valid_share < 1:
        raise ValueError("split.test_share and split.valid_share must be in (0, 1)")
    if config.test_share + config.valid_share >= 1:
        raise ValueError("split.test_share + split.valid_share must be < 1")
    if not 0 <= config.cold_share < 1:
        raise ValueError("split.cold_share must be in [0, 1)")
    domains = assign_domains(raw, data)
    is_src, is_tgt = domains == SOURCE, domains == TARGET
    if not is_src.any() or not is_tgt.any():
        raise ValueError(
            f"the domain split left {int(is_src.sum())} source and {int(is_tgt.sum())} target "
            "interactions; check data.source_categories / data.target_categories"
        )
    source_vocab = Vocab.build(raw.items[is_src].tolist())
    target_vocab = Vocab.build(raw.items[is_tgt].tolist())

    def titles_of(vocab: Vocab) -> list[str]:
        return [""] + [raw.item_table[i].title if i in raw.item_table else i for i in vocab.ids[1:]]

    method = data.split
    if method == "time":
        if not raw.has_timestamps:
            raise ValueError(
                "data.split=time needs a timestamp column; use leave_last_out or random"
            )
        # Global timeline of the target domain: [.. train ..| valid |  test ]
        times = raw.timestamps
        target_times = np.sort(times[is_tgt])
        n = len(target_times)
        t_valid = float(target_times[int(n * (1 - config.test_share - config.valid_share))])
        t_test = float(target_times[int(n * (1 - config.test_share))])
    else:
        times, t_valid, t_test = per_user_split_times(raw, is_tgt, method, config)

    src_by_user = _group_by_user(raw.users[is_src], raw.items[is_src], times[is_src])
    tgt_by_user = _group_by_user(raw.users[is_tgt], raw.items[is_tgt], times[is_tgt])
    overlap = sorted(set(src_by_user) & set(tgt_by_user))
    rng = np.random.default_rng(config.split_seed)
    cold = rng.permutation(overlap)[: int(round(config.cold_share * len(overlap)))].tolist()
    n_cold_valid = int(round(config.cold_valid_fraction * len(cold)))
    cold_valid, cold_test = set(cold[:n_cold_valid]), set(cold[n_cold_valid:])
    cold_users = cold_valid | cold_test

    def idx(vocab: Vocab, items: np.ndarray) -> np.ndarray:
        return np.array([vocab.index[i] for i in items.tolist()], dtype=np.int64)

    def before(by_user: dict, user: str, cutoff: float, vocab: Vocab) -> np.ndarray:
        if user not in by_user:
            return np.zeros(0, dtype=np.int64)
        items, times = by_user[user]
        return idx(vocab, items[times < cutoff])

    def window(by_user: dict, user: str, lo: float, hi: float, vocab: Vocab) -> np.ndarray:
        items, times = by_user[user]
        return np.unique(idx(vocab, items[(times >= lo) & (times < hi)]))

    train_source = {
        u: h for u in src_by_user if len(h := before(src_by_user, u, t_valid, source_vocab))
    }
    train_target = {
        u: h
        for u in tgt_by_user
        if u not in cold_users and len(h := before(tgt_by_user, u, t_valid, target_vocab))
    }

    def warm_set(name: str, lo: float, hi: float) -> EvalSet:
        users, src, tgt, labels = [], [], [], []
        for u in sorted(tgt_by_user):
            if u in cold_users:
                continue
            history = before(tgt_by_user, u, lo, target_vocab)
            if not len(history):
                continue  # new to the target domain without being held out: not "warm"
            relevant = np.setdiff1d(window(tgt_by_user, u, lo, hi, target_vocab), history)
            if len(relevant):
                users.append(u)
                src.append(before(src_by_user, u, lo, source_vocab))
                tgt.append(history)
                labels.append(relevant)
        return EvalSet(name, users, src, tgt, labels)

    def cold_set(name: str, members: set[str], cutoff: float) -> EvalSet:
        users, src, tgt, labels = [], [], [], []
        for u in sorted(members):
            history = before(src_by_user, u, cutoff, source_vocab)
            if not len(history):
                continue  # no source history before the cutoff: nothing to transfer from
            users.append(u)
            src.append(history)
            tgt.append(np.zeros(0, dtype=np.int64))
            labels.append(np.unique(idx(target_vocab, tgt_by_user[u][0])))
        return EvalSet(name, users, src, tgt, labels)

    valid = {
        "warm": warm_set("valid/warm", t_valid, t_test),
        "cold": cold_set("valid/cold", cold_valid, t_valid),
    }
    test = {
        "warm": warm_set("test/warm", t_test, np.inf),
        "cold": cold_set("test/cold", cold_test, t_test),
    }

    popularity = np.zeros(len(target_vocab), dtype=np.int64)
    for history in train_target.values():
        np.add.at(popularity, history, 1)

    known = is_tgt & ~np.isin(raw.users, list(cold_users))
    known_times = times[known]
    target_events = {
        "items": idx(target_vocab, raw.items[known]),
        "times": raw.timestamps[known].astype(np.float64),
        "phase": (known_times >= t_valid).astype(np.int64) + (known_times >= t_test),
    }

    # What the serving feature store knows "now" (the start of the test window).
    feature_rows: list[tuple[str, str, str, float]] = []
    timeline = np.sort(raw.timestamps)  # rank -> original time, for the per-user splits
    for domain, by_user in ((SOURCE, src_by_user), (TARGET, tgt_by_user)):
        for u, (items, times) in by_user.items():
            if domain == TARGET and u in cold_users:
                continue
            keep = times < t_test
            if method != "time":  # the feature store wants real times, not the phase encoding
                times = timeline[(times % (len(raw) + 1)).astype(np.int64)]
            feature_rows.extend(
                (u, domain, i, float(t)) for i, t in zip(items[keep], times[keep], strict=True)
            )

    return CrossDomainSplit(
        source_vocab=source_vocab,
        target_vocab=target_vocab,
        target_titles=titles_of(target_vocab),
        source_titles=titles_of(source_vocab),
        train_source=train_source,
        train_target=train_target,
        valid=valid,
        test=test,
        cold_users=cold_users,
        feature_rows=feature_rows,
        target_popularity=popularity,
        boundaries={"valid_start": t_valid, "test_start": t_test},
        fingerprint=raw.fingerprint(),
        target_events=target_events,
        dataset_report=build_dataset_report(
            raw.name,
            raw.users,
            raw.items,
            domains,
            method,
            raw.has_timestamps,
            raw.has_titles,
            raw.checks,
        ),
        split_method=method,
    )
