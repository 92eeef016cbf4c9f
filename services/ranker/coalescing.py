"""Coalescing: concurrent Recommends share one EncodeBatch and one Predict.

Why: in Python gRPC the cost of a Recommend is mostly its two client hops (~1 ms of ranker CPU
each), not the model. Under load, N concurrent Recommends for the same model version become one
``EncodeBatch`` at the encoder, which returns the inputs of those to score already stacked
(``services.encoder.stacking``: padding that changes no score), and one ``Predict`` of N rows at
the scorer, whose rows are split back. So a batch costs two RPCs instead of 2N.

When to dispatch (``CoalesceConfig``): coalescing must cost nothing at moderate load, where
CPU is not short and a wait for company is pure latency (with the earlier rule - wait whenever
any encoder call is in flight - about one request in five waited ~2 ms at moderate load for
company that did not come). So a request goes on the next turn of the event loop, with only the
requests already waiting to run (it *leads*: alone, it makes the plain Encode itself, exactly as
without coalescing, with no future, timer or task of the coalescer), unless the ranker is busy:

* ``busy_batches`` encoder calls are in flight (the encoder stage is backed up), or
* one is, and the ranker holds ``busy_recommends`` Recommends (by Little's law concurrency
  climbs steeply only near saturation, where batching is what saves CPU).

Only then does a newcomer wait for company: until ``max_batch`` have gathered, an in-flight call
returns and the ranker is no longer busy, or ``max_wait_ms`` has passed since the oldest waiting
request arrived, whichever comes first; so no request waits longer than ``max_wait_ms`` from its
own arrival, and several batches may be in flight at once.

What each request keeps:

* its own deadline: it stops waiting at its own deadline (DEADLINE_EXCEEDED for it alone; the
  batch goes on for the others), and the batch's RPC gets the latest deadline of its members;
* its own error: the encoder answers an error per request (``EncodeResult.error``); a merged
  Predict that fails with a client or internal error is re-run row by row, so one bad row fails
  alone; an UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED reaches every member, and each one
  takes its own popularity fallback (``services.ranker.fallback``) as it would alone;
* its own model: only requests naming the same model and version (or none) share a batch, and
  the encoder resolves "newest" once per batch.

A batched call carries the request id of the batch's first member.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from prometheus_client import Histogram
from xdrec.common.v1 import tensor_pb2
from xdrec.encoder.v1 import encoder_pb2
from xdrec.scorer.v1 import scorer_pb2

from services.common.errors import DeadlineExceeded, Internal, ServiceError
from services.common.tensors import to_proto
from services.ranker.downstream import (
    STATUS_BY_VALUE,
    EncoderClient,
    ScorerClient,
    decode_downstream,
    relay_status,
    score_output,
)

BATCH_SIZE = Histogram(
    "xdrec_ranker_coalesced_batch_size",
    "Recommends per downstream batch (1 = the plain Encode/Predict path)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

WAITED = Histogram(
    "xdrec_ranker_coalesce_wait_seconds",
    "How long a Recommend waited in the coalescer for company before its encoder call (one "
    "that found the encoder stage not busy goes at once and is not counted)",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
)

ISOLATE_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNKNOWN,
    }
)
"""Merged-Predict failures that may be one row's fault: re-run row by row."""


@dataclass(frozen=True)
class CoalesceConfig:
    """How concurrent Recommends are coalesced (ranker flags ``--coalesce*``)."""

    enabled: bool = True
    """Off: every Recommend makes its own Encode and Predict."""
    max_batch: int = 32
    """Most Recommends in one batch (the scorer's default ``--max-batch-size`` is 32 rows)."""
    max_wait_ms: float = 2.0
    """Longest a request waits for company (only while the encoder stage is busy)."""
    busy_batches: int = 2
    """Encoder calls (plain or batched) in flight from which newcomers wait for company; below
    it they go at once. 1: any call in flight makes newcomers wait (a single-call pipeline)."""
    busy_recommends: int = 4
    """Recommends in flight in the ranker from which one encoder call in flight is enough to make
    newcomers wait (the pod is saturated: batch all it can); 0: off."""


