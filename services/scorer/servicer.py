"""``xdrec.scorer.v1.ScorerService``: Predict and ListModels on top of the model manager.

The servicer only translates between the wire and the ``Runner`` (which resolves the version,
validates the tensors against the signature and runs the backend). Errors are raised as
``ServiceError`` and mapped by ``services.common.rpc``.
"""

from __future__ import annotations

import grpc
from xdrec.common.v1 import tensor_pb2
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.rpc import deadline_of
from services.common.tensors import to_proto
from services.scorer.loaded_model import READY, LoadedModel
from services.scorer.manager import ModelManager
from services.scorer.runner import RequestFields, Runner
from services.scorer.signature import RawTensor, TensorSignature


def tensor_specs(signatures: tuple[TensorSignature, ...]) -> list[scorer_pb2.TensorSpec]:
    """Signature -> ``TensorSpec`` messages (-1 marks dynamic axes)."""
    return [
        scorer_pb2.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape)) for s in signatures
    ]


def model_info(model: LoadedModel) -> scorer_pb2.ModelInfo:
    return scorer_pb2.ModelInfo(
        model=tensor_pb2.ModelRef(name=model.name, version=model.version_id),
        inputs=tensor_specs(model.inputs),
        outputs=tensor_specs(model.outputs),
        providers=list(model.providers),
        state=READY,
    )


PREDICT_FIELDS = RequestFields(model_name="model.name", outputs="output_names")


class ScorerServicer(scorer_pb2_grpc.ScorerServiceServicer):
    """Runs named model versions on named tensors."""

    def __init__(self, runner: Runner, manager: ModelManager) -> None:
        self.runner = runner
        self.manager = manager

    async def Predict(
        self, request: scorer_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.PredictResponse:
        result = await self.runner.run(
            request.model.name,
            request.model.version,
            (RawTensor(t.name, t.dtype, tuple(t.shape), t.data) for t in request.inputs),
            request.output_names,
            PREDICT_FIELDS,
            deadline_of(context),
        )
        return scorer_pb2.PredictResponse(
            model=tensor_pb2.ModelRef(name=result.model.name, version=result.model.version_id),
            outputs=[to_proto(name, result.outputs[name]) for name in result.output_names],
        )

    async def ListModels(
        self, request: scorer_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.ListModelsResponse:
        return scorer_pb2.ListModelsResponse(models=[model_info(m) for m in self.manager.models()])
