"""Transfer benchmark (``make bench``): every strategy x model family, one and two sources,
teacher and student, every baseline, on the full log and its sparse form, 3 seeds.

    python bench/transfer_benchmark.py                        # MovieLens-1M, everything
    python bench/transfer_benchmark.py --config trainer/configs/ml100k.yaml --seeds 0   # smoke
    python bench/transfer_benchmark.py --list                 # what would run, what is skipped
    python bench/transfer_benchmark.py --only pretrain+finetune --variants sparse --seeds 0

Writes ``<out>/<config stem>[-sparse]/transfer.md`` (one table per section, the issue's targets),
``transfer.json`` (every number; also the resume store) and ``transfer.png`` (NDCG@10 per row,
warm vs cold, error bars over seeds). Runs already in the JSON with the same config hash are
skipped (``--fresh`` starts over); each finished run rewrites the table and JSON at once.
What runs is declared in bench/transfer/variants.py; how it is judged in bench/transfer/report.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.transfer.plan import Plan, build_plan  # noqa: E402
from bench.transfer.runner import rewrite_reports, run_plan  # noqa: E402
from bench.transfer.store import STORE_FILE, ReportStore  # noqa: E402
from trainer.config import ExperimentConfig  # noqa: E402

DEFAULT_CONFIG = ROOT / "trainer/configs/ml1m.yaml"
DEFAULT_OUT = ROOT / "bench/results"


def describe(plan: Plan, out: Path) -> str:
    lines = []
    for report in plan.reports:
        store = ReportStore(out / report.name / STORE_FILE)
        for section in report.sections:
            pending = store.pending(section, plan.seeds)
            lines.append(
                f"{report.name} / {section.name}: {len(section.rows)} row(s) x "
                f"{len(plan.seeds)} seed(s), {pending} to train"
            )
            lines += [
                f"    {r.label}" + (" (baseline)" if r.baseline else "") for r in section.rows
            ]
    lines += [f"skipped: {s}" for s in plan.skipped]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="ROW",
        help="rows to run: a full label ('history_tower · emcdr'), a strategy label "
        "('pretrain+finetune') or a family ('sequence'); the simple baselines always run",
    )
    parser.add_argument(
        "--variants", nargs="+", metavar="NAME", help="dataset variants to run (full, sparse)"
    )
    parser.add_argument(
        "--sections", nargs="+", metavar="NAME", help="source settings to run (e.g. main)"
    )
    parser.add_argument("--fresh", action="store_true", help="ignore runs already in the JSON")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the reports from the runs already in the JSON, training nothing "
        "(rows not run yet are left out and the report says it is partial)",
    )
    parser.add_argument(
        "--progress", action="store_true", help="per-epoch progress of every training run"
    )
    args = parser.parse_args(argv)
    if not args.config.exists():
        parser.error(f"--config: {args.config} does not exist")
    config = ExperimentConfig.load(args.config)
    seeds = args.seeds or config.train.seeds
    plan = build_plan(config, args.config.stem, seeds, args.only, args.variants, args.sections)
    if not plan.reports:
        parser.error("nothing to run: the filters match no variant, section or row")
    print(describe(plan, args.out), flush=True)
    if args.list:
        return 0
    if args.report_only:
        for name in rewrite_reports(plan, args.out, config.to_dict()):
            print(f"wrote {args.out / name}/transfer.md, transfer.json, transfer.png")
        return 0
    started = time.perf_counter()
    written = run_plan(plan, args.out, config.to_dict(), args.fresh, args.progress)
    print()
    for name, report in written.items():
        print(f"targets, {name}:")
        for target in report["targets"]:
            print(f"  - {target['target']}: {target['status']}. {target['figure']}")
    print(f"\nbenchmark took {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
