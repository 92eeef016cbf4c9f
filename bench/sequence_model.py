"""Sequence model vs history tower vs the simple baselines, on one split and one seed.

Trains each requested (family, strategy) pair with the same config, reports validation NDCG@10
(warm, cold) - the numbers to select on - and, with ``--test``, the test figures of the same
models (for reporting only, never for choosing). Popularity, recent popularity and item-KNN run on
the same split so the ratios the issue's targets use come from one run. Writes JSON.

    OMP_NUM_THREADS=2 nice -n 5 .venv/bin/python bench/sequence_model.py \\
        --config trainer/configs/ml1m-sequence.yaml --pairs sequence:pretrain_finetune --test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from trainer.baselines import BASELINES
from trainer.baselines.runner import run_baselines
from trainer.config import ExperimentConfig, apply_overrides
from trainer.config_checks import check_config
from trainer.data import load_dataset
from trainer.evaluation import evaluate_model, pooled_ndcg
from trainer.item_features import refresh_item_features
from trainer.splits import split_dataset
from trainer.training import Trainer

CHEAP_BASELINES = ("popularity", "recent_popularity", "item_knn")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="trainer/configs/ml100k-sequence.yaml")
    parser.add_argument(
        "--pairs",
        nargs="+",
        default=["sequence:pretrain_finetune"],
        help="family:strategy pairs, e.g. sequence:joint history_tower:pretrain_finetune",
    )
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", action="store_true", help="also report test (never selects)")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--out", default="artifacts/bench/sequence_model.json")
    args = parser.parse_args(argv)

    base = apply_overrides(ExperimentConfig.load(args.config), args.set)
    check_config(base)
    raw = load_dataset(base.data)
    split = split_dataset(raw, base.data, base.split)
    print("split:", json.dumps(split.stats()), flush=True)
    report: dict = {"config": args.config, "overrides": args.set, "seed": args.seed, "runs": {}}

    if not args.no_baselines:
        kinds = tuple(k for k in BASELINES if k.name in CHEAP_BASELINES)
        for name, record in run_baselines(split, [args.seed], base.baselines, kinds=kinds).items():
            report["runs"][name] = {
                "valid": {k: v["ndcg@10"] for k, v in record.valid[-1].items()},
                "test": {k: v["ndcg@10"] for k, v in record.test[-1].items()},
            }

    for pair in args.pairs:
        family, _, strategy = pair.partition(":")
        config = apply_overrides(base, [f"model.family={family}", f"train.strategy={strategy}"])
        check_config(config)
        trainer = Trainer(config, split, show_progress=True)
        started = time.perf_counter()
        result = trainer.fit(strategy, args.seed)
        seconds = time.perf_counter() - started
        # Pre-training epochs count too (pretrain_finetune trains them first, inside fit).
        pretrain = config.train.pretrain_epochs if strategy == "pretrain_finetune" else 0
        epochs = max(len(result.curve) + pretrain, 1)
        entry = {
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.curve),
            "pretrain_epochs": pretrain,
            "seconds": round(seconds, 1),
            "seconds_per_epoch": round(seconds / epochs, 2),
            "valid": {k: v["ndcg@10"] for k, v in result.valid.items()},
            "valid_pooled": pooled_ndcg(result.valid, split.valid),
        }
        if args.test:
            m = config.model
            refresh_item_features(result.model, split, m.recent_popularity_window, "test")
            entry["test"] = {
                name: evaluate_model(
                    result.model, s, m.max_source_history, m.max_target_history, trainer.device
                )["ndcg@10"]
                for name, s in split.test.items()
            }
        report["runs"][pair] = entry
        print(pair, json.dumps(entry), flush=True)

    def best_baseline(phase: str, group: str) -> float:
        values = [r[phase][group] for n, r in report["runs"].items() if n in CHEAP_BASELINES]
        return max(values) if values else float("nan")

    print(
        f"\n{'run':<34} {'valid warm':>10} {'valid cold':>10} {'test warm':>10} {'test cold':>10}"
    )
    for name, entry in report["runs"].items():
        test = entry.get("test", {})
        print(
            f"{name:<34} {entry['valid']['warm']:>10.4f} {entry['valid']['cold']:>10.4f} "
            f"{test.get('warm', np.nan):>10.4f} {test.get('cold', np.nan):>10.4f}"
        )
    if not args.no_baselines:
        for phase in ("valid", "test") if args.test else ("valid",):
            for name, entry in report["runs"].items():
                if name in CHEAP_BASELINES or phase not in entry:
                    continue
                ratios = {g: entry[phase][g] / best_baseline(phase, g) for g in ("warm", "cold")}
                report["runs"][name][f"{phase}_vs_best_baseline"] = ratios
                print(
                    f"{phase} {name}: warm x{ratios['warm']:.3f}, cold x{ratios['cold']:.3f} "
                    "of the best of popularity / recent popularity / item-KNN"
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
