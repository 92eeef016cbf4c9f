"""Scale benchmark: does training hold logs of e-commerce size? Peak RSS, time per epoch, time to
first validation on synthetic logs at three sizes spaced x10, each in its own process.

    python bench/scale_benchmark.py                           # small, medium, large (~3 min)
    python bench/scale_benchmark.py --sizes tiny --out /tmp/scale   # seconds (what the test runs)

The generator gives the shape of real e-commerce logs: power-law (Zipf) item popularity,
5-20 interactions per user per domain (skewed towards 5), 40% of the users in both domains, the
rest split evenly between source-only and target-only; the item catalogue is split in half
between the domains. Training is one epoch of the ``joint`` strategy (a target batch and a source
batch every step, sampled softmax with logQ, lazy sparse Adam) with the configured
``num_negatives``; validation ranks the full target catalogue for a sample of users (warm: last
target item held out; cold: shared users with their target history removed), as the JSON says.

Writes <out>/scale.json and scale.png (default out: docs/results/scale/).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Size:
    name: str
    users: int
    items: int  # both domains together
    interactions: int  # target for the generator; the JSON reports what it made


SIZES = {
    "tiny": Size("tiny", 2_000, 400, 20_000),
    "small": Size("small", 10_000, 2_000, 100_000),
    "medium": Size("medium", 100_000, 20_000, 1_000_000),
    "large": Size("large", 1_000_000, 200_000, 10_000_000),
}
SHARED_SHARE = 0.4
HISTORY_RANGE = (5, 20)
ZIPF_EXPONENT = 1.0
VALID_USERS = 2_000  # per group (warm, cold); the full catalogue is ranked for each


def history_lengths(rng: np.random.Generator, count: int, mean: float) -> np.ndarray:
    """Lengths in [5, 20] with p(k) ~ k^-a, a chosen so the mean hits ``mean`` (a heavy head at 5)."""
    ks = np.arange(HISTORY_RANGE[0], HISTORY_RANGE[1] + 1, dtype=np.float64)
    lo, hi = -5.0, 20.0
    for _ in range(60):
        a = (lo + hi) / 2
        p = ks**-a / (ks**-a).sum()
        lo, hi = (a, hi) if (p * ks).sum() > mean else (lo, a)
    return rng.choice(ks.astype(np.int64), size=count, p=p)


def zipf_items(rng: np.random.Generator, count: int, num_items: int) -> np.ndarray:
    """1-based item indices with Zipf popularity (item 1 most popular); index 0 is padding."""
    weights = 1.0 / np.arange(1, num_items + 1) ** ZIPF_EXPONENT
    cdf = np.cumsum(weights / weights.sum())
    picks = np.searchsorted(cdf, rng.random(count), side="right")
    return np.minimum(picks, num_items - 1) + 1


def make_split(size: Size, seed: int = 0, valid_users: int = VALID_USERS):
    """A CrossDomainSplit built straight from the synthetic indices (no string log, no feature rows)."""
    from trainer.splits import CrossDomainSplit, EvalSet, Vocab

    rng = np.random.default_rng(seed)
    n_shared = int(size.users * SHARED_SHARE)
    n_only = (size.users - n_shared) // 2
    src_users = np.arange(0, n_shared + n_only)  # shared first, then source-only
    tgt_users = np.r_[np.arange(0, n_shared), np.arange(n_shared + n_only, size.users)]
    mean = size.interactions / (len(src_users) + len(tgt_users))
    per_domain_items = size.items // 2

    def histories(users: np.ndarray) -> list[np.ndarray]:
        lengths = history_lengths(rng, len(users), mean)
        flat = zipf_items(rng, int(lengths.sum()), per_domain_items)
        return np.split(flat, np.cumsum(lengths)[:-1])

    src_hist, tgt_hist = histories(src_users), histories(tgt_users)
    names = np.array([f"u{i}" for i in range(size.users)], dtype=object)
    shared = np.arange(n_shared)
    sample = min(valid_users, n_shared // 2)
    cold = set(rng.choice(shared, size=sample, replace=False).tolist())
    warm_pool = [
        i for i in rng.permutation(len(tgt_users))[: 3 * sample] if tgt_users[i] not in cold
    ]
    warm = warm_pool[:sample]
    train_target, warm_set = {}, EvalSet("valid/warm", [], [], [], [])
    src_index = {int(u): h for u, h in zip(src_users, src_hist, strict=True)}
    held = {i: tgt_hist[i] for i in warm}
    for i, (u, h) in enumerate(zip(tgt_users, tgt_hist, strict=True)):
        if u in cold:
            continue
        train_target[names[u]] = h[:-1] if i in held else h
        if i in held:
            warm_set.users.append(names[u])
            warm_set.source_histories.append(src_index.get(int(u), np.zeros(0, np.int64)))
            warm_set.target_histories.append(h[:-1])
            warm_set.labels.append(h[-1:])
    cold_set = EvalSet("valid/cold", [], [], [], [])
    tgt_pos = {int(u): i for i, u in enumerate(tgt_users[:n_shared])}
    for u in sorted(cold):
        cold_set.users.append(names[u])
        cold_set.source_histories.append(src_index[u])
        cold_set.target_histories.append(np.zeros(0, np.int64))
        cold_set.labels.append(np.unique(tgt_hist[tgt_pos[u]]))
    train_source = {names[u]: h for u, h in zip(src_users, src_hist, strict=True)}
    vocab_src = Vocab(["<pad>", *(f"s{i}" for i in range(1, per_domain_items + 1))])
    vocab_tgt = Vocab(["<pad>", *(f"t{i}" for i in range(1, per_domain_items + 1))])
    popularity = np.zeros(len(vocab_tgt), dtype=np.int64)
    for h in train_target.values():
        np.add.at(popularity, h, 1)
    valid = {"warm": warm_set, "cold": cold_set}
    split = CrossDomainSplit(
        vocab_src, vocab_tgt, [""] * len(vocab_tgt), [""] * len(vocab_src),
        train_source, train_target, valid, valid, cold, [], popularity, {}, f"synthetic-{size.name}",
    )  # fmt: skip
    interactions = int(sum(map(len, src_hist)) + sum(map(len, tgt_hist)))
    return split, interactions


def train_interactions(split) -> int:
    """What one epoch trains on (the held-out validation samples are a fixed count of users, so
    they are a larger share of the smallest log)."""
    return int(
        sum(map(len, split.train_target.values())) + sum(map(len, split.train_source.values()))
    )


def measure(size: Size, num_negatives: int, batch_size: int, threads: int) -> dict:
    """One size, in this process: build the log, train one epoch, validate once."""
    started = time.perf_counter()
    import torch

    from trainer.config import ExperimentConfig
    from trainer.training import Trainer

    split, interactions = make_split(size)
    built = time.perf_counter()
    config = ExperimentConfig(name=f"scale-{size.name}")
    config.train.epochs = 1
    config.train.eval_every = 1
    config.train.batch_size = batch_size
    config.train.num_negatives = num_negatives
    config.train.seeds = [0]
    config.train.num_threads = threads
    trainer = Trainer(config, split, show_progress=True)
    marks: dict[str, float] = {}
    validate = trainer.validate

    def timed_validate(model, use_source=True):
        marks.setdefault("epoch_done", time.perf_counter())
        out = validate(model, use_source)
        marks.setdefault("validated", time.perf_counter())
        return out

    trainer.validate = timed_validate
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # one-time lazy imports, not the epoch
    fit_started = time.perf_counter()
    result = trainer.fit("joint", seed=0)
    return {
        "size": size.name,
        **{k: v for k, v in asdict(size).items() if k != "name"},
        "interactions": interactions,
        "train_interactions": train_interactions(split),
        "train_target_users": len(split.train_target),
        "train_source_users": len(split.train_source),
        "valid_users": {k: len(v) for k, v in split.valid.items()},
        "validation": f"full-catalogue ranking for a sample of {VALID_USERS} warm and {VALID_USERS} cold users",
        "sampled_softmax": not trainer.target_sampler.full,
        "sparse_gradients": trainer.sparse_gradients,
        "data_build_s": built - started,
        "epoch_s": marks["epoch_done"] - fit_started,
        "first_validation_s": marks["validated"] - started,
        "valid_ndcg@10": {k: v.get("ndcg@10") for k, v in result.valid.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def add_linearity(results: list[dict]) -> None:
    """Time per epoch per interaction relative to the smallest size (1.0 = exactly linear)."""
    base = results[0]
    for r in results:
        for key, count in (
            ("epoch_vs_linear", "interactions"),
            ("epoch_vs_linear_trained", "train_interactions"),
        ):
            r[key] = (r["epoch_s"] / r[count]) / (base["epoch_s"] / base[count])


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([r["train_interactions"] for r in results], dtype=float)
    fig, (rss, epoch) = plt.subplots(1, 2, figsize=(12, 4.5))
    rss.loglog(n, [r["peak_rss_mb"] / 1024 for r in results], "o-", label="peak RSS")
    rss.axhline(4, color="red", linestyle="--", label="4 GB budget")
    rss.set_xlabel("training interactions")
    rss.set_ylabel("GB")
    rss.set_title("Peak RSS per size (one process each)")
    rss.legend()
    t = np.array([r["epoch_s"] for r in results])
    epoch.loglog(n, t, "o-", label="time per epoch")
    epoch.loglog(n, t[0] * n / n[0], "k:", label="linear from the smallest")
    epoch.loglog(
        n, [r["first_validation_s"] for r in results], "s-", label="time to first validation"
    )
    epoch.set_xlabel("training interactions")
    epoch.set_ylabel("seconds")
    epoch.set_title("Training time (joint, 1 epoch, sampled softmax)")
    epoch.legend()
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="*", default=["small", "medium", "large"], choices=SIZES)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/scale")
    parser.add_argument("--num-negatives", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1024)
    # One thread: on a shared 2-core machine two intra-op threads fight other processes and an
    # epoch ran 10x slower (measured: 3.6 s vs 0.2 s per step at the medium size under load 11).
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # run one size in this process
    args = parser.parse_args()
    if args.worker:
        print(
            json.dumps(
                measure(SIZES[args.worker], args.num_negatives, args.batch_size, args.threads)
            )
        )
        return 0
    results = []
    for name in args.sizes:
        print(f"== {name}: {SIZES[name]}", flush=True)
        command = [sys.executable, __file__, "--worker", name]
        command += [
            "--num-negatives",
            str(args.num_negatives),
            "--batch-size",
            str(args.batch_size),
        ]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"   {r['interactions']:,} interactions: peak RSS {r['peak_rss_mb']:.0f} MB, "
            f"epoch {r['epoch_s']:.1f}s, first validation after {r['first_validation_s']:.1f}s",
            flush=True,
        )
    add_linearity(results)
    report = {
        "machine": "2 CPU cores shared, 24 GB RAM, no GPU",
        "command": " ".join(["python bench/scale_benchmark.py", *sys.argv[1:]]),
        "strategy": "joint",
        "num_negatives": args.num_negatives,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "goal": "peak RSS <= 4 GB at the largest size; epoch time within 1.3x of linear",
        "linearity": "epoch_vs_linear_trained = (epoch_s / train_interactions) relative to the "
        "smallest size; epoch_vs_linear uses all generated interactions instead",
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=2))
    plot(results, args.out)
    print(f"wrote {args.out}/scale.json and scale.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
