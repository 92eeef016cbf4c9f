"""Progress for long loops: a tqdm bar on a terminal, a plain line every few seconds in logs (CI).

The plain line carries an ETA for the loop (mean time per step so far x steps left; an upper
bound when early stopping ends the loop sooner)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator


class Progress:
    def __init__(
        self, iterable: Iterable[int], desc: str, enabled: bool = True, every_s: float = 5.0
    ) -> None:
        self._items = list(iterable)
        self._desc = desc
        self._enabled = enabled
        self._every = every_s
        self._postfix = ""
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(self._items, desc=desc, leave=False)

    def __iter__(self) -> Iterator[int]:
        if self._bar is not None:
            yield from self._bar
            return
        last = started = time.monotonic()
        for position, item in enumerate(self._items, 1):
            yield item
            if self._enabled and time.monotonic() - last >= self._every:
                now = time.monotonic()
                left = (now - started) / position * (len(self._items) - position)
                print(
                    f"    {self._desc}: {position}/{len(self._items)} {self._postfix} "
                    f"eta {format_seconds(left)}",
                    file=sys.stderr,
                    flush=True,
                )
                last = time.monotonic()

    def set_postfix(self, **values: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**values)
        self._postfix = " ".join(f"{k}={v}" for k, v in values.items())


def format_seconds(seconds: float) -> str:
    """42s, 3m05s, 1h02m: short enough for a progress line."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
