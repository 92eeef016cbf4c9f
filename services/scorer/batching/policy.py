"""How one model is batched: the switch, the limits and the ragged mode.

Resolved per model from the scorer's flags, the manifest's ``serving.batching`` and
``--model-config`` by ``services.scorer.policies.batch_policy``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    """How one model is batched (scorer flags, overridable per model; docs/architecture.md)."""

    enabled: bool = True
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 256
    ragged: str = "pad"  # "pad" (zero / first-element padding) or "exact" (same shapes only)
    pad_batch_to_bucket: bool = False  # pad the batch axis up to the next warmed-up bucket
    max_batch_bytes: int = 32 * 1024 * 1024  # input bytes of one merged run, padding included

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
