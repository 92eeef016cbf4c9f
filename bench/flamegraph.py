"""Collapsed stacks (``py-spy record --format raw``) -> a flame graph SVG and a top-N table.

Why our own renderer: py-spy writes either an SVG or the raw stacks per run, and the top-N table
needs the raw stacks; one recording gives both this way (half the sampling on a 2-core machine).
The SVG is a plain icicle-free flame graph (root at the bottom, width = share of samples, a
``<title>`` tooltip per frame), readable in any browser.
"""

from __future__ import annotations

import html
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

FRAME_HEIGHT = 16
WIDTH = 1200


def parse_collapsed(text: str) -> Counter[tuple[str, ...]]:
    """``frame;frame;frame count`` lines -> stack (root first) -> samples."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def short(frame: str) -> str:
    """``function (path/to/module.py:123)`` -> ``function (module.py:123)``."""
    return re.sub(r"\(([^()]*/)?([^/()]+)\)$", r"(\2)", frame)


IDLE_FUNCTIONS = ("select", "poll", "epoll_wait")
"""Leaf functions that mean "waiting for work": the event loop's selector (py-spy samples it as
active because the thread is inside a Python call), and the same wait in native frames."""


def is_idle(stack: tuple[str, ...]) -> bool:
    """Whether the leaf is the event loop (or a native poller) waiting for work."""
    if not stack:
        return False
    function = stack[-1].split(" (", 1)[0]
    return function.rsplit(".", 1)[-1] in IDLE_FUNCTIONS or "epoll_wait" in function


@dataclass(frozen=True)
class TopRow:
    function: str
    self_share: float
    total_share: float


def top_n(stacks: Counter[tuple[str, ...]], n: int = 20) -> tuple[list[TopRow], int, int]:
    """The functions with the most self samples (busy samples only: the idle selector wait is
    left out), with their inclusive share; and (busy samples, idle samples)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    busy = idle = 0
    for stack, count in stacks.items():
        if is_idle(stack):
            idle += count
            continue
        busy += count
        own[short(stack[-1])] += count
        for frame in {short(f) for f in stack}:
            total[frame] += count
    rows = [
        TopRow(frame, count / busy, total[frame] / busy)
        for frame, count in own.most_common(n)
        if busy
    ]
    return rows, busy, idle


def top_n_markdown(title: str, stacks: Counter[tuple[str, ...]], n: int = 20) -> str:
    rows, busy, idle = top_n(stacks, n)
    seen = busy + idle
    lines = [
        f"### {title}",
        "",
        f"{seen} samples, {busy} busy ({100 * busy / seen if seen else 0:.0f}%); shares below "
        "are of the busy samples (the event loop's idle selector wait left out).",
        "",
        "| # | function (self) | self % | total % |",
        "|---:|---|---:|---:|",
    ]
    for i, row in enumerate(rows, start=1):
        name = row.function.replace("|", "\\|")
        lines.append(
            f"| {i} | `{name}` | {100 * row.self_share:.1f} | {100 * row.total_share:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _tree(stacks: Counter[tuple[str, ...]]) -> dict:
    root: dict = {"count": 0, "children": {}}
    for stack, count in stacks.items():
        node = root
        node["count"] += count
        for frame in stack:
            child = node["children"].get(frame)
            if child is None:
                child = {"count": 0, "children": {}}
                node["children"][frame] = child
            child["count"] += count
            node = child
    return root


def flamegraph_svg(title: str, stacks: Counter[tuple[str, ...]], min_share: float = 0.002) -> str:
    """A flame graph of ``stacks`` (frames narrower than ``min_share`` of the width are left
    out to keep the file small)."""
    root = _tree(stacks)
    total = max(root["count"], 1)
    rects: list[str] = []
    depth_max = 0

    def walk(node: dict, x: float, depth: int) -> None:
        nonlocal depth_max
        for frame, child in sorted(node["children"].items()):
            width = WIDTH * child["count"] / total
            if child["count"] / total >= min_share:
                depth_max = max(depth_max, depth)
                rects.append(_rect(frame, child["count"], total, x, depth, width))
                walk(child, x, depth + 1)
            x += width

    walk(root, 0.0, 0)
    height = (depth_max + 3) * FRAME_HEIGHT
    body = "\n".join(rects)
    # frames were placed with depth counted from the bottom: flip to SVG coordinates
    body = re.sub(
        r'data-depth="(\d+)" y="0"',
        lambda m: f'y="{height - (int(m.group(1)) + 2) * FRAME_HEIGHT}"',
        body,
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="monospace" font-size="11">\n'
        f'<text x="4" y="12">{html.escape(title)} ({total} samples)</text>\n{body}\n</svg>\n'
    )


def _rect(frame: str, count: int, total: int, x: float, depth: int, width: float) -> str:
    label = short(frame)
    hue = 10 + zlib.crc32(label.split(" ")[0].encode()) % 40
    tip = html.escape(f"{label}: {count} samples ({100 * count / total:.1f}%)")
    text = ""
    chars = int(width / 7)
    if chars >= 4:
        shown = label if len(label) <= chars else label[: chars - 2] + ".."
        text = (
            f'<text x="{x + 2:.1f}" data-depth="{depth}" y="0" dy="12">{html.escape(shown)}</text>'
        )
    rect = (
        f'<rect x="{x:.1f}" data-depth="{depth}" y="0" width="{max(width - 0.5, 0.1):.1f}" '
        f'height="{FRAME_HEIGHT - 1}" fill="hsl({hue},85%,60%)"/>'
    )
    return f"<g><title>{tip}</title>{rect}{text}</g>"


def render(raw: Path, svg: Path, title: str) -> Counter[tuple[str, ...]]:
    """Reads py-spy's raw output and writes the SVG next to it; returns the stacks."""
    stacks = parse_collapsed(raw.read_text(encoding="utf-8"))
    svg.write_text(flamegraph_svg(title, stacks), encoding="utf-8")
    return stacks
