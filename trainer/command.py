"""``xdrec train``: train the configured strategy and its baselines, print the comparison table."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "ml100k.yaml"


def _strategy_help() -> str:
    from trainer.strategies import STRATEGIES

    return "; ".join(f"{name}: {cls.summary}" for name, cls in STRATEGIES.items())


def register(subparsers: argparse._SubParsersAction) -> None:
    from trainer.strategies import strategy_names, table_entries  # torch-free

    parser = subparsers.add_parser(
        "train",
        help="train a transfer strategy + baselines, evaluate warm/cold users, save the run",
        description="Loads the data, makes the time-aware split with held-out cold-start users, trains "
        "the baselines (popularity, recent popularity, item-KNN, BPR-MF, target-only) and the configured strategy for each seed, selects "
        "on validation only, prints the test table and saves the best-validation model to --out.",
        epilog="examples:\n  xdrec train --out artifacts/run --set train.seeds=[0] --set train.epochs=20\n"
        "  xdrec train --out artifacts/run --resume    # skip the strategy/seed pairs already finished\n"
        "  torchrun --nproc_per_node=2 -m trainer --out artifacts/run   # data parallel (DDP)\n"
        "  torchrun --nnodes=2 --node_rank=0 --nproc_per_node=1 --master_addr=HOST --master_port=29500 \\\n"
        "      -m trainer --out /shared/run                               # multi-node (run on every node)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"experiment YAML (default: {DEFAULT_CONFIG.name}, MovieLens-100K)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="run directory to write (model.pt, vocabularies, features.tsv, results.*)",
    )
    parser.add_argument(
        "--strategy",
        choices=strategy_names(),
        metavar="STRATEGY",
        help=f"override train.strategy, one of {', '.join(strategy_names())} ({_strategy_help()})",
    )
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        choices=table_entries(),
        metavar="STRATEGY",
        help=f"extra strategies to put in the table: any of {', '.join(table_entries())}",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the checkpoints of the strategy/seed pairs already finished in --out "
        "(same config and data required) and train only the rest",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from trainer.config import ExperimentConfig, apply_overrides
    from trainer.config_checks import check_config
    from trainer.distributed import init_from_env
    from trainer.experiment import run_experiment

    try:
        config = apply_overrides(ExperimentConfig.load(args.config), args.overrides)
        if args.strategy:
            config.train.strategy = args.strategy
        check_config(config)  # every field, before the data is loaded or anything trains
        context = init_from_env()
        report = run_experiment(
            config,
            args.out,
            args.compare,
            show_progress=not args.quiet,
            context=context,
            resume=args.resume,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"xdrec train: {error}")
        return 2
    if not context.is_main:
        return 0
    print()
    print((args.out / "results.md").read_text())
    print(
        f"trained in {report['seconds']:.1f}s; run saved to {args.out} (table: results.md, plot: results.png)"
    )
    return 0
