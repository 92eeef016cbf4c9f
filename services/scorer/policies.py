"""How each model is batched (batch policy); which versions are served is the shared
``services.common.model_repository.policy.VersionPolicy``.

The batch policy comes from configuration and may also come from the model's manifest
(``serving.batching``), with this priority: ``--model-config`` entry for the model, then its
``"*"`` entry, then the manifest, then the scorer's flags.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

from services.scorer.batching.policy import BatchPolicy

_BATCH_KEYS = {
    "batching": "enabled",
    "enabled": "enabled",
    "max_batch_size": "max_batch_size",
    "max_queue_delay_ms": "max_queue_delay_ms",
    "max_queue_size": "max_queue_size",
    "ragged": "ragged",
    "pad_batch_to_bucket": "pad_batch_to_bucket",
    "max_batch_bytes": "max_batch_bytes",
}


@cache
def _load_model_config(text: str) -> dict[str, dict[str, Any]]:
    if not text.strip():
        return {}
    raw = text if text.lstrip().startswith("{") else Path(text).read_text(encoding="utf-8")
    data = json.loads(raw)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError("--model-config must be a JSON object of {model: {option: value}}")
    for model, entry in data.items():
        unknown = set(entry) - set(_BATCH_KEYS)
        if unknown:
            raise ValueError(
                f"--model-config['{model}']: unknown option(s) {sorted(unknown)} "
                f"(known: {sorted(_BATCH_KEYS)})"
            )
    return data


def parse_model_config(text: str) -> dict[str, dict[str, Any]]:
    """Validates ``--model-config`` (JSON inline or a file path); raises ValueError."""
    return _load_model_config(text)


def batch_policy(config: Any, name: str, manifest: Mapping[str, Any] | None = None) -> BatchPolicy:
    """The batch policy of model ``name`` (see the module docstring for the priority)."""
    values: dict[str, Any] = {
        "enabled": config.batching,
        "max_batch_size": config.max_batch_size,
        "max_queue_delay_ms": config.max_queue_delay_ms,
        "max_queue_size": config.max_queue,
        "pad_batch_to_bucket": config.pad_batch_to_bucket,
        "max_batch_bytes": config.max_batch_bytes,
    }
    layers = []
    serving = (manifest or {}).get("serving", {})
    if isinstance(serving, dict) and isinstance(serving.get("batching"), dict):
        layers.append(serving["batching"])
    overrides = _load_model_config(config.model_config)
    layers += [overrides.get("*", {}), overrides.get(name, {})]
    for layer in layers:
        for key, value in layer.items():
            if key in _BATCH_KEYS:
                values[_BATCH_KEYS[key]] = value
    known = {f.name for f in fields(BatchPolicy)}
    policy = BatchPolicy(**{k: v for k, v in values.items() if k in known})
    if policy.ragged not in ("pad", "exact"):
        raise ValueError(f"model '{name}': ragged must be 'pad' or 'exact', not '{policy.ragged}'")
    if policy.max_batch_size < 1 or policy.max_queue_size < 1:
        raise ValueError(f"model '{name}': max_batch_size and max_queue_size must be >= 1")
    return policy
