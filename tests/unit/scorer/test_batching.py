"""Dynamic batching: merged runs give the scores of unbatched runs; the queue is bounded.

Exactness: batched scores equal the unbatched ones within 1e-6 of the row's score scale
(``|batched - alone| <= 1e-6 * max(1, max |alone|)``), not bit for bit. Padding adds exact zeros
(masked positions, repeated candidates that are sliced off), but a longer reduction axis and a
taller matrix product let ONNX Runtime's vectorised kernels add the same numbers in a different
order, which changes the last float32 bits (1-2 ulp: 1.9e-6 on ML-100K scores up to 13).
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from services.common.errors import ResourceExhausted
from services.common.model_repository import ModelRepository
from services.scorer.batching.backend import BatchingBackend
from services.scorer.batching.policy import BatchPolicy
from services.scorer.batching.queue import ModelBatcher
from services.scorer.batching.ragged import ALIGNED, ZERO, batch_layout, merge, split
from services.scorer.config import ScorerConfig
from services.scorer.warmup import load_version
from tests.fixtures.model_repo import BuiltRepo, reference_scores

CONFIG = ScorerConfig(providers="cpu", intra_op_threads=1, warmup_runs=1, max_batch_size=8)
TOLERANCE = 1e-6


def assert_same_scores(batched: np.ndarray, alone: np.ndarray) -> float:
    """The documented contract; returns the largest absolute difference."""
    assert batched.shape == alone.shape
    scale = max(1.0, float(np.abs(alone).max(initial=0.0)))
    worst = float(np.abs(batched.astype(np.float64) - alone).max(initial=0.0))
    assert worst <= TOLERANCE * scale, (worst, scale)
    return worst


def ragged_request(rng: np.random.Generator, ls: int, lt: int, c: int) -> dict[str, np.ndarray]:
    """One user: histories of length ls / lt (some padding inside), c candidates."""
    src = rng.integers(1, 13, size=(1, ls))
    src_mask = np.ones((1, ls), np.float32)
    src_mask[0, : ls // 3] = 0.0  # left padding, as the encoder never sends but clients may
    src[0, : ls // 3] = 0
    tgt = rng.integers(1, 21, size=(1, lt))
    tgt_mask = np.ones((1, lt), np.float32)
    if lt == 1 and rng.random() < 0.5:  # the empty-history encoding
        tgt[:] = 0
        tgt_mask[:] = 0.0
    return {
        "src_items": src.astype(np.int64),
        "src_mask": src_mask,
        "tgt_items": tgt.astype(np.int64),
        "tgt_mask": tgt_mask,
        "candidates": rng.integers(1, 21, size=(1, c)).astype(np.int64),
    }


@pytest.fixture(scope="module")
def model(repo: BuiltRepo):
    return load_version(ModelRepository(repo.root).open(repo.name), CONFIG)


def test_layout_comes_from_the_signature(model) -> None:
    layout = batch_layout(model.inputs, model.outputs)
    assert layout.batchable
    assert layout.inputs["candidates"] == ((1, "C", ALIGNED),)  # shares 'C' with scores
    assert layout.inputs["src_items"] == ((1, "Ls", ZERO),)
    assert layout.outputs["scores"] == ((1, "C"),)
    exact = batch_layout(model.inputs, model.outputs, ragged="exact")
    assert all(kind == "exact" for axes in exact.inputs.values() for _, _, kind in axes)


def test_merge_and_split_give_each_request_its_own_scores(model, repo: BuiltRepo) -> None:
    rng = np.random.default_rng(0)
    shapes = [(1, 1, 1), (5, 3, 20), (2, 7, 4), (9, 1, 13), (3, 2, 1), (1, 4, 7)]
    requests = [ragged_request(rng, *shape) for shape in shapes]
    layout = batch_layout(model.inputs, model.outputs)
    merged = merge(layout, requests, pad_rows_to=8)
    assert merged.inputs["candidates"].shape == (8, 20)  # padded rows and candidates
    outputs = model.run(merged.inputs, ["scores"])
    worst = 0.0
    for request, result in zip(requests, split(layout, outputs, merged), strict=True):
        alone = model.run(request, ["scores"])["scores"]
        assert result["scores"].shape == alone.shape == request["candidates"].shape
        worst = max(worst, assert_same_scores(result["scores"], alone))
        np.testing.assert_allclose(
            alone, reference_scores(repo.weights[repo.latest], request), rtol=1e-5, atol=1e-5
        )
    assert worst < 1e-5


def test_concurrent_ragged_requests_are_batched_and_match_unbatched(model) -> None:
    rng = np.random.default_rng(1)
    requests = [
        ragged_request(rng, int(rng.integers(1, 12)), int(rng.integers(1, 9)), int(c))
        for c in rng.integers(1, 25, size=40)
    ]
    runs: list[int] = []

    def counting_run(inputs, outputs):
        runs.append(next(iter(inputs.values())).shape[0])
        return model.run(inputs, outputs)

    async def scenario() -> list[dict[str, np.ndarray]]:
        backend = BatchingBackend(1, lambda m: BatchPolicy(max_batch_size=8, max_queue_delay_ms=20))
        batcher = backend.batcher(model)
        batcher._run = counting_run  # count the ONNX Runtime runs
        try:
            return await asyncio.gather(*(backend.infer(model, r, ["scores"]) for r in requests))
        finally:
            await backend.close()

    results = asyncio.run(scenario())
    assert sum(runs) == len(requests) and max(runs) <= 8
    assert len(runs) < len(requests) / 2  # requests were really merged
    for request, result in zip(requests, results, strict=True):
        alone = model.run(request, ["scores"])["scores"]
        assert_same_scores(result["scores"], alone)


def test_batching_off_runs_every_request_alone(model) -> None:
    rng = np.random.default_rng(2)
    requests = [ragged_request(rng, 3, 2, 5) for _ in range(6)]
    runs: list[int] = []

    async def scenario() -> None:
        backend = BatchingBackend(1, lambda m: BatchPolicy(enabled=False))
        batcher = backend.batcher(model)
        original = batcher._run
        batcher._run = lambda i, o: runs.append(1) or original(i, o)
        try:
            results = await asyncio.gather(*(backend.infer(model, r, ["scores"]) for r in requests))
        finally:
            await backend.close()
        for request, result in zip(requests, results, strict=True):
            np.testing.assert_array_equal(
                result["scores"], model.run(request, ["scores"])["scores"]
            )

    asyncio.run(scenario())
    assert len(runs) == len(requests)


def test_a_bad_request_in_a_batch_fails_alone(model) -> None:
    rng = np.random.default_rng(3)
    good = [ragged_request(rng, 2, 2, 3) for _ in range(3)]
    bad = ragged_request(rng, 2, 2, 3)
    bad["candidates"][0, 0] = 10_000  # out of range: ORT rejects the run

    async def scenario():
        backend = BatchingBackend(1, lambda m: BatchPolicy(max_queue_delay_ms=20))
        try:
            return await asyncio.gather(
                *(backend.infer(model, r, ["scores"]) for r in [*good, bad]),
                return_exceptions=True,
            )
        finally:
            await backend.close()

    results = asyncio.run(scenario())
    assert all(isinstance(r, dict) for r in results[:3])
    assert "failed to run" in str(results[3])
    assert "ONNXRuntime" not in str(results[3]) and "10000" not in str(results[3])  # log only


def test_the_batcher_never_merges_beyond_the_byte_budget(model) -> None:
    rng = np.random.default_rng(4)
    short = [ragged_request(rng, 2, 2, 4) for _ in range(12)]
    long = [ragged_request(rng, 2, 2, 3000) for _ in range(6)]  # ~24 KB of candidates each
    requests = [*short[:6], *long, *short[6:]]
    budget = 64 * 1024
    runs: list[tuple[int, int]] = []

    def measuring_run(inputs, outputs):
        runs.append((next(iter(inputs.values())).shape[0], sum(a.nbytes for a in inputs.values())))
        return model.run(inputs, outputs)

    async def scenario() -> list[dict[str, np.ndarray]]:
        policy = BatchPolicy(max_batch_size=8, max_queue_delay_ms=30, max_batch_bytes=budget)
        backend = BatchingBackend(1, lambda m: policy)
        batcher = backend.batcher(model)
        batcher._run = measuring_run
        try:
            return await asyncio.gather(*(backend.infer(model, r, ["scores"]) for r in requests))
        finally:
            await backend.close()

    results = asyncio.run(scenario())
    assert sum(rows for rows, _ in runs) == len(requests)
    assert max(nbytes for _, nbytes in runs) <= budget, runs  # padding included
    assert any(rows > 1 for rows, _ in runs)  # small requests were still merged
    for request, result in zip(requests, results, strict=True):
        assert result["scores"].shape == request["candidates"].shape


def test_a_full_queue_answers_resource_exhausted() -> None:
    release = threading.Event()

    def blocked_run(inputs, outputs):
        release.wait(5)
        return {"y": inputs["x"]}

    async def scenario() -> None:
        from concurrent.futures import ThreadPoolExecutor

        from services.scorer.batching.ragged import BatchLayout

        executor = ThreadPoolExecutor(1)
        batcher = ModelBatcher(
            "m",
            "1",
            blocked_run,
            BatchLayout(False, "test"),
            BatchPolicy(max_queue_size=2),
            executor,
            asyncio.Semaphore(1),
        )
        x = {"x": np.ones((1, 1), np.float32)}
        first = asyncio.ensure_future(batcher.submit(x, ["y"], None))
        second = asyncio.ensure_future(batcher.submit(x, ["y"], None))
        await asyncio.sleep(0.05)
        assert batcher.pending == 2
        with pytest.raises(ResourceExhausted, match="inference queue full"):
            await batcher.submit(x, ["y"], None)
        release.set()
        await asyncio.gather(first, second)
        assert batcher.pending == 0
        await batcher.submit(x, ["y"], None)  # room again
        await batcher.drain()
        executor.shutdown()

    asyncio.run(scenario())


def test_deadline_passed_in_the_queue_is_not_run(model) -> None:
    async def scenario() -> None:
        backend = BatchingBackend(1, lambda m: BatchPolicy())
        try:
            request = ragged_request(np.random.default_rng(4), 2, 2, 2)
            with pytest.raises(Exception, match="deadline"):
                await backend.infer(model, request, ["scores"], time.monotonic() - 1)
        finally:
            await backend.close()

    asyncio.run(scenario())
