"""Unit tests of bench/flamegraph.py: py-spy's collapsed stacks -> top-N table and SVG."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fixtures.scripts import load_script

FLAMEGRAPH = Path(__file__).resolve().parents[3] / "bench" / "flamegraph.py"
fg = load_script(FLAMEGRAPH, "xdrec_bench_flamegraph")

RAW = """\
main (app.py:1);serve (/x/y/server.py:10);handle (/x/y/servicer.py:20) 6
main (app.py:1);serve (/x/y/server.py:10);encode (/x/y/encoding.py:30) 3
main (app.py:1);select (selectors.py:468) 1
not a stack line
"""


def test_top_n_counts_self_and_total_time_of_busy_samples() -> None:
    stacks = fg.parse_collapsed(RAW)
    assert sum(stacks.values()) == 10
    rows, busy, idle = fg.top_n(stacks, n=5)
    assert (busy, idle) == (9, 1)  # the selector wait is idle
    assert fg.is_idle(("run (a.py:1)", "EpollSelector.select (selectors.py:468)"))
    assert [r.function for r in rows] == ["handle (servicer.py:20)", "encode (encoding.py:30)"]
    assert abs(rows[0].self_share - 6 / 9) < 1e-9
    table = fg.top_n_markdown("ranker", stacks)
    assert "| 1 | `handle (servicer.py:20)` | 66.7 | 66.7 |" in table


def test_svg_has_a_frame_per_function_with_widths_by_samples() -> None:
    svg = fg.flamegraph_svg("t", fg.parse_collapsed(RAW))
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    widths = {
        title.split(":")[0]: float(width)
        for title, width in re.findall(r"<title>([^<]+)</title><rect [^>]*width=\"([\d.]+)\"", svg)
    }
    assert widths["main (app.py"] > widths["serve (server.py"] > widths["handle (servicer.py"]
    assert "data-depth" not in svg  # every frame got its y coordinate
