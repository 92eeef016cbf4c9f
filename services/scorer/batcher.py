"""Dynamic batching: concurrent requests for one model version become one ONNX Runtime run.

Why: a recommender request is small (one user, a few hundred candidates), so per-run overhead
dominates; merging requests that arrive within a couple of milliseconds amortises it. Each loaded
model version gets a ``ModelBatcher``: requests enqueue into a bounded queue (RESOURCE_EXHAUSTED
when full), one worker task per version takes an execution slot (shared by all models: the
``inference_threads`` pool), collects up to ``max_batch_size`` rows or until the oldest request
has waited ``max_queue_delay_ms`` (only while another run of the model is in flight: an idle
model dispatches at once), merges, runs once on a worker thread and splits the outputs.

Ragged requests: the padding rules come from the model signature, not from input names
(``batch_layout``):

* axis 0 of every input and output must carry the same symbolic name (the batch axis);
* a dynamic non-batch input axis whose symbolic name also appears on an output (``candidates``
  -> ``scores``: the *output-aligned* axis) is padded by repeating the request's first element
  (a valid index) and every output is sliced back to the request's own size along that axis;
* any other named dynamic axis (history lengths) is padded with zeros (index 0 / mask 0.0): the
  models of this family mask padding out, so it is neutral. Models for which it is not declare
  ``ragged: exact`` (manifest ``serving.batching`` or the scorer's ``--model-config``): then only
  requests with identical shapes share a run;
* unnamed dynamic axes must match exactly to share a run; a model whose axis 0 is not a common
  named batch axis is never batched (each request runs alone).

Batched and unbatched scores agree to float32 rounding, not bit for bit: a longer (zero-padded)
reduction axis and a larger GEMM change the order of float additions inside ONNX Runtime's
kernels (see tests/serving/test_batching.py for the bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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
from services.scorer.signature import TensorSignature

log = logging.getLogger("xdrec.scorer.batcher")

ALIGNED = "aligned"  # pad with the first element, slice outputs back
ZERO = "zero"  # pad with zeros
EXACT = "exact"  # sizes must match to share a run


@dataclass(frozen=True)
class BatchPolicy:
    """How one model is batched (scorer flags, overridable per model; docs/architecture.md)."""

    enabled: bool = True
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 256
    ragged: str = "pad"  # "pad" (zero / first-element padding) or "exact" (same shapes only)
    pad_batch_to_bucket: bool = False  # pad the batch axis up to the next warmed-up bucket

    @property
    def buckets(self) -> tuple[int, ...]:
        """Batch sizes warmed up before the model is ready: powers of two up to the maximum."""
        top = max(self.max_batch_size if self.enabled else 1, 1)
        sizes, size = [], 1
        while size < top:
            sizes.append(size)
            size *= 2
        sizes.append(top)
        return tuple(sizes)

    def bucket_for(self, rows: int) -> int:
        return next((b for b in self.buckets if b >= rows), rows)


@dataclass(frozen=True)
class BatchLayout:
    """What the signature allows: per input, the dynamic non-batch axes and how to pad them."""

    batchable: bool
    reason: str = ""
    inputs: Mapping[str, tuple[tuple[int, str | None, str], ...]] = field(default_factory=dict)
    outputs: Mapping[str, tuple[tuple[int, str], ...]] = field(default_factory=dict)


def batch_layout(
    inputs: Sequence[TensorSignature], outputs: Sequence[TensorSignature], ragged: str = "pad"
) -> BatchLayout:
    """Derives the padding rules from the symbolic axis names of the signature."""
    specs = [*inputs, *outputs]
    if any(len(s.shape) == 0 or s.shape[0] != -1 for s in specs):
        return BatchLayout(False, "not every tensor has a dynamic axis 0")
    names = {s.dim_names[0] for s in specs}
    if len(names) != 1 or None in names:
        return BatchLayout(False, "axis 0 does not carry one symbolic name in every tensor")
    output_names = {n for s in outputs for n in s.dim_names[1:] if n}
    input_names = {n for s in inputs for n in s.dim_names[1:] if n}
    layout_in = {}
    for spec in inputs:
        axes = []
        for axis in range(1, len(spec.shape)):
            if spec.shape[axis] >= 0:
                continue
            name = spec.dim_names[axis]
            if name is None or ragged == "exact":
                kind = EXACT
            elif name in output_names:
                kind = ALIGNED
            else:
                kind = ZERO
            axes.append((axis, name, kind))
        layout_in[spec.name] = tuple(axes)
    layout_out = {
        spec.name: tuple(
            (axis, spec.dim_names[axis])
            for axis in range(1, len(spec.shape))
            if spec.shape[axis] < 0 and spec.dim_names[axis] in input_names
        )
        for spec in outputs
    }
    return BatchLayout(True, "", layout_in, layout_out)


def request_key(layout: BatchLayout, inputs: Mapping[str, np.ndarray]) -> tuple | None:
    """Requests with equal keys may share a run; None = this request must run alone."""
    if not layout.batchable:
        return None
    key = []
    for name, axes in layout.inputs.items():
        array = inputs[name]
        if array.shape[0] == 0:
            return None
        for axis, _dim, kind in axes:
            if kind == EXACT:
                key.append((name, axis, array.shape[axis]))
            elif kind == ALIGNED and array.shape[axis] == 0:
                return None  # no first element to pad with
    return tuple(key)


def _dim_sizes(layout: BatchLayout, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    sizes = {}
    for name, axes in layout.inputs.items():
        for axis, dim, _kind in axes:
            if dim:
                sizes[dim] = inputs[name].shape[axis]
    return sizes


def _pad(
    array: np.ndarray, axes: tuple[tuple[int, str | None, str], ...], target: tuple
) -> np.ndarray:
    for axis, _dim, kind in axes:
        missing = target[axis] - array.shape[axis]
        if missing <= 0:
            continue
        if kind == ALIGNED:
            fill = np.repeat(np.take(array, [0], axis=axis), missing, axis=axis)
        else:
            shape = list(array.shape)
            shape[axis] = missing
            fill = np.zeros(shape, dtype=array.dtype)
        array = np.concatenate([array, fill], axis=axis)
    return array


@dataclass(frozen=True)
class Merged:
    """One merged run: its inputs and, per request, its rows and own axis sizes."""

    inputs: dict[str, np.ndarray]
    rows: list[tuple[int, int]]
    sizes: list[dict[str, int]]


def merge(
    layout: BatchLayout, requests: Sequence[Mapping[str, np.ndarray]], pad_rows_to: int = 0
) -> Merged:
    """Pads every request to the largest size per axis and concatenates along axis 0."""
    rows, start = [], 0
    for request in requests:
        count = next(iter(request.values())).shape[0]
        rows.append((start, start + count))
        start += count
    merged = {}
    for name, axes in layout.inputs.items():
        arrays = [r[name] for r in requests]
        target = tuple(max(a.shape[i] for a in arrays) for i in range(arrays[0].ndim))
        padded = [_pad(a, axes, target) for a in arrays]
        if pad_rows_to > start:  # fill the bucket with copies of the first row
            padded.append(np.repeat(padded[0][:1], pad_rows_to - start, axis=0))
        merged[name] = np.concatenate(padded, axis=0)
    return Merged(merged, rows, [_dim_sizes(layout, r) for r in requests])


def split(
    layout: BatchLayout, outputs: Mapping[str, np.ndarray], merged: Merged
) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every output, sliced back to its own output-aligned sizes."""
    results = []
    for (start, stop), sizes in zip(merged.rows, merged.sizes, strict=True):
        mine = {}
        for name, array in outputs.items():
            index: list[slice] = [slice(start, stop)] + [slice(None)] * (array.ndim - 1)
            for axis, dim in layout.outputs.get(name, ()):
                if dim in sizes:
                    index[axis] = slice(0, sizes[dim])
            mine[name] = array[tuple(index)]
        results.append(mine)
    return results


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
                error = exc if isinstance(exc, ServiceError) else Internal(str(exc))
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
        except Exception as exc:  # ORT run-time failure (e.g. an index out of range)
            return Internal(f"{self.label} failed to run: {_first_line(exc)}")

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
        self._batchers: dict[int, tuple[object, ModelBatcher]] = {}

    def batcher(self, model) -> ModelBatcher:
        entry = self._batchers.get(id(model))
        if entry is not None and entry[0] is model:
            return entry[1]
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
        batcher = ModelBatcher(
            model.name, model.version_id, model.run, layout, policy, self._executor, self._slots
        )
        self._batchers[id(model)] = (model, batcher)
        return batcher

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
        entry = self._batchers.get(id(model))
        if entry is not None and entry[0] is model:
            await entry[1].drain()
            self._batchers.pop(id(model), None)

    async def close(self) -> None:
        for _model, batcher in list(self._batchers.values()):
            batcher.stop()
        self._batchers.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
