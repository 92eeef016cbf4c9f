"""Stop signals honoured from the first instant of a service process.

Why: a container's PID 1 ignores SIGTERM until a handler exists. The asyncio handlers of the
bootstrap (``services.common.server.serve``) only exist once the imports (ONNX Runtime, grpc)
and the app construction are done, which takes a good fraction of a second; a SIGTERM in that
window was ignored and the pod was SIGKILLed after its grace period. ``install_early_stop``
runs first thing in every service entry point: until the bootstrap takes over, SIGTERM/SIGINT
end the process at once with exit code 0.

Why ``os._exit`` and not an exception: nothing is bound, served or half-written yet (versions
are published and cached atomically), so there is nothing to drain; an exception raised inside
a C extension's import (ONNX Runtime's) turns into "ImportError: initialization failed" and a
traceback instead of a clean stop.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
Handlers = dict[int, Callable[[int, FrameType | None], Any] | int | None]


def _stop(signum: int, frame: FrameType | None) -> None:
    os.write(2, f"{signal.Signals(signum).name} during start-up: stopping\n".encode())
    os._exit(0)


def install_early_stop() -> Handlers:
    """Installs the early handlers (main thread only); returns the handlers they replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: Handlers = {}
    for sig in STOP_SIGNALS:
        previous[sig] = signal.signal(sig, _stop)
    return previous


@contextmanager
def early_stop() -> Iterator[None]:
    """The early handlers for the duration of a start-up; the previous ones afterwards (an
    in-process caller, e.g. a test, must not keep a handler that ends its process)."""
    previous = install_early_stop()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None and signal.getsignal(sig) is _stop:
                signal.signal(sig, handler)
