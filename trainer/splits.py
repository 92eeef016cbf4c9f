"""Domain assignment and the honest evaluation split (design brief, section 3).

The target domain is split on one global timeline: the last slice of time is test, the slice
before it validation, everything earlier training, so nothing from the future reaches training.
A fixed share of the users present in both domains become cold-start users: all their target
interactions leave training; half of them select models (validation), the other half are
reported (test). Histories fed to the model at evaluation time stop at the split's cutoff.

Several named source domains (data.source_domains) are merged into one source domain: one
vocabulary and one time-ordered history per user, so models and the serving contract see one
source; ``CrossDomainSplit.source_item_domain`` keeps which source each source item came from.
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
    # Several source domains merge into one source vocabulary; this says which source each
    # source index came from: 1..N (the order of source_domain_names), 0 for padding. None
    # means one source (every item 1). Models may add a per-source-domain embedding from it.
    source_item_domain: np.ndarray | None = None
    source_domain_names: list[str] = field(default_factory=lambda: ["source"])
    # Known target interactions of non-cold users (index, original time, phase 0 train / 1 valid
    # / 2 test): what windowed baselines (recent popularity) count up to a cutoff.
    target_events: dict[str, np.ndarray] = field(default_factory=dict)
    # trainer/dataset_report.py: sizes, split name, what the data checks found.
    dataset_report: dict = field(default_factory=dict)
    split_method: str = "time"
    # Original timestamps (float64) of ``train_target``, element by element: when each training
    # interaction happened, so training can ask what was popular at the moment of a label
    # (trainer/item_features.py). Empty for splits made without it.
    train_target_times: dict[str, np.ndarray] = field(default_factory=dict)

    def item_domains(self) -> np.ndarray:
        """``source_item_domain``, or all ones (padding 0) for a split made without it."""
        if self.source_item_domain is not None:
            return self.source_item_domain
        out = np.ones(len(self.source_vocab), dtype=np.int64)
        out[0] = 0
        return out

    def source_domain_sizes(self) -> dict[str, int]:
        """Items per source domain, with several sources (empty with one)."""
        if len(self.source_domain_names) < 2:
            return {}
        counts = np.bincount(self.item_domains(), minlength=len(self.source_domain_names) + 1)
        return {
            f"source_items_{name}": int(counts[k + 1])
            for k, name in enumerate(self.source_domain_names)
        }

    def stats(self) -> dict[str, int | float]:
        return {
            "source_items": len(self.source_vocab) - 1,
            **self.source_domain_sizes(),
            "target_items": len(self.target_vocab) - 1,
            "train_source_interactions": int(sum(len(v) for v in self.train_source.values())),
            "train_target_interactions": int(sum(len(v) for v in self.train_target.values())),
            "cold_users": len(self.cold_users),
            **{f"valid_{k}_users": len(v) for k, v in self.valid.items()},
            **{f"test_{k}_users": len(v) for k, v in self.test.items()},
        }


@dataclass
class DomainAssignment:
    """Per interaction: its coarse domain ("source" / "target" / "" = dropped) and, for source
    rows, the number of its source domain (1..N in ``DataConfig.sources()`` order, 0 elsewhere)."""

    domains: np.ndarray
    source_numbers: np.ndarray
    names: list[str]
    # Items that several sources claim: each is kept in the first one listed (reported).
    multi_source_items: list[str] = field(default_factory=list)
    # Rows of sources listed with enabled: false (dropped from ``domains``): they still decide
    # which users count as present in both domains, so the cold-start users stay the same.
    disabled_rows: np.ndarray | None = None


def assign_domains(raw: RawDataset, config: DataConfig) -> np.ndarray:
    """Returns per-interaction "source" / "target" / "" (dropped), from the log or item categories."""
    return assign_source_domains(raw, config).domains


def assign_source_domains(raw: RawDataset, config: DataConfig) -> DomainAssignment:
    """Which domain each interaction belongs to, from the log's domain column or the categories.

    Several sources merge into the one source domain the model reads (one vocabulary, one
    time-ordered history per user); ``source_numbers`` keeps which source each row came from.
    An item claimed by several sources belongs to the first one listed in the config.
    """
    assignment = _assign(raw, config, config.sources(include_disabled=True))
    enabled = [s.enabled for s in config.sources(include_disabled=True)]
    if all(enabled):
        return assignment
    # Renumber the enabled sources 1..N; the disabled ones' rows leave the source domain.
    renumber = np.zeros(len(enabled) + 1, dtype=np.int64)
    renumber[1:][enabled] = np.arange(1, sum(enabled) + 1)
    disabled = (assignment.source_numbers > 0) & (renumber[assignment.source_numbers] == 0)
    domains = assignment.domains.copy()
    domains[disabled] = ""
    return DomainAssignment(
        domains,
        renumber[assignment.source_numbers],
        [n for n, e in zip(assignment.names, enabled, strict=True) if e],
        assignment.multi_source_items,
        disabled,
    )


def _assign(raw: RawDataset, config: DataConfig, sources: list) -> DomainAssignment:
    names = [s.name for s in sources]
    number = {name: k + 1 for k, name in enumerate(names)}
    if raw.domains is not None:
        values = raw.domains
        known = {*names, config.target_domain}
        found = set(np.unique(values).tolist())
        unlisted = sorted(found - known)
        if unlisted and config.unlisted_domains != "drop":
            raise ValueError(
                f"{raw.name}: column 'domain' holds {unlisted[:5]}, which are neither a source "
                f"({names}) nor the target ({config.target_domain!r}); list them in "
                "data.source_domains, set data.target_domain, or set data.unlisted_domains=drop "
                "to ignore those rows"
            )
        numbers = np.array([number.get(v, 0) for v in values.tolist()], dtype=np.int64)
        domains = np.where(
            numbers > 0, SOURCE, np.where(values == config.target_domain, TARGET, "")
        )
        multi: list[str] = []
        if len(names) > 1:
            rows = numbers > 0
            pairs = np.unique(np.stack([raw.items[rows], numbers[rows].astype(str)]), axis=1)
            ids, counts = np.unique(pairs[0], return_counts=True)
            multi = sorted(ids[counts > 1].tolist())
        return DomainAssignment(domains, numbers, names, multi)
    target_set = set(config.target_categories)
    if not target_set or not all(s.categories for s in sources):
        raise ValueError(
            "data.source_categories (or every entry of data.source_domains) and "
            "data.target_categories must all be non-empty"
        )
    source_sets = [set(s.categories) for s in sources]
    item_domain: dict[str, tuple[str, int]] = {}
    multi = []
    for item_id, item in raw.item_table.items():
        cats = set(item.categories)
        claims = [k + 1 for k, source_set in enumerate(source_sets) if cats & source_set]
        in_target = bool(cats & target_set)
        if claims and in_target:
            if not config.drop_overlapping_items:
                item_domain[item_id] = (TARGET, 0)
        elif claims:
            item_domain[item_id] = (SOURCE, claims[0])
            if len(claims) > 1:
                multi.append(item_id)
        elif in_target:
            item_domain[item_id] = (TARGET, 0)
    assigned = [item_domain.get(i, ("", 0)) for i in raw.items.tolist()]
    domains = np.array([d for d, _ in assigned] or [], dtype="<U6")
    numbers = np.array([k for _, k in assigned], dtype=np.int64)
    return DomainAssignment(domains, numbers, names, sorted(multi))


def source_item_domains(
    vocab: Vocab, items: np.ndarray, numbers: np.ndarray, n_sources: int
) -> np.ndarray:
    """[len(vocab)] source-domain number per source vocabulary index (0 = padding); an item seen
    under several sources gets the first listed (the smallest number)."""
    out = np.full(len(vocab), n_sources + 1, dtype=np.int64)
    indices = np.array([vocab.index[i] for i in items.tolist()], dtype=np.int64)
    np.minimum.at(out, indices, numbers)
    out[0] = 0
    out[out > n_sources] = 0  # (cannot happen: every vocab item has a source row)
    return out


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
    assignment = assign_source_domains(raw, data)
    domains = assignment.domains
    is_src, is_tgt = domains == SOURCE, domains == TARGET
    if not is_src.any() or not is_tgt.any():
        raise ValueError(
            f"the domain split left {int(is_src.sum())} source and {int(is_tgt.sum())} target "
            "interactions; check data.source_categories / data.source_domains / "
            "data.target_categories"
        )
    source_vocab = Vocab.build(raw.items[is_src].tolist())
    target_vocab = Vocab.build(raw.items[is_tgt].tolist())
    names = assignment.names
    source_item_domain = source_item_domains(
        source_vocab, raw.items[is_src], assignment.source_numbers[is_src], len(names)
    )

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
    in_source = set(src_by_user)
    if assignment.disabled_rows is not None:  # the same cold-start draw as with those sources
        in_source |= set(raw.users[assignment.disabled_rows].tolist())
    overlap = sorted(in_source & set(tgt_by_user))
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
    timeline = np.sort(raw.timestamps)  # rank -> original time, for the per-user splits

    def original_times(times: np.ndarray) -> np.ndarray:
        """Split times -> original timestamps (the per-user splits encode phase and rank)."""
        if method == "time":
            return times.astype(np.float64)
        return timeline[(times % (len(raw) + 1)).astype(np.int64)].astype(np.float64)

    train_target_times = {
        u: original_times(tgt_by_user[u][1][tgt_by_user[u][1] < t_valid]) for u in train_target
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
    for domain, by_user in ((SOURCE, src_by_user), (TARGET, tgt_by_user)):
        for u, (items, times) in by_user.items():
            if domain == TARGET and u in cold_users:
                continue
            keep = times < t_test
            times = original_times(times)  # the feature store wants real times
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
        source_item_domain=source_item_domain,
        source_domain_names=list(names),
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
            source_rows={name: assignment.source_numbers == k + 1 for k, name in enumerate(names)},
            multi_source_items=assignment.multi_source_items,
        ),
        split_method=method,
        train_target_times=train_target_times,
    )
