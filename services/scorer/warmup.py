"""The scorer's own load of an accepted version: session with its providers, every batch-size
bucket warmed up.

Runs after the shared acceptance rule (services/common/model_repository/acceptance.py) has
verified the files and checked the graph on a CPU session; what is checked here is what depends
on the scorer's configuration (providers, batch buckets, warm-up length).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from services.common.model_repository import ModelVersion
from services.scorer.config import ScorerConfig
from services.scorer.input_checks import index_ranges
from services.scorer.loaded_model import LoadedModel
from services.scorer.policies import batch_policy
from services.scorer.providers import CPU
from services.scorer.session import create_session, warmup_inputs

log = logging.getLogger("xdrec.scorer.models")


def load_version(version: ModelVersion, config: ScorerConfig) -> LoadedModel:
    """Builds the session and warms up every batch-size bucket; raises on any problem
    (blocking)."""
    started = time.perf_counter()
    policy = batch_policy(config, version.name, version.manifest.raw)
    bundle = create_session(version, config)
    model = LoadedModel(
        version=version,
        bundle=bundle,
        policy=policy,
        io_binding=config.io_binding and bundle.providers[0] != CPU,
        index_ranges=index_ranges(version, tuple(spec.name for spec in bundle.inputs)),
    )
    names = [spec.name for spec in model.outputs]
    for batch in policy.buckets:
        sample = warmup_inputs(model.inputs, config.warmup_length, batch)
        for _ in range(max(config.warmup_runs, 1)):
            results = model.run(sample, names)
        for spec in model.outputs:
            got = results[spec.name]
            if got.ndim != len(spec.shape) or (got.ndim and got.shape[0] != batch):
                raise ValueError(
                    f"{version.label}: warm-up output '{spec.name}' has shape "
                    f"{list(got.shape)} for batch {batch}, the manifest says {list(spec.shape)}"
                )
            if got.dtype.kind == "f" and not np.all(np.isfinite(got)):
                raise ValueError(f"{version.label}: warm-up output '{spec.name}' is not finite")
    log.info(
        "model loaded",
        extra={
            "model": version.name,
            "version": version.version,
            "providers": list(model.providers),
            "variant": model.variant,
            "batching": policy.enabled,
            "max_batch_size": policy.max_batch_size,
            "warmed_batch_sizes": list(policy.buckets),
            "load_seconds": round(time.perf_counter() - started, 3),
        },
    )
    return model
