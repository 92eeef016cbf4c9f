"""The queue and worker of one loaded model version (asyncio), and how a batch is dispatched.

Why a worker per version that waits only while the model is busy: an idle model dispatches at
once, so a lone request never pays ``max_queue_delay_ms``; under load requests pile up behind the
running batch anyway. Execution slots (the ``inference_threads`` pool) are shared by every model,
so one busy model cannot starve the machine of threads it does not need. A merged run that fails
is re-run request by request on the same worker thread, so one bad request (an index out of
range) fails alone. A request whose deadline passes while queued is never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.common.errors import (
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.common.metrics import (
    BATCH_SIZE,
    INFERENCE_COMPUTE,
    INFERENCE_LATENCY,
    INFERENCE_QUEUE,
    QUEUE_WAIT,
)
from services.scorer.batching.policy import BatchPolicy
from services.scorer.batching.ragged import (
    BatchLayout,
    merge,
    merged_nbytes,
    request_key,
    split,
)

log = logging.getLogger("xdrec.scorer.batcher")

RunFn = Callable[[Mapping[str, np.ndarray], list[str]], dict[str, np.ndarray]]


@dataclass(eq=False)
class _Pending:
    inputs: Mapping[str, np.ndarray]
    outputs: list[str]
    deadline: float | None
    key: tuple | None
    rows: int
    enqueued: float
    future: asyncio.Future
    context: contextvars.Context


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ModelBatcher:
    """The queue and worker of one loaded model version."""

    def __init__(
        self,
        name: str,
        version: str,
        run: RunFn,
        layout: BatchLayout,
        policy: BatchPolicy,
        executor: ThreadPoolExecutor,
        slots: asyncio.Semaphore,
    ) -> None:
        self.name, self.version, self.label = name, version, f"model '{name}' version {version}"
        self._run = run
        self.layout = layout
        self.policy = policy
        self._executor = executor
        self._slots = slots
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending = 0
        self._closed = False
        self._worker: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._max_rows = max(policy.max_batch_size, 1) if policy.enabled else 1
        self._delay = max(policy.max_queue_delay_ms, 0.0) / 1000.0 if policy.enabled else 0.0

    @property
    def pending(self) -> int:
        """Requests waiting or running."""
        return self._pending

    async def submit(
        self, inputs: Mapping[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        if self._closed:
            raise Unavailable(f"{self.label} is being unloaded")
        if self._pending >= self.policy.max_queue_size:
            raise ResourceExhausted(
                f"{self.label}: inference queue full ({self._pending} requests waiting or "
                f"running, limit {self.policy.max_queue_size})"
            )
        loop = asyncio.get_running_loop()
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        key = request_key(self.layout, inputs) if self._max_rows > 1 else None
        item = _Pending(
            inputs,
            outputs,
            deadline,
            key,
            rows,
            time.perf_counter(),
            loop.create_future(),
            contextvars.copy_context(),
        )
        self._pending += 1
        self._idle.clear()
        INFERENCE_QUEUE.inc()
        self._queue.append(item)
        self._wakeup.set()
        if self._worker is None:
            self._worker = loop.create_task(self._work(), name=f"batcher {self.label}")
        try:
            return await item.future
        finally:
            self._pending -= 1
            INFERENCE_QUEUE.dec()
            if self._pending == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Refuses new requests, waits for queued and running ones, stops the worker."""
        self._closed = True
        await self._idle.wait()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    def stop(self) -> None:
        """Stops the worker at once (server shutdown: the gRPC grace period has passed)."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None

    # -- worker -------------------------------------------------------------------------------

    def _alive(self, item: _Pending, now: float) -> bool:
        if item.future.done():  # the caller went away
            return False
        if item.deadline is not None and time.monotonic() >= item.deadline:
            item.future.set_exception(
                DeadlineExceeded(f"deadline passed while queued for {self.label}")
            )
            return False
        return True

    def _take(self, batch: list[_Pending], rows: int) -> int:
        """Moves queued requests compatible with ``batch`` into it (up to the row limit)."""
        now = time.perf_counter()
        keep: deque[_Pending] = deque()
        while self._queue:
            item = self._queue.popleft()
            if not self._alive(item, now):
                continue
            if not batch:
                batch.append(item)
                rows = item.rows
                if item.key is None:
                    break
                continue
            first = batch[0]
            if (
                first.key is not None
                and item.key == first.key
                and rows + item.rows <= self._max_rows
                and self._fits(batch, item, rows + item.rows)
            ):
                batch.append(item)
                rows += item.rows
            else:
                keep.append(item)
                if rows >= self._max_rows:
                    break
        keep.extend(self._queue)
        self._queue = keep
        return rows

    def _fits(self, batch: list[_Pending], item: _Pending, rows: int) -> bool:
        """Whether ``item`` can join ``batch`` within the byte budget of one merged run (a lone
        request always runs: the per-request limit bounds it)."""
        budget = self.policy.max_batch_bytes
        if budget <= 0:
            return True
        pad_to = self.policy.bucket_for(rows) if self.policy.pad_batch_to_bucket else 0
        requests = [b.inputs for b in batch] + [item.inputs]
        return merged_nbytes(self.layout, requests, pad_to) <= budget

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._slots.acquire()
            try:
                batch: list[_Pending] = []
                rows = self._take(batch, 0)
                # Wait for a fuller batch only while another run of this model is in flight
                # (and at most the queue delay): an idle model dispatches at once, so a lone
                # request never pays the delay, and under load requests pile up behind the
                # running batch anyway.
                if batch and batch[0].key is not None and self._running:
                    close_at = batch[0].enqueued + self._delay
                    while rows < self._max_rows and self._running:
                        remaining = close_at - time.perf_counter()
                        if remaining <= 0:
                            break
                        self._wakeup.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wakeup.wait(), remaining)
                        rows = self._take(batch, rows)
                    batch = [b for b in batch if not b.future.done()]
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            task = loop.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._run_finished)

    def _run_finished(self, task: asyncio.Task) -> None:
        # A finished run ends any wait for a fuller batch: the model is free, so go now.
        self._running.discard(task)
        self._wakeup.set()

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            started = time.perf_counter()
            for item in batch:
                QUEUE_WAIT.labels(self.name, self.version).observe(started - item.enqueued)
            outputs = list(dict.fromkeys(name for item in batch for name in item.outputs))
            try:
                results = await loop.run_in_executor(
                    self._executor, batch[0].context.run, self._run_batch, batch, outputs
                )
            except Exception as exc:
                if isinstance(exc, ServiceError):
                    error = exc
                else:
                    log.error("%s batch failed: %s", self.label, _first_line(exc))
                    error = Internal(f"{self.label} failed to run; see the scorer log")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                return
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result({name: result[name] for name in item.outputs})
        finally:
            self._slots.release()

    def _timed_run(self, inputs: Mapping[str, np.ndarray], outputs: list[str], rows: int):
        started = time.perf_counter()
        results = self._run(inputs, outputs)
        elapsed = time.perf_counter() - started
        INFERENCE_COMPUTE.labels(self.name, self.version).observe(elapsed)
        INFERENCE_LATENCY.labels(self.name, self.version).observe(elapsed)
        BATCH_SIZE.labels(self.name, self.version).observe(rows)
        return results

    def _run_one(self, item: _Pending, outputs: list[str]) -> dict[str, np.ndarray] | ServiceError:
        if item.deadline is not None and time.monotonic() >= item.deadline:
            return DeadlineExceeded(f"deadline passed before {self.label} ran")
        try:
            return self._timed_run(item.inputs, outputs, item.rows)
        except Exception as exc:  # ORT run-time failure: its text stays in the log
            log.error("%s failed to run: %s", self.label, _first_line(exc))
            return Internal(f"{self.label} failed to run; see the scorer log")

    def _run_batch(
        self, batch: list[_Pending], outputs: list[str]
    ) -> list[dict[str, np.ndarray] | ServiceError]:
        """On a worker thread: merge, run once, split. A failed merged run is retried request
        by request, so one bad request (an index out of range) fails alone."""
        if len(batch) == 1:
            return [self._run_one(batch[0], outputs)]
        rows = sum(item.rows for item in batch)
        pad_to = self.policy.bucket_for(rows) if self.policy.pad_batch_to_bucket else 0
        merged = merge(self.layout, [item.inputs for item in batch], pad_to)
        try:
            results = self._timed_run(merged.inputs, outputs, max(rows, pad_to))
        except Exception:
            return [self._run_one(item, outputs) for item in batch]
        return list(split(self.layout, results, merged))
