"""One served model version: its files, ONNX Runtime session, signature and batch policy."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from services.common.model_repository import ModelVersion
from services.scorer.batching.policy import BatchPolicy
from services.scorer.input_checks import IndexRange
from services.scorer.session import SessionBundle
from services.scorer.signature import TensorSignature

READY = "READY"  # ModelInfo.state of every loaded version (only ready versions are held)


@dataclass(frozen=True)
class LoadedModel:
    """One warmed-up model version: its files, session and signature."""

    version: ModelVersion
    bundle: SessionBundle
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    io_binding: bool = False
    index_ranges: tuple[IndexRange, ...] = ()
    """Valid values of the index inputs (from the vocabulary sizes), checked per request."""
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def version_id(self) -> str:
        return self.version.version

    @property
    def label(self) -> str:
        return self.version.label

    @property
    def inputs(self) -> tuple[TensorSignature, ...]:
        return self.bundle.inputs

    @property
    def outputs(self) -> tuple[TensorSignature, ...]:
        return self.bundle.outputs

    @property
    def providers(self) -> tuple[str, ...]:
        return self.bundle.providers

    @property
    def variant(self) -> str:
        return self.version.variant

    def run(self, inputs: Mapping[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Runs the session synchronously (call it from a worker thread).

        On a GPU provider with ``io_binding``, inputs are bound from host memory and outputs
        allocated on the device, then copied back once (no per-output staging by ORT).
        """
        session = self.bundle.session
        if not self.io_binding:
            results = session.run(outputs, dict(inputs))
            return dict(zip(outputs, results, strict=True))
        binding = session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in outputs:
            binding.bind_output(name, "cuda", device_id=self.bundle.device_id)
        session.run_with_iobinding(binding)
        return dict(zip(outputs, binding.copy_outputs_to_cpu(), strict=True))
