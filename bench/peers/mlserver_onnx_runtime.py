"""MLServer custom runtime: an ONNX Runtime session behind MLServer's ``MLModel`` API.

MLServer has no ONNX runtime package on PyPI (``mlserver-onnx`` does not exist), so this is the
small wrapper a user writes (https://mlserver.readthedocs.io/en/stable/user-guide/custom.html):
load the session in ``load``, decode the v2 inputs with ``NumpyCodec``, run, encode the outputs.
It runs inside ``.venv-peer`` (scripts/sidecar_venv.py peer), started by the serving benchmark
with a model-settings.json whose ``parameters.uri`` points at the same model.onnx the scorer
serves and ``parameters.extra`` carries the ONNX Runtime thread settings.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        extra = (self.settings.parameters.extra or {}) if self.settings.parameters else {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        options.inter_op_num_threads = int(extra.get("inter_op_threads", 1))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {
            request_input.name: NumpyCodec.decode_input(request_input)
            for request_input in payload.inputs
        }
        wanted = [o.name for o in payload.outputs] if payload.outputs else self._outputs
        results = self._session.run(wanted, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, np.ascontiguousarray(array))
                for name, array in zip(wanted, results, strict=True)
            ],
        )