class SharedPredict:
    """The one Predict that scores the stacked inputs of an EncodeBatch, started by the first
    member that asks and awaited by all; a failure that may be one row's is retried per row."""

    def __init__(
        self,
        scorer: ScorerClient,
        model: tensor_pb2.ModelRef,
        stacked: Sequence[tensor_pb2.Tensor],
        output: str,
        deadline: float,
    ) -> None:
        self.scorer = scorer
        self.model = model
        self.stacked = stacked
        self.output = output
        self.deadline = deadline
        self.rows = len(stacked[0].shape) and int(stacked[0].shape[0])
        self._task: asyncio.Task[np.ndarray] | None = None

    async def scores(self, row: int, count: int, deadline: float) -> np.ndarray:
        """The first ``count`` scores of ``row``, waiting no longer than ``deadline``."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._predict(self.stacked, self.deadline)
            )
            # Every member may have stopped waiting (own deadlines) before it ends.
            self._task.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout_at(deadline):
                matrix = await asyncio.shield(self._task)
        except TimeoutError:
            raise DeadlineExceeded("deadline exceeded waiting for the scorer (Predict)") from None
        except ServiceError as exc:
            if exc.code not in ISOLATE_CODES or self.rows <= 1:
                raise
            matrix = await self._predict(self._row_inputs(row), deadline)
            row = 0
        if matrix.shape[1] < count:
            raise Internal(
                f"scorer returned {matrix.shape[1]} scores for {count} candidates "
                f"(shape {list(matrix.shape)})"
            )
        return matrix[row, :count]

    async def _predict(self, inputs: Sequence[tensor_pb2.Tensor], deadline: float) -> np.ndarray:
        response = await self.scorer.predict(
            scorer_pb2.PredictRequest(model=self.model, inputs=inputs, output_names=[self.output]),
            deadline,
        )
        scores = score_output(response, self.output)
        rows = int(inputs[0].shape[0])
        if scores.ndim == 0 or scores.shape[0] != rows:
            raise Internal(f"scorer returned scores of shape {list(scores.shape)} for {rows} rows")
        return scores.reshape(rows, -1)

    def _row_inputs(self, row: int) -> list[tensor_pb2.Tensor]:
        """Row ``row`` of every stacked input, still padded (padding changes no score)."""
        return [
            to_proto(t.name, decode_downstream(t, "encoder stacked input")[row : row + 1])
            for t in self.stacked
        ]


def _expire(future: asyncio.Future[EncodeOutcome]) -> None:
    """The request's deadline passed before its batch answered: it alone gets the error."""
    if not future.done():
        future.set_exception(DeadlineExceeded("deadline exceeded waiting for the encoder (Encode)"))


def _retrieve(task: asyncio.Task[np.ndarray]) -> None:
    """Marks a shared task's exception as seen (each member got it, or stopped waiting)."""
    if not task.cancelled():
        task.exception()


@dataclass
class EncodeOutcome:
    """One Recommend's Encode answer and, when its inputs were stacked, where they are."""

    response: encoder_pb2.EncodeResponse
    scoring: SharedPredict | None = None
    row: int = 0


@dataclass(eq=False)
class _Pending:
    request: encoder_pb2.EncodeRequest
    deadline: float
    future: asyncio.Future[EncodeOutcome] = field(repr=False)
    arrived: float = 0.0
    """``time.monotonic()`` when it started waiting for company (0: it did not wait)."""


@dataclass(eq=False)
class _Queue:
    """Requests of one (model, version) waiting for their batch. ``led``: a leading request
    collects them on its next turn (no timer); else ``timer`` dispatches them."""

    pending: list[_Pending] = field(default_factory=list)
    led: bool = False
    timer: asyncio.TimerHandle | asyncio.Handle | None = None


