"""Dynamic batching: concurrent requests for one model version become one ONNX Runtime run.

Why: a recommender request is small (one user, a few hundred candidates), so per-run overhead
dominates; merging requests that arrive within a couple of milliseconds amortises it. Each loaded
model version gets a ``ModelBatcher``: requests enqueue into a bounded queue (RESOURCE_EXHAUSTED
when full), one worker task per version takes an execution slot (shared by all models: the
``inference_threads`` pool), collects up to ``max_batch_size`` rows or until the oldest request
has waited ``max_queue_delay_ms`` (only while another run of the model is in flight: an idle
model dispatches at once), merges, runs once on a worker thread and splits the outputs.

One job per module:

* ``policy``   - ``BatchPolicy``: how one model is batched (flags, manifest, ``--model-config``);
* ``ragged``   - pure numpy: padding rules derived from the signature, merge and split;
* ``queue``    - ``ModelBatcher``: the asyncio queue, worker, dispatch, deadlines and retries;
* ``registry`` - ``BatcherRegistry``: which batcher belongs to which loaded model object;
* ``backend``  - ``BatchingBackend``: the scorer's ``InferenceBackend`` built from the above.

Batched and unbatched scores agree to float32 rounding, not bit for bit: a longer (zero-padded)
reduction axis and a larger GEMM change the order of float additions inside ONNX Runtime's
kernels (see tests/unit/scorer/test_batching.py for the bound).
"""
