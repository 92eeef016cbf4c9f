"""The scorer's ``InferenceBackend``: one ``ModelBatcher`` per loaded model version.

Why here and not in the queue module: the batcher knows one model; this owns what all models
share (the ONNX Runtime worker threads and the execution slots) and the lifecycle of each
version's batcher (created on its first request, drained when the version is retired).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.scorer.batching.policy import BatchPolicy
from services.scorer.batching.queue import ModelBatcher
from services.scorer.batching.ragged import batch_layout
from services.scorer.batching.registry import BatcherRegistry

log = logging.getLogger("xdrec.scorer.batcher")


class BatchingBackend:
    """The scorer's ``InferenceBackend``: one ``ModelBatcher`` per loaded model version.

    ``policy_for(model)`` gives each version its ``BatchPolicy`` (flags, ``--model-config``,
    manifest); ``threads`` execution slots are shared by every model.
    """

    def __init__(self, threads: int, policy_for: Callable[[object], BatchPolicy]) -> None:
        self._threads = max(threads, 1)
        self._executor = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="ort")
        self._policy_for = policy_for
        self._slots: asyncio.Semaphore | None = None
        self._batchers: BatcherRegistry[ModelBatcher] = BatcherRegistry()

    def batcher(self, model) -> ModelBatcher:
        return self._batchers.get_or_create(model, lambda: self._create(model))

    def _create(self, model) -> ModelBatcher:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._threads)
        policy = self._policy_for(model)
        layout = batch_layout(model.inputs, model.outputs, policy.ragged)
        if policy.enabled and not layout.batchable:
            log.info(
                "requests run one by one: %s",
                layout.reason,
                extra={"model": model.name, "version": model.version_id},
            )
        return ModelBatcher(
            model.name, model.version_id, model.run, layout, policy, self._executor, self._slots
        )

    async def infer(
        self,
        model,
        inputs: Mapping[str, np.ndarray],
        outputs: list[str],
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        return await self.batcher(model).submit(inputs, outputs, deadline)

    async def retire(self, model) -> None:
        """Drains the version's queue (in-flight requests finish), then forgets it."""
        batcher = self._batchers.get(model)
        if batcher is not None:
            await batcher.drain()
            self._batchers.pop(model)

    async def close(self) -> None:
        for batcher in self._batchers.values():
            batcher.stop()
        self._batchers.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
