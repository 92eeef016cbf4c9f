"""Time-consistent recency in training: a sweep of settings on one split, scored on validation.

Loads the split once, trains every requested setting (a name and its ``section.field=value``
overrides on top of the config) for each seed, and prints validation NDCG@10 per group (warm,
cold) and pooled - the numbers to select on - next to popularity and recent popularity on the
same split. ``--test`` also scores the test split of the settings given (report only: pick the
setting on validation first, then ask for its test figures). Writes JSON.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/recency_sweep.py \\
        --config trainer/configs/ml1m.yaml --strategy pretrain_finetune \\
        --setting base: \\
        --setting recent05:model.recent_popularity_window=0.05,train.objective=future
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
from trainer.strategies import get_strategy
from trainer.training import Trainer

POPULARITY = ("popularity", "recent_popularity")


def parse_setting(text: str) -> tuple[str, list[str]]:
    """``name:a.b=1,c.d=x`` -> (name, overrides). Values containing commas: use ';' instead."""
    name, _, rest = text.partition(":")
    separator = ";" if ";" in rest else ","
    return name, [o for o in rest.split(separator) if o]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="trainer/configs/ml1m.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--strategy", default="pretrain_finetune")
    parser.add_argument("--setting", action="append", required=True, metavar="NAME:OVERRIDES")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--test", action="store_true", help="also score test (never selects)")
    parser.add_argument("--out", default="artifacts/bench/recency_sweep.json")
    args = parser.parse_args(argv)

    base = apply_overrides(ExperimentConfig.load(args.config), args.set)
    check_config(base)
    started = time.perf_counter()
    split = split_dataset(load_dataset(base.data), base.data, base.split)
    print(f"split in {time.perf_counter() - started:.0f}s: {json.dumps(split.stats())}", flush=True)
    report: dict = {"config": args.config, "set": args.set, "strategy": args.strategy, "runs": {}}

    kinds = tuple(k for k in BASELINES if k.name in POPULARITY)
    quiet = lambda *a, **k: None  # noqa: E731 (their test lines: only with --test, below)
    for name, record in run_baselines(split, [0], base.baselines, quiet, kinds).items():
        valid, test = record.valid[0], record.test[0]
        report["runs"][name] = {"valid": valid, **({"test": test} if args.test else {})}
        print(f"{name:>28}: valid {line(valid, split.valid)}", flush=True)

    for text in args.setting:
        name, overrides = parse_setting(text)
        config = apply_overrides(base, overrides)
        check_config(config)
        trainer = Trainer(config, split, show_progress=False)
        use_source = get_strategy(args.strategy).uses_source
        runs = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            result = trainer.fit(args.strategy, seed)
            run = {
                "seed": seed,
                "epoch": result.best_epoch,
                "valid": result.valid,
                "curve": result.curve,
            }
            model = result.model
            if hasattr(model, "recent_weight"):
                run["recent_weight"] = float(model.recent_weight.detach())
            if args.test:
                m = config.model
                refresh_item_features(model, split, m.recent_popularity_window, "test")
                run["test"] = {
                    k: evaluate_model(
                        model,
                        v,
                        m.max_source_history,
                        m.max_target_history,
                        trainer.device,
                        use_source,
                    )
                    for k, v in split.test.items()
                }
            runs.append(run)
            extra = f" w={run['recent_weight']:.2f}" if "recent_weight" in run else ""
            print(
                f"{name:>28} seed {seed}: valid {line(result.valid, split.valid)} "
                f"epoch {result.best_epoch}{extra} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
            warm_curve = " ".join(
                f"{p['valid_warm_ndcg@10']:.3f}" for p in result.curve if "valid_warm_ndcg@10" in p
            )
            print(f"{'':>28} warm by epoch: {warm_curve}", flush=True)
            if args.test:
                print(f"{'':>28} test  {line(run['test'], split.test)}", flush=True)
        report["runs"][name] = {"overrides": overrides, "seeds": runs}
        if len(runs) > 1:
            for group in ("warm", "cold"):
                values = [r["valid"][group]["ndcg@10"] for r in runs]
                print(f"{'':>28} valid {group} {np.mean(values):.4f} ± {np.std(values):.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out} in {time.perf_counter() - started:.0f}s")
    return 0


def line(metrics: dict, sets: dict) -> str:
    warm, cold = metrics["warm"]["ndcg@10"], metrics["cold"]["ndcg@10"]
    return f"warm {warm:.4f} cold {cold:.4f} pooled {pooled_ndcg(metrics, sets):.4f}"


if __name__ == "__main__":
    raise SystemExit(main())
