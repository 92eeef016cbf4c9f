"""Which batcher serves which loaded model (services/scorer/batching/registry.py): the model
object itself, by identity - not its id(), not its (name, version)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import numpy as np
import pytest

from services.common.model_repository import ModelRepository
from services.scorer.batching.backend import BatchingBackend
from services.scorer.batching.registry import BatcherRegistry
from services.scorer.config import ScorerConfig
from services.scorer.warmup import load_version
from tests.fixtures.model_repo import BuiltRepo

CONFIG = ScorerConfig(providers="cpu", intra_op_threads=1, warmup_runs=1, max_batch_size=4)


class AlwaysEqual:
    """A model stand-in whose value equality says every instance is the same one."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0


def test_entries_are_per_object_whatever_eq_says() -> None:
    registry: BatcherRegistry[str] = BatcherRegistry()
    first, second = AlwaysEqual(), AlwaysEqual()
    assert registry.get_or_create(first, lambda: "first") == "first"
    assert registry.get_or_create(second, lambda: "second") == "second"
    assert registry.get_or_create(first, lambda: "again") == "first"
    assert len(registry) == 2
    assert registry.pop(first) == "first"
    assert first not in registry and second in registry
    assert registry.get(second) == "second"


def test_a_registered_model_stays_alive_so_its_id_cannot_be_reused() -> None:
    """An id-keyed table that did not hold the model would hand a collected model's batcher to
    whatever object reuses its address; this one keeps the model alive until it is popped."""
    registry: BatcherRegistry[str] = BatcherRegistry()
    model = AlwaysEqual()
    alive = weakref.ref(model)
    registry.get_or_create(model, lambda: "batcher")
    del model
    gc.collect()
    assert alive() is not None
    registry.pop(alive())
    gc.collect()
    assert alive() is None
    assert len(registry) == 0


@pytest.fixture(scope="module")
def two_loads(repo: BuiltRepo):
    """The same version loaded twice (unload + load while the first still drains)."""
    opened = ModelRepository(repo.root).open(repo.name)
    return load_version(opened, CONFIG), load_version(opened, CONFIG)


def test_two_loads_of_one_version_get_their_own_batchers(two_loads) -> None:
    old, new = two_loads
    assert (old.name, old.version_id) == (new.name, new.version_id)
    rng = np.random.default_rng(0)
    request = {
        "src_items": rng.integers(1, 13, size=(1, 3)).astype(np.int64),
        "src_mask": np.ones((1, 3), np.float32),
        "tgt_items": rng.integers(1, 21, size=(1, 2)).astype(np.int64),
        "tgt_mask": np.ones((1, 2), np.float32),
        "candidates": rng.integers(1, 21, size=(1, 4)).astype(np.int64),
    }

    async def scenario() -> None:
        backend = BatchingBackend(1, lambda m: m.policy)
        try:
            old_batcher, new_batcher = backend.batcher(old), backend.batcher(new)
            assert old_batcher is not new_batcher
            assert backend.batcher(old) is old_batcher
            await backend.retire(old)  # drains and forgets the old object only
            assert backend.batcher(new) is new_batcher
            result = await backend.infer(new, request, ["scores"])
            np.testing.assert_allclose(
                result["scores"], new.run(request, ["scores"])["scores"], rtol=1e-6
            )
            assert backend.batcher(old) is not old_batcher  # a fresh one if it came back
        finally:
            await backend.close()

    asyncio.run(scenario())
