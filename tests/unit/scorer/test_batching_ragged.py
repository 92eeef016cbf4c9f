"""Merge and split of ragged requests (services/scorer/batching/ragged.py), without ONNX Runtime
or asyncio: the padding rules derived from the signature, checked element by element."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.common.tensors import V2_DATATYPES
from services.scorer.batching.policy import BatchPolicy
from services.scorer.batching.queue import ModelBatcher
from services.scorer.batching.ragged import (
    ALIGNED,
    EXACT,
    ZERO,
    batch_layout,
    merge,
    request_key,
    split,
)
from services.scorer.signature import TensorSignature

CODES = {name: code for code, name in V2_DATATYPES.items()}


def sig(name: str, dtype: str, *dims: str | int | None) -> TensorSignature:
    """A signature from axis names (str: symbolic, None: unnamed dynamic, int: fixed)."""
    shape = tuple(d if isinstance(d, int) else -1 for d in dims)
    names = tuple(d if isinstance(d, str) else None for d in dims)
    return TensorSignature(name, CODES[dtype], shape, names)


# The scorer family's signature: histories of their own lengths, candidates aligned with scores.
INPUTS = (
    sig("src_items", "INT64", "B", "Ls"),
    sig("src_mask", "FP32", "B", "Ls"),
    sig("candidates", "INT64", "B", "C"),
)
OUTPUTS = (sig("scores", "FP32", "B", "C"),)


def request(rows: int, ls: int, c: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "src_items": rng.integers(1, 50, size=(rows, ls)).astype(np.int64),
        "src_mask": np.ones((rows, ls), np.float32),
        "candidates": rng.integers(1, 50, size=(rows, c)).astype(np.int64),
    }


def fake_scores(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A 'model' whose scores depend on the candidates and on the masked history sum only, so
    neutral padding must leave every request's scores unchanged."""
    history = (inputs["src_items"] * inputs["src_mask"]).sum(axis=1, keepdims=True)
    return {"scores": (inputs["candidates"] * 10.0 + history).astype(np.float32)}


def test_merge_then_split_round_trips_ragged_requests() -> None:
    layout = batch_layout(INPUTS, OUTPUTS)
    assert layout.inputs == {
        "src_items": ((1, "Ls", ZERO),),
        "src_mask": ((1, "Ls", ZERO),),
        "candidates": ((1, "C", ALIGNED),),
    }
    requests = [request(1, 3, 5, 0), request(2, 7, 1, 1), request(3, 1, 9, 2), request(1, 4, 2, 3)]
    merged = merge(layout, requests)
    assert merged.rows == [(0, 1), (1, 3), (3, 6), (6, 7)]
    assert merged.inputs["src_items"].shape == (7, 7)
    assert merged.inputs["candidates"].shape == (7, 9)
    for (start, stop), req in zip(merged.rows, requests, strict=True):
        for name, array in req.items():  # every request's own values are untouched
            own = merged.inputs[name][start:stop, : array.shape[1]]
            np.testing.assert_array_equal(own, array)
    results = split(layout, fake_scores(merged.inputs), merged)
    for req, result in zip(requests, results, strict=True):
        assert result["scores"].shape == req["candidates"].shape
        np.testing.assert_array_equal(result["scores"], fake_scores(req)["scores"])


def test_history_axes_are_zero_padded_and_candidates_repeat_the_first() -> None:
    layout = batch_layout(INPUTS, OUTPUTS)
    short = {
        "src_items": np.array([[7]], np.int64),
        "src_mask": np.array([[1.0]], np.float32),
        "candidates": np.array([[4, 9]], np.int64),
    }
    long = request(1, 3, 4, 5)
    merged = merge(layout, [short, long])
    np.testing.assert_array_equal(merged.inputs["src_items"][0], [7, 0, 0])
    np.testing.assert_array_equal(merged.inputs["src_mask"][0], [1.0, 0.0, 0.0])
    # output-aligned: padded with a valid index (the request's first candidate), never 0
    np.testing.assert_array_equal(merged.inputs["candidates"][0], [4, 9, 4, 4])
    assert merged.sizes == [{"Ls": 1, "C": 2}, {"Ls": 3, "C": 4}]


