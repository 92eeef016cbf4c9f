"""One inference request, whichever API it arrived through (xdrec Predict or v2 ModelInfer).

Why one place: both APIs must resolve the version, validate the tensors and run the backend in
exactly the same way (same checks, same status codes, same limits); only the wire formats differ,
and those stay in the servicers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgument
from services.common.server import Readiness
from services.scorer.backend import InferenceBackend
from services.scorer.config import ScorerConfig
from services.scorer.input_checks import check_finite, check_indices
from services.scorer.loaded_model import LoadedModel
from services.scorer.manager import ModelManager
from services.scorer.signature import RawTensor, decode_inputs, select_outputs


@dataclass(frozen=True)
class Inference:
    """The model version that ran and its outputs, in the order they were asked for."""

    model: LoadedModel
    output_names: list[str]
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class RequestFields:
    """How the calling API names its fields, so error messages name the caller's field."""

    model_name: str
    outputs: str


class Runner:
    """Resolves, validates and runs requests against the loaded models."""

    def __init__(
        self,
        manager: ModelManager,
        backend: InferenceBackend,
        readiness: Readiness,
        config: ScorerConfig,
    ) -> None:
        self.manager = manager
        self.backend = backend
        self.readiness = readiness
        self.config = config

    async def run(
        self,
        name: str,
        version: str,
        tensors: Iterable[RawTensor],
        output_names: Sequence[str],
        fields: RequestFields,
        deadline: float | None,
    ) -> Inference:
        """UNAVAILABLE before ready, NOT_FOUND for unknown versions, then validate and run.

        ``tensors`` may be lazy: it is only read once the model (and so the signature) is known.
        """
        self.readiness.require()
        if not name:
            raise InvalidArgument(
                fields.model_name, "required (ListModels shows the loaded models)"
            )
        model = self.manager.get(name, version)
        inputs = decode_inputs(
            model.label,
            model.inputs,
            tensors,
            self.config.max_request_elements,
            self.config.max_request_bytes,
        )
        check_indices(inputs, model.index_ranges)
        check_finite(inputs)
        outputs = select_outputs(model.outputs, output_names, fields.outputs)
        results = await self.backend.infer(model, inputs, outputs, deadline)
        return Inference(model=model, output_names=outputs, outputs=results)
