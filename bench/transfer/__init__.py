"""The transfer benchmark behind ``make bench``: every strategy of every model family against
every baseline, on the full log and on a sparse (review-log-like) form of it, 3 seeds.

What runs is declared, not coded (``variants``):

* **dataset variants** (``DATASET_VARIANTS``): the config as given (``full``) and its ``sparse``
  form (each user keeps at most 10 interactions per domain, drawn with a fixed seed); each gets
  its own report ``<out>/<config stem>[-sparse]/transfer.{md,json,png}``;
* **source settings** (``SOURCE_SETTINGS``): sections of a report, each on its own split: the
  config's own sources, and a named multi-source config run with one and with two sources;
* **families** (``FAMILIES``) x **strategy rows** (``STRATEGY_ROWS``), plus rows of their own
  (``EXTRA_ROWS``: the distilled student next to its teacher). A family, strategy or config this
  branch does not have is skipped with a printed note, so adding one is a one-line change.

The simple baselines (popularity, recent popularity with its window chosen on validation,
item-KNN, BPR-MF; trainer/baselines/) head every section, fitted once per split and cached.
Selection is on validation only (epochs, baseline settings, which row is the "best transfer");
test metrics are computed once per finished run and only reported.

Modules: ``variants`` (what runs), ``plan`` (the runs of one invocation, config hashes),
``runner`` (splits, baselines, rows x seeds, resume), ``report`` (tables, targets, JSON, plot),
``distill_row`` (the student row); the CLI is ``bench/transfer_benchmark.py``.
"""