class Coalescer:
    """Queues Encode requests per model and dispatches them in batches (module docstring)."""

    def __init__(
        self,
        encoder: EncoderClient,
        scorer: ScorerClient,
        config: CoalesceConfig,
        score_output_name: str,
        recommends_in_flight: Callable[[], int] = lambda: 0,
    ) -> None:
        self.encoder = encoder
        self.scorer = scorer
        self.config = config
        self.output = score_output_name
        self.max_batch = max(config.max_batch, 1)
        self.max_wait_s = max(config.max_wait_ms, 0.0) / 1000.0
        self.busy_batches = max(config.busy_batches, 1)
        self.busy_recommends = max(config.busy_recommends, 0)
        self.recommends_in_flight = recommends_in_flight
        self.in_flight = 0
        """Encoder calls (Encode or EncodeBatch) made and not yet answered."""
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def encode(self, request: encoder_pb2.EncodeRequest, deadline: float) -> EncodeOutcome:
        """The Encode answer for ``request`` (coalesced with others when busy)."""
        if deadline - time.monotonic() <= 0:
            raise DeadlineExceeded("deadline exceeded before calling the encoder (Encode)")
        key = (request.model.name, request.model.version)
        queue = self._queues.get(key)
        if queue is None and not self.busy():
            return await self._lead(key, request, deadline)
        loop = asyncio.get_running_loop()
        # Joining a leader costs no wait (it goes on the next turn): not counted as waiting.
        arrived = time.monotonic() if queue is None or not queue.led else 0.0
        pending = _Pending(request, deadline, loop.create_future(), arrived)
        if queue is None:
            queue = self._queues[key] = _Queue()
            queue.timer = loop.call_later(self.max_wait_s, self._flush, key)
        queue.pending.append(pending)
        if len(queue.pending) >= self.max_batch and not queue.led:
            self._flush(key)
        return await self._outcome(pending)

    def busy(self) -> bool:
        """Whether newcomers wait for company: ``busy_batches`` encoder calls are out, or one
        is and the ranker holds ``busy_recommends`` Recommends (by Little's law, concurrency
        climbs steeply only near saturation)."""
        return self.in_flight >= self.busy_batches or (
            self.in_flight > 0
            and self.busy_recommends > 0
            and self.recommends_in_flight() >= self.busy_recommends
        )

    async def _lead(
        self, key: tuple[str, str], request: encoder_pb2.EncodeRequest, deadline: float
    ) -> EncodeOutcome:
        """Yields one turn of the event loop, so that the requests already waiting to run can
        join; alone, makes the plain Encode itself; with company, leads them as one batch."""
        queue = self._queues[key] = _Queue(led=True)
        try:
            await asyncio.sleep(0)
        except BaseException:
            # Cancelled while yielding (its caller left): the followers go without it.
            if self._queues.get(key) is queue:
                self._flush(key)
            raise
        if self._queues.get(key) is queue:
            del self._queues[key]
        followers = [p for p in queue.pending if not p.future.done()]
        if not followers:
            self.in_flight += 1
            BATCH_SIZE.observe(1)
            try:
                response = await self.encoder.encode(request, deadline)
            finally:
                self._returned()
            return EncodeOutcome(response)
        pending = _Pending(request, deadline, asyncio.get_running_loop().create_future())
        self._dispatch(key, [pending, *followers])
        return await self._outcome(pending)

    async def _outcome(self, pending: _Pending) -> EncodeOutcome:
        """Waits for ``pending``'s answer, no longer than its own deadline."""
        # A timer on the request's own future, not asyncio.timeout_at: that costs a Timeout
        # object and a task cancellation per request, a visible share in the profile.
        loop = asyncio.get_running_loop()
        expiry = loop.call_at(pending.deadline, _expire, pending.future)
        try:
            return await pending.future
        finally:
            expiry.cancel()

    def _flush(self, key: tuple[str, str]) -> None:
        """Dispatches the live requests waiting under ``key`` (timer, full batch, or a call
        returned while busy)."""
        queue = self._queues.pop(key, None)
        if queue is None:
            return
        if queue.timer is not None:
            queue.timer.cancel()
        self._dispatch(key, [p for p in queue.pending if not p.future.done()])

    def _dispatch(self, key: tuple[str, str], live: list[_Pending]) -> None:
        """Starts one batch call per ``max_batch`` requests (expired or cancelled: gone)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for p in live:
            if p.arrived:
                WAITED.observe(now - p.arrived)
        for start in range(0, len(live), self.max_batch):
            batch = live[start : start + self.max_batch]
            self.in_flight += 1
            task = loop.create_task(self._run(key, batch))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._returned()

    def _returned(self) -> None:
        """An encoder call is back: once the ranker is no longer busy, what waits goes now."""
        self.in_flight -= 1
        if not self.busy():
            for key in [k for k, q in self._queues.items() if not q.led]:
                self._flush(key)

    async def _run(self, key: tuple[str, str], batch: list[_Pending]) -> None:
        BATCH_SIZE.observe(len(batch))
        if len(batch) == 1:
            await self._run_one(batch[0])
            return
        try:
            response = await self.encoder.encode_batch(
                encoder_pb2.EncodeBatchRequest(
                    model=tensor_pb2.ModelRef(name=key[0], version=key[1]),
                    requests=[p.request for p in batch],
                ),
                max(p.deadline for p in batch),
            )
            outcomes = self._outcomes(response, batch)
        except Exception as exc:  # the batch failed as a whole: every member sees it
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for p, outcome in zip(batch, outcomes, strict=True):
            if p.future.done():
                continue
            if isinstance(outcome, ServiceError):
                p.future.set_exception(outcome)
            else:
                p.future.set_result(outcome)

    async def _run_one(self, pending: _Pending) -> None:
        try:
            response = await self.encoder.encode(pending.request, pending.deadline)
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(EncodeOutcome(response))

    def _outcomes(
        self, response: encoder_pb2.EncodeBatchResponse, batch: list[_Pending]
    ) -> list[EncodeOutcome | ServiceError]:
        if len(response.results) != len(batch):
            raise Internal(
                f"encoder answered {len(response.results)} results for {len(batch)} requests"
            )
        outcomes: list[EncodeOutcome | ServiceError] = []
        for result in response.results:
            if result.HasField("error"):
                code = STATUS_BY_VALUE.get(result.error.code, grpc.StatusCode.UNKNOWN)
                outcomes.append(
                    relay_status(
                        "encoder", self.encoder.address, "Encode", code, result.error.message
                    )
                )
            else:
                outcomes.append(EncodeOutcome(result.response))
        if response.stacked_results:
            rows = list(response.stacked_results)
            if len(response.stacked) == 0 or any(not 0 <= i < len(batch) for i in rows):
                raise Internal("encoder answered a malformed stacked batch")
            shared = SharedPredict(
                self.scorer,
                outcomes[rows[0]].response.model,  # type: ignore[union-attr]
                response.stacked,
                self.output,
                max(batch[i].deadline for i in rows),
            )
            for row, index in enumerate(rows):
                outcome = outcomes[index]
                if isinstance(outcome, EncodeOutcome):
                    outcome.scoring, outcome.row = shared, row
        return outcomes
