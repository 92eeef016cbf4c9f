"""Open Inference Protocol v2 (``inference.GRPCInferenceService``) on the scorer's port.

Why: Triton / KServe clients and load tools (tritonclient, perf_analyzer, ghz) then work against
the scorer unchanged. Requests go through the same validation and backend as Predict; tensors
arrive in ``raw_input_contents`` (what tritonclient sends) or in typed ``contents`` and results
are always returned in ``raw_output_contents``.

Repository extension: RepositoryModelLoad (re)loads the newest version on disk of a model (a
broken version is refused with FAILED_PRECONDITION and the loaded one keeps serving);
RepositoryModelUnload stops serving a model. Both are off unless ``--model-control explicit``
and then need an admin identity: the admin token or an admin client certificate
(``services.scorer.control``). While a model is unloaded through
the API the scorer reports NOT_SERVING (its health and ``xdrec_ready``), so load balancers and
the ranker stop sending it traffic it cannot answer; loading it again restores SERVING.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata

import grpc
import numpy as np
from xdrec.kserve.v2 import grpc_service_pb2 as v2
from xdrec.kserve.v2 import grpc_service_pb2_grpc as v2_grpc

from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.common.rpc import deadline_of
from services.common.server import Readiness
from services.common.tensors import V2_DATATYPES, dtype_code, element_count, numpy_dtype
from services.scorer.control import RepositoryControl, validate_model_name
from services.scorer.loaded_model import LoadedModel
from services.scorer.manager import ModelManager
from services.scorer.runner import RequestFields, Runner
from services.scorer.signature import RawTensor, dtype_code_from_v2

SERVER_NAME = "xdrec-scorer"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["model_repository"]

# Typed ``contents`` field per v2 datatype (for clients that do not send raw bytes).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def _version() -> str:
    try:
        return metadata.version("xdrec")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _raw_inputs(request: v2.ModelInferRequest, max_bytes: int = 0) -> Iterator[RawTensor]:
    """Reduces both input encodings (raw bytes or typed contents) to ``RawTensor``s, lazily.

    Typed contents grow when decoded (a small int64 is one byte on the wire, eight in memory):
    their decoded size is checked against ``max_bytes`` before they are converted."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            "raw_input_contents",
            f"{len(raw)} entries for {len(request.inputs)} inputs (one per input, in order)",
        )
    for i, tensor in enumerate(request.inputs):
        field = f"inputs['{tensor.name}']" if tensor.name else f"inputs[{i}]"
        code = dtype_code_from_v2(tensor.datatype, f"{field}.datatype")
        shape = tuple(int(d) for d in tensor.shape)
        if raw:
            data = raw[i]
        else:
            contents_field = _CONTENTS_FIELD.get(tensor.datatype)
            if contents_field is None:
                raise InvalidArgument(field, f"{tensor.datatype} needs raw_input_contents")
            values = getattr(tensor.contents, contents_field)
            decoded = len(values) * numpy_dtype(code).itemsize
            if max_bytes and decoded > max_bytes:
                raise ResourceExhausted(
                    f"{field}: {decoded} bytes of contents once decoded exceed the request limit "
                    f"of {max_bytes}"
                )
            if any(d < 0 for d in shape) or len(values) != element_count(shape):
                raise InvalidArgument(
                    field, f"{len(values)} values in contents for shape {list(shape)}"
                )
            data = np.asarray(values, dtype=numpy_dtype(code)).tobytes()
        yield RawTensor(tensor.name, code, shape, data)


def _tensor_metadata(
    model: LoadedModel, outputs: bool
) -> list[v2.ModelMetadataResponse.TensorMetadata]:
    specs = model.outputs if outputs else model.inputs
    return [
        v2.ModelMetadataResponse.TensorMetadata(
            name=s.name, datatype=s.dtype_name, shape=list(s.shape)
        )
        for s in specs
    ]


UNLOADED_REASON = "models unloaded:"
"""Start of the NOT_SERVING reason while models are unloaded through the API."""

V2_FIELDS = RequestFields(model_name="model_name", outputs="outputs")


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    """The v2 protocol over the same runner and model manager as ScorerService."""

    def __init__(
        self,
        runner: Runner,
        manager: ModelManager,
        readiness: Readiness,
        control: RepositoryControl | None = None,
    ) -> None:
        self.runner = runner
        self.manager = manager
        self.readiness = readiness
        self.control = control or RepositoryControl("none", "")

    async def ServerLive(
        self, request: v2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: v2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.readiness.ready)

    async def ModelReady(
        self, request: v2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelReadyResponse:
        """Ready when the version (newest when empty) is loaded; unknown models are not ready."""
        if not request.name:
            raise InvalidArgument("name", "required (a model name, as ListModels shows it)")
        try:
            self.manager.get(request.name, request.version)
        except NotFound:
            return v2.ModelReadyResponse(ready=False)
        return v2.ModelReadyResponse(ready=self.readiness.ready)

    async def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(
            name=SERVER_NAME, version=_version(), extensions=EXTENSIONS
        )

    async def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelMetadataResponse:
        if not request.name:
            raise InvalidArgument("name", "required (a model name, as ListModels shows it)")
        model = self.manager.get(request.name, request.version)
        versions = [request.version] if request.version else self.manager.versions(request.name)
        return v2.ModelMetadataResponse(
            name=model.name,
            versions=versions,
            platform=PLATFORM,
            inputs=_tensor_metadata(model, outputs=False),
            outputs=_tensor_metadata(model, outputs=True),
        )

    async def ModelInfer(
        self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> v2.ModelInferResponse:
        result = await self.runner.run(
            request.model_name,
            request.model_version,
            _raw_inputs(request, self.runner.config.max_request_bytes),
            [o.name for o in request.outputs],
            V2_FIELDS,
            deadline_of(context),
        )
        response = v2.ModelInferResponse(
            model_name=result.model.name, model_version=result.model.version_id, id=request.id
        )
        for name in result.output_names:
            array = np.ascontiguousarray(result.outputs[name])
            code = dtype_code(array.dtype)
            response.outputs.add(name=name, datatype=V2_DATATYPES[code], shape=list(array.shape))
            response.raw_output_contents.append(
                array.astype(numpy_dtype(code), copy=False).tobytes()
            )
        return response

    async def RepositoryModelLoad(
        self, request: v2.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> v2.RepositoryModelLoadResponse:
        self.control.authorize(context, "RepositoryModelLoad")
        validate_model_name(request.model_name, self.manager.repository.root)
        await self.manager.load(request.model_name)
        if not self.manager.unloaded and self.readiness.reason.startswith(UNLOADED_REASON):
            await self.readiness.set(True)
        return v2.RepositoryModelLoadResponse(model_name=request.model_name, isLoaded=True)

    async def RepositoryModelUnload(
        self, request: v2.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> v2.RepositoryModelUnloadResponse:
        self.control.authorize(context, "RepositoryModelUnload")
        validate_model_name(request.model_name, self.manager.repository.root)
        await self.manager.unload(request.model_name)
        await self.readiness.set(
            False,
            f"{UNLOADED_REASON} {', '.join(self.manager.unloaded)} through RepositoryModelUnload "
            "(RepositoryModelLoad serves it again)",
        )
        return v2.RepositoryModelUnloadResponse(model_name=request.model_name, isUnloaded=True)
