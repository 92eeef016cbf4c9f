"""Runs inference off the event loop, with a bounded queue.

Why a separate backend: the gRPC servicers only validate and translate; *how* a model runs lives
here. ``ThreadPoolBackend`` runs each request on a worker thread (ONNX Runtime releases the GIL,
so the asyncio loop keeps accepting and validating requests meanwhile). A later dynamic-batching
backend can implement the same ``InferenceBackend`` protocol (queue requests, concatenate along
the batch axis, split the results) without touching the servicers.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from services.common.errors import DeadlineExceeded, Internal, ResourceExhausted
from services.common.metrics import INFERENCE_LATENCY, INFERENCE_QUEUE
from services.scorer.models import LoadedModel


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


class ThreadPoolBackend:
    """One ONNX Runtime run per request on a fixed pool of worker threads."""

    def __init__(self, threads: int, max_queue: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="ort")
        self._max_queue = max_queue
        self._pending = 0

    async def infer(
        self,
        model: LoadedModel,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str],
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        if self._pending >= self._max_queue:
            raise ResourceExhausted(
                f"inference queue full ({self._pending} requests pending, limit {self._max_queue})"
            )
        self._pending += 1
        INFERENCE_QUEUE.set(self._pending)
        try:
            loop = asyncio.get_running_loop()
            context = contextvars.copy_context()
            return await loop.run_in_executor(
                self._executor, context.run, self._run, model, inputs, outputs, deadline
            )
        finally:
            self._pending -= 1
            INFERENCE_QUEUE.set(self._pending)

    @staticmethod
    def _run(
        model: LoadedModel,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str],
        deadline: float | None,
    ) -> dict[str, np.ndarray]:
        # A request that waited in the queue past its deadline is not worth running.
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(f"deadline passed before {model.label} ran")
        started = time.perf_counter()
        try:
            results = model.run(inputs, outputs)
        except Exception as exc:  # ORT run-time failure (e.g. an index out of range)
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
            raise Internal(f"{model.label} failed to run: {first_line}") from exc
        INFERENCE_LATENCY.labels(model.name, model.version_id).observe(
            time.perf_counter() - started
        )
        return results

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
