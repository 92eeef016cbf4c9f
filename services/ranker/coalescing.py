"""Coalescing: concurrent Recommends share one EncodeBatch and one Predict.

Why: in Python gRPC the cost of a Recommend is mostly its two client hops (~1 ms of ranker CPU
each), not the model. Under load, N concurrent Recommends for the same model version become one
``EncodeBatch`` at the encoder, which returns the inputs of those to score already stacked
(``services.encoder.stacking``: padding that changes no score), and one ``Predict`` of N rows at
the scorer, whose rows are split back. So a batch costs two RPCs instead of 2N.

When to dispatch (``CoalesceConfig``): a request that finds no batch in flight is dispatched on
the next turn of the event loop (only requests already waiting to run join it: no added
latency when idle); while a batch is in flight, requests wait at most ``max_wait_ms`` for company
(or until ``max_batch`` have gathered, or the in-flight batch finishes). A batch of one takes the
plain Encode/Predict path, exactly as without coalescing.

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
from collections.abc import Sequence
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
    """Longest a request waits for company while another batch is in flight."""


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


class Coalescer:
    """Queues Encode requests per model and dispatches them in batches (module docstring)."""

    def __init__(
        self,
        encoder: EncoderClient,
        scorer: ScorerClient,
        config: CoalesceConfig,
        score_output_name: str,
    ) -> None:
        self.encoder = encoder
        self.scorer = scorer
        self.config = config
        self.output = score_output_name
        self.max_batch = max(config.max_batch, 1)
        self.max_wait_s = max(config.max_wait_ms, 0.0) / 1000.0
        self.in_flight = 0
        self._queues: dict[tuple[str, str], list[_Pending]] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle | asyncio.Handle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def encode(self, request: encoder_pb2.EncodeRequest, deadline: float) -> EncodeOutcome:
        """The Encode answer for ``request`` (coalesced with others when busy)."""
        if deadline - time.monotonic() <= 0:
            raise DeadlineExceeded("deadline exceeded before calling the encoder (Encode)")
        loop = asyncio.get_running_loop()
        key = (request.model.name, request.model.version)
        pending = _Pending(request, deadline, loop.create_future())
        queue = self._queues.setdefault(key, [])
        queue.append(pending)
        if len(queue) >= self.max_batch:
            self._flush(key)
        elif key not in self._timers:
            if self.in_flight == 0:
                self._timers[key] = loop.call_soon(self._flush, key)
            else:
                self._timers[key] = loop.call_later(self.max_wait_s, self._flush, key)
        # A timer on the request's own future, not asyncio.timeout_at: that costs a Timeout
        # object and a task cancellation per request, a visible share in the profile.
        expiry = loop.call_at(deadline, _expire, pending.future)
        try:
            return await pending.future
        finally:
            expiry.cancel()

    def _flush(self, key: tuple[str, str]) -> None:
        """Dispatches up to ``max_batch`` live requests of ``key``; the rest wait their turn."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        queue = self._queues.get(key, [])
        live = [p for p in queue if not p.future.done()]  # expired or cancelled: gone
        batch, rest = live[: self.max_batch], live[self.max_batch :]
        if rest:
            self._queues[key] = rest
            loop = asyncio.get_running_loop()
            self._timers[key] = loop.call_soon(self._flush, key)
        else:
            self._queues.pop(key, None)
        if not batch:
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(key, batch))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        """A batch is back: what waits for company goes now when nothing else is in flight."""
        self._tasks.discard(task)
        self.in_flight -= 1
        if self.in_flight == 0:
            for key in list(self._timers):
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
