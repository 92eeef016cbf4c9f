"""What a capacity run leaves behind: ``capacity.json``, ``capacity.md`` (the table with the
ceiling beside each figure) and ``capacity.png`` (p99 against offered rate, one line per target,
the budget and the ceiling's capacity marked).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.serving.report import jsonable


def _f(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(result: dict[str, Any]) -> str:
    """One row per target: capacity, its ratio to the ceiling, p99 there and at half of it,
    CPU per request of each process at capacity, and resident memory."""
    ceiling = result.get("ceiling_rps")
    ceiling_probe = result["targets"][0].get("probe", {}).get("throughput_rps")
    lines = [
        "| target | capacity (req/s, p99 <= "
        f"{result['settings']['p99_budget_ms']:g} ms, 0 errors) | ceiling (req/s) | x ceiling | "
        "p99 at capacity (ms) | p99 at half (ms) | CPU ms/request at capacity | RSS MiB | "
        "CPU-bound req/s (x ceiling's) | closed-loop req/s (x ceiling's) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target in result["targets"]:
        at, half = target.get("at_capacity") or {}, target.get("half_capacity") or {}
        cpu = at.get("cpu_ms_per_request", {})
        memory = target.get("memory_mb", {})
        lines.append(
            "| "
            + " | ".join(
                [
                    target["name"],
                    _f(target["capacity_rps"], ".0f"),
                    _f(ceiling, ".0f"),
                    _f(target.get("x_ceiling"), ".2f"),
                    _f(at.get("p99_ms"), ".1f"),
                    _f(half.get("p99_ms"), ".1f"),
                    ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()) or "-",
                    ", ".join(
                        f"{k} {v['rss_mb']:.0f}" for k, v in memory.items() if v.get("rss_mb")
                    )
                    or "-",
                    (
                        f"{bound['rps']:.0f} ({_f(bound.get('x_ceiling'), '.2f')})"
                        if (bound := target.get("cpu_bound"))
                        else "-"
                    ),
                    f"{probe:.0f} ({_f(probe / ceiling_probe if ceiling_probe else None, '.2f')})"
                    if (probe := target.get("probe", {}).get("throughput_rps"))
                    else "-",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = result["settings"]["p99_budget_ms"]
    fig, ax = plt.subplots(figsize=(10, 6))
    for target in result["targets"]:
        half = [target["half_capacity"]] if target.get("half_capacity") else []
        current = [r for r in target["steps"] if not r.get("superseded")]
        steps = sorted(current + half, key=lambda r: r["rate"])
        xs = [r["rate"] for r in steps]
        ys = [r["p99_ms"] if r["p99_ms"] is not None else float("nan") for r in steps]
        style = "--" if target["kind"] == "ceiling" else "-"
        (line,) = ax.plot(xs, ys, style, marker="o", markersize=4, label=target["name"])
        fails = [(x, y) for x, y, r in zip(xs, ys, steps, strict=True) if not r["passed"]]
        if fails:
            ax.scatter(*zip(*fails, strict=True), marker="x", color=line.get_color(), s=50)
        if target["capacity_rps"]:
            ax.axvline(target["capacity_rps"], color=line.get_color(), alpha=0.3, linewidth=1)
    ceiling = result.get("ceiling_rps")
    if ceiling:
        ax.axvline(ceiling, color="black", linestyle=":", label=f"ceiling {ceiling:.0f} req/s")
    ax.axhline(budget, color="red", linestyle=":", label=f"p99 budget {budget:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (req/s, open loop)")
    ax.set_ylabel("p99 latency from intended send time (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        f"{result['title']}\n(x: failed step; thin vertical lines: each target's capacity)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(out: Path, result: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "capacity.json", out / "capacity.md", out / "capacity.png"]
    paths[0].write_text(json.dumps(jsonable(result), indent=2) + "\n")
    notes = "".join(f"\nnote: {n}\n" for n in result.get("notes", []))
    paths[1].write_text(f"{result['title']}\n\n{table(result)}\n{notes}")
    plot(result, paths[2])
    return paths
