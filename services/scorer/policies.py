"""Which versions to serve (version policy) and how each model is batched (batch policy).

Both come from configuration; the batch policy may also come from the model's manifest
(``serving.batching``), with this priority: ``--model-config`` entry for the model, then its
``"*"`` entry, then the manifest, then the scorer's flags.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
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
}


@dataclass(frozen=True)
class VersionPolicy:
    """``latest:N`` (the N newest loadable versions) or ``specific:V1,V2``."""

    latest: int = 2
    specific: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, rest = text.strip().partition(":")
        kind = kind.strip().lower()
        if kind == "latest":
            count = int(rest) if rest.strip() else 1
            if count < 1:
                raise ValueError(f"version policy '{text}': N must be >= 1")
            return cls(latest=count)
        if kind == "specific":
            versions = tuple(v.strip() for v in rest.split(",") if v.strip())
            if not versions or not all(v.isdigit() and int(v) > 0 for v in versions):
                raise ValueError(
                    f"version policy '{text}': list positive version numbers, e.g. specific:1,3"
                )
            return cls(latest=0, specific=versions)
        raise ValueError(f"version policy '{text}': use latest:N or specific:V1,V2")

    def candidates(self, available: Sequence[str]) -> list[str]:
        """Versions that may be served, newest first."""
        newest_first = sorted(available, key=int, reverse=True)
        if self.specific:
            return [v for v in newest_first if v in self.specific]
        return newest_first

    @property
    def limit(self) -> int:
        """How many versions to keep (every listed one for ``specific``)."""
        return len(self.specific) if self.specific else self.latest


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
