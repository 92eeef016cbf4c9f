"""Transfer-strategy benchmark: every strategy on one split, 3 seeds, warm vs cold users.

    python bench/transfer_benchmark.py                       # MovieLens-1M, all strategies
    python bench/transfer_benchmark.py --config trainer/configs/ml100k.yaml --seeds 0

Writes <out>/transfer.md (table), transfer.json (every number) and transfer.png (NDCG@10 per
strategy, warm vs cold, error bars = std over seeds). Selection uses validation only; each test
number is computed once per finished run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.baselines.runner import run_baselines  # noqa: E402
from trainer.config import ExperimentConfig  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.dataset_report import format_dataset_report  # noqa: E402
from trainer.experiment import StrategyRuns, write_plots  # noqa: E402
from trainer.results_table import RunRecord, best_baseline, results_markdown  # noqa: E402
from trainer.splits import split_dataset  # noqa: E402
from trainer.training import Trainer  # noqa: E402


@dataclass
class Variant:
    """One row of the table: a strategy plus the config changes that define it."""

    label: str
    strategy: str
    train: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    note: str = ""


VARIANTS = [
    Variant("target_only", "target_only", note="baseline: same architecture, no source data"),
    Variant("joint (CMF, lambda=1)", "joint", note="shared user tower, L = L_s + 1.0 * L_t"),
    Variant("pretrain+finetune", "pretrain_finetune", note="transferred parts at 0.5x LR"),
    Variant(
        "pretrain+finetune, frozen src emb",
        "pretrain_finetune",
        train={"freeze": ["source_embeddings"]},
    ),
    Variant("emcdr", "emcdr", note="MLP mapping fitted on overlapping users"),
    Variant("ptupcdr", "ptupcdr", note="personalised meta-network bridge, target task"),
    Variant(
        "pretrain+finetune + text",
        "pretrain_finetune",
        model={"text_fusion": True},
        note="MiniLM title embeddings fused",
    ),
]


def run(config: ExperimentConfig, variants: list[Variant], out_dir: Path) -> dict:
    started = time.perf_counter()
    raw = load_dataset(config.data)
    split = split_dataset(raw, config.data, config.split)
    print(format_dataset_report(split.dataset_report), flush=True)
    print("split: " + ", ".join(f"{k}={v}" for k, v in split.stats().items()), flush=True)
    runs: dict[str, RunRecord] = dict(run_baselines(split, config.train.seeds, config.baselines))
    for variant in variants:
        record = runs[variant.label] = StrategyRuns(
            variant.label, is_baseline=variant.strategy == "target_only"
        )
        cfg = copy.deepcopy(config)
        cfg.train.strategy = variant.strategy
        for key, value in variant.train.items():
            setattr(cfg.train, key, value)
        for key, value in variant.model.items():
            setattr(cfg.model, key, value)
        trainer = Trainer(cfg, split)
        for seed in cfg.train.seeds:
            result = record.add_trained(trainer, seed, variant.strategy)
            test = record.test[-1]
            print(
                f"  {variant.label:<34} seed={seed} epochs={result.best_epoch:<3} "
                f"test warm ndcg@10={test['warm']['ndcg@10']:.4f} cold ndcg@10={test['cold']['ndcg@10']:.4f} "
                f"({result.seconds:.0f}s)",
                flush=True,
            )
    elapsed = time.perf_counter() - started
    table = results_markdown(runs, split.dataset_report, split.split_method)
    verdicts = verdict_lines(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = (
        f"Dataset {config.data.dataset}, split {split.stats()}, seeds {config.train.seeds}, "
        f"{elapsed / 60:.1f} min on this machine.\n\n"
    )
    (out_dir / "transfer.md").write_text(header + table + "\n\n" + "\n".join(verdicts) + "\n")
    write_plots(runs, out_dir, stem="transfer")
    report = {
        "dataset": config.data.dataset,
        "config": config.to_dict(),
        "split": split.stats(),
        "split_method": split.split_method,
        "dataset_report": split.dataset_report,
        "seconds": elapsed,
        "variants": {
            v.label: {"strategy": v.strategy, "train": v.train, "model": v.model, "note": v.note}
            for v in variants
        },
        "results": {label: r.to_json() for label, r in runs.items()},
    }
    (out_dir / "transfer.json").write_text(json.dumps(report, indent=2))
    print("\n" + table + "\n\n" + "\n".join(verdicts))
    print(
        f"\nbenchmark took {elapsed / 60:.1f} min; wrote {out_dir}/transfer.md, transfer.json, transfer.png"
    )
    return report


def verdict_lines(runs: dict[str, RunRecord]) -> list[str]:
    """Says plainly, per strategy, how it compares with the best baseline of each user group
    (NDCG@10; "intervals overlap" when mean +/- std of the two do not separate)."""
    refs = {group: best_baseline(runs, group) for group in ("warm", "cold")}
    lines = []
    for label, record in runs.items():
        if record.is_baseline:
            continue
        s = record.summary()
        checks = []
        for group, ref in refs.items():
            value = s.get(group, {}).get("ndcg@10")
            if not ref or not value or not ref[1]:
                continue
            reference = runs[ref[0]].summary()[group]["ndcg@10"]
            if min(value["runs"], reference["runs"]) < 2:
                spread = " (single run: no interval)"
            elif (
                value["mean"] - value["std"] > ref[1] + reference["std"]
                or value["mean"] + value["std"] < ref[1] - reference["std"]
            ):
                spread = ""
            else:
                spread = " (intervals overlap)"
            checks.append(
                f"{group} {value['mean'] / ref[1] - 1:+.1%} vs best baseline {ref[0]}{spread}"
            )
        lines.append(f"- **{label}**: " + "; ".join(checks))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "trainer/configs/ml1m.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument("--seeds", type=int, nargs="*", help="override the config's seeds")
    parser.add_argument(
        "--only",
        nargs="*",
        help="labels of the variants to run (target_only and the simple baselines always run)",
    )
    args = parser.parse_args()
    config = ExperimentConfig.load(args.config)
    if args.seeds:
        config.train.seeds = args.seeds
    variants = VARIANTS
    if args.only:
        variants = [v for v in VARIANTS if v.label in args.only or v.strategy == "target_only"]
    run(config, variants, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
