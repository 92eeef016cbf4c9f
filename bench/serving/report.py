"""What a run leaves behind: the console table, ``serving.json``, ``serving.md`` and
``serving.png``.

Why the ratios sit next to the raw figures: times on a shared machine drift from run to run, so
the comparable numbers are each system against in-process ONNX Runtime measured in the same run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from bench.serving.measure import Level


def _f(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


COLUMNS = (
    "system",
    "api",
    "conc",
    "req/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "x tput",
    "x p50",
    "x p99",
    "errors",
    "cli CPU ms/req",
    "srv CPU ms/req",
    "max |d| vs ORT",
)


def table_rows(levels: list[Level]) -> list[list[str]]:
    return [
        [
            lv.system,
            lv.api,
            str(lv.concurrency),
            _f(lv.throughput_rps, ".0f"),
            _f(lv.p50_ms, ".2f"),
            _f(lv.p95_ms, ".2f"),
            _f(lv.p99_ms, ".2f"),
            _f(lv.x_throughput_vs_ort, ".2f"),
            _f(lv.x_p50_vs_ort, ".1f"),
            _f(lv.x_p99_vs_ort, ".1f"),
            str(lv.errors),
            _f(lv.client_cpu_ms_per_req, ".3f"),
            _f(lv.server_cpu_ms_per_req, ".3f"),
            _f(lv.max_abs_diff_vs_ort, ".1e"),
        ]
        for lv in levels
    ]


MIN_WIDTHS = (12, 10, 4, 6, 7, 7, 7, 6, 5, 5, 6)


def format_text(levels: list[Level]) -> str:
    rows = [list(COLUMNS), *table_rows(levels)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    widths = [max(w, m) for w, m in zip(widths, MIN_WIDTHS + (0,) * len(COLUMNS), strict=False)]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


def format_markdown(levels: list[Level]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(levels)]
    return "\n".join(lines)


def plot(levels: list[Level], path: Path, title: str) -> None:
    """Four panels against concurrency: throughput, p50, p95, p99 (log scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[Level]] = {}
    for lv in levels:
        series.setdefault(f"{lv.system} / {lv.api}", []).append(lv)
    panels = (
        ("throughput_rps", "throughput (requests/s)"),
        ("p50_ms", "p50 latency (ms)"),
        ("p95_ms", "p95 latency (ms)"),
        ("p99_ms", "p99 latency (ms)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ticks = sorted({lv.concurrency for lv in levels})
    for i, (label, points) in enumerate(sorted(series.items())):
        points = sorted(points, key=lambda lv: lv.concurrency)
        xs = [lv.concurrency for lv in points]
        style = "--" if points[0].api == "in-process" else "-"
        for ax, (attr, _) in zip(axes, panels, strict=True):
            ax.plot(
                xs,
                [getattr(lv, attr) for lv in points],
                linestyle=style,
                marker="o" if len(xs) > 1 else "*",
                markersize=5 if len(xs) > 1 else 10,
                color=colors[i % len(colors)],
                label=label,
            )
    for ax, (_, name) in zip(axes, panels, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrency (closed loop)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title + "  (dashed: in-process ONNX Runtime, the ceiling)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for package in ("onnxruntime-gpu", "onnxruntime", "grpcio", "torch", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1_5_15": list(os.getloadavg()),
        "versions": versions,
    }


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def write_results(out: Path, result: dict[str, Any], levels: list[Level]) -> list[Path]:
    """``serving.json`` (``result``, NaN as null), ``serving.md`` and ``serving.png``."""
    title, notes = result["title"], result["notes"]
    paths = [out / "serving.json", out / "serving.md", out / "serving.png"]
    paths[0].write_text(json.dumps(jsonable(result), indent=2) + "\n")
    paths[1].write_text(
        f"{title}\n\n{format_markdown(levels)}\n" + "".join(f"\nnote: {n}\n" for n in notes)
    )
    plot(levels, paths[2], title)
    return paths


def table_line(level: Level) -> str:
    """One level as a row of the console table (progress while the run goes on)."""
    return format_text([level]).splitlines()[1]
