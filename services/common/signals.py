"""Stop signals honoured from the first instant of a service process.

Why: a container's PID 1 ignores SIGTERM until a handler exists. The asyncio handlers of the
bootstrap (``services.common.server.serve``) only exist once the imports (ONNX Runtime, grpc)
and the app construction are done, which takes a good fraction of a second; a SIGTERM in that
window was ignored and the pod was SIGKILLed after its grace period. ``install_early_stop``
runs first thing in every service entry point: until the bootstrap takes over, SIGTERM/SIGINT
end the process at once with exit code 0 (nothing is bound or in flight yet).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppedDuringStartup(SystemExit):
    """Raised by the early handler: unwinds whatever start-up step was running, exit code 0."""


def _stop(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write(f"{signal.Signals(signum).name} during start-up: stopping\n")
    raise StoppedDuringStartup(0)


def install_early_stop() -> bool:
    """Installs the early handlers (main thread only); returns whether it did."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    return True
