"""Serving benchmark: the same ONNX model and the same requests through every way of serving it.

Systems (``--systems``, all by default):

* ``ort-loop``   in-process ONNX Runtime, one thread calling ``session.run`` back to back: the
                 ceiling for one caller (concurrency 1 only);
* ``ort-pool``   in-process ONNX Runtime, N threads each calling ``session.run`` (closed loop):
                 the ceiling at concurrency N, and the reference every ratio is taken against;
* ``scorer``     the xdrec scorer (``python -m services.scorer``) over gRPC, both APIs
                 (``Predict`` and v2 ``ModelInfer``), dynamic batching off (``--no-batching``)
                 and on (``--batching``), measured as ``scorer`` and ``scorer+batch``;
* ``torch``      a PyTorch-eager gRPC server (bench/peers/torch_eager_server.py) on model.pt,
                 same Predict contract: what a team writes first;
* ``mlserver``   MLServer (Seldon) in ``.venv-peer`` with an ONNX Runtime runtime
                 (bench/peers/mlserver_onnx_runtime.py), driven over the v2 gRPC protocol.

Requests: real users of the model's features.tsv encoded by the encoder's own code
(``services.encoder.encoding``): one user per request (batch 1, their real source and target
histories), ``--candidates`` target items each (random, seeded). Every system gets the same
pre-serialised request bytes, cycled in the same order. Closed loop: N callers, each sends its
next request when the previous answer arrives, for ``--duration`` seconds per level after
``--warmup`` seconds unmeasured.

Fairness on a small machine: the load generator runs on the same cores as the server, so it is
kept cheap (requests serialised once up front, raw bytes on a single ``grpc.aio`` channel, the
responses of the timed calls are not parsed) and its CPU time per request is reported next to
the server's. Only one server runs at a time. Every server gets the same ONNX Runtime threading
(``--intra-op-threads``, default 1 per run) and ``--workers`` concurrent runs (default 2).

Modules: ``workload`` (requests), ``measure`` (closed-loop driver, latency and CPU figures),
``peers`` (starting the servers), ``model`` (the model under test), ``report`` (table, JSON,
plot), ``runner`` (one run); the CLI is ``bench/serving_benchmark.py``.
"""
