"""The interface between the gRPC servicers and how a model actually runs.

Why a separate backend: the servicers (xdrec Predict and the v2 ModelInfer) only validate and
translate; running - queueing, dynamic batching, worker threads, deadlines - lives behind this
protocol (``services.scorer.batching.backend.BatchingBackend``), so neither servicer changes
when the execution strategy does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from services.scorer.loaded_model import LoadedModel


class InferenceBackend(Protocol):
    """Executes a validated request on a loaded model."""

    async def infer(
        self,
        model: LoadedModel,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str],
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Returns the requested outputs; ``deadline`` is a ``time.monotonic()`` instant."""

    async def close(self) -> None:
        """Releases worker threads."""