def test_rows_padded_to_the_bucket_are_copies_and_are_dropped_by_split() -> None:
    layout = batch_layout(INPUTS, OUTPUTS)
    requests = [request(1, 2, 3, 6), request(2, 2, 3, 7)]
    merged = merge(layout, requests, pad_rows_to=4)
    assert merged.inputs["candidates"].shape == (4, 3)
    np.testing.assert_array_equal(merged.inputs["candidates"][3], requests[0]["candidates"][0])
    results = split(layout, fake_scores(merged.inputs), merged)
    assert [r["scores"].shape for r in results] == [(1, 3), (2, 3)]


def test_exact_mode_and_unnamed_axes_refuse_mismatched_shapes() -> None:
    exact = batch_layout(INPUTS, OUTPUTS, ragged="exact")
    assert all(kind == EXACT for axes in exact.inputs.values() for _, _, kind in axes)
    a, b, same_as_a = request(1, 3, 5, 0), request(1, 4, 5, 1), request(2, 3, 5, 2)
    assert request_key(exact, a) == request_key(exact, same_as_a)
    assert request_key(exact, a) != request_key(exact, b)
    padded = batch_layout(INPUTS, OUTPUTS)
    assert request_key(padded, a) == request_key(padded, b)  # pad mode: one run for both
    unnamed = batch_layout((sig("x", "FP32", "B", None),), (sig("y", "FP32", "B"),))
    assert unnamed.inputs["x"] == ((1, None, EXACT),)
    x = {"x": np.ones((1, 2), np.float32)}
    assert request_key(unnamed, x) != request_key(unnamed, {"x": np.ones((1, 3), np.float32)})


def test_requests_that_cannot_share_a_run_get_no_key() -> None:
    layout = batch_layout(INPUTS, OUTPUTS)
    assert request_key(layout, request(0, 2, 2, 0)) is None  # no rows
    assert request_key(layout, request(1, 2, 0, 0)) is None  # nothing to pad candidates with
    for inputs, outputs in [
        ((sig("x", "FP32", "B", "L"),), (sig("y", "FP32", "N"),)),  # axis 0 names differ
        ((sig("x", "FP32", None, "L"),), (sig("y", "FP32", None),)),  # unnamed axis 0
        ((sig("x", "FP32", 1, "L"),), (sig("y", "FP32", 1),)),  # fixed axis 0
    ]:
        never = batch_layout(inputs, outputs)
        assert not never.batchable and never.reason
        assert request_key(never, {"x": np.ones((1, 2), np.float32)}) is None


def test_exact_mode_batcher_never_merges_different_shapes() -> None:
    """The queue side of ``ragged: exact``: only requests with equal shapes share a run."""
    release = threading.Event()
    runs: list[tuple[tuple[int, ...], tuple[int, ...], float]] = []

    def run(inputs, outputs):
        release.wait(5)
        shapes = (inputs["src_items"].shape, inputs["candidates"].shape)
        runs.append((*shapes, float(inputs["src_mask"].min())))
        return fake_scores(inputs)

    async def scenario() -> list[dict[str, np.ndarray]]:
        executor = ThreadPoolExecutor(1)
        batcher = ModelBatcher(
            "m",
            "1",
            run,
            batch_layout(INPUTS, OUTPUTS, ragged="exact"),
            BatchPolicy(max_batch_size=8, max_queue_delay_ms=50, ragged="exact"),
            executor,
            asyncio.Semaphore(1),
        )
        shapes = [(2, 3), (2, 3), (4, 3), (2, 3), (4, 3), (2, 5)]
        reqs = [request(1, ls, c, seed) for seed, (ls, c) in enumerate(shapes)]
        tasks = [asyncio.ensure_future(batcher.submit(r, ["scores"], None)) for r in reqs]
        await asyncio.sleep(0.05)  # the first run waits on the gate; the rest queue behind it
        release.set()
        results = await asyncio.gather(*tasks)
        await batcher.drain()
        executor.shutdown()
        for req, result in zip(reqs, results, strict=True):
            np.testing.assert_array_equal(result["scores"], fake_scores(req)["scores"])
        return results

    asyncio.run(scenario())
    assert len(runs) < 6  # equal shapes did share a run
    rows_by_shape: dict[tuple[int, int], int] = {}
    for src, cand, mask_min in runs:
        assert mask_min == 1.0  # no history was zero-padded
        rows_by_shape[(src[1], cand[1])] = rows_by_shape.get((src[1], cand[1]), 0) + src[0]
    # a mixed run would be counted under the larger shape
    assert rows_by_shape == {(2, 3): 3, (4, 3): 2, (2, 5): 1}
