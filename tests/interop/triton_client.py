"""Runs inside ``.venv-triton``: the stock ``tritonclient.grpc`` client against a v2 endpoint.

Nothing here knows about xdrec: it is what a Triton / KServe user would write. It reads the input
tensors from an ``.npz`` file, exercises the health, metadata and inference calls and prints one
JSON object on stdout for the test (tests/interop/test_tritonclient.py) to check.

    python triton_client.py --url 127.0.0.1:PORT --model NAME --inputs inputs.npz
"""

import argparse
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

INPUT_ORDER = ("src_items", "src_mask", "tgt_items", "tgt_mask", "candidates")


def error_of(call):
    """Runs ``call``; returns None on success or {"status", "message"} of the server's error."""
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": exc.message()}
    return None


def make_inputs(arrays):
    inputs = []
    for name in INPUT_ORDER:
        array = arrays[name]
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)  # gRPC: raw_input_contents
        inputs.append(tensor)
    return inputs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()

    with np.load(args.inputs) as data:
        arrays = {name: data[name] for name in INPUT_ORDER}
    client = grpcclient.InferenceServerClient(url=args.url)
    out = {
        "server_live": client.is_server_live(client_timeout=args.timeout),
        "server_ready": client.is_server_ready(client_timeout=args.timeout),
        "model_ready": client.is_model_ready(args.model, client_timeout=args.timeout),
        "unknown_model_ready": client.is_model_ready("no-such-model", client_timeout=args.timeout),
        "server_metadata": client.get_server_metadata(as_json=True, client_timeout=args.timeout),
        "model_metadata": client.get_model_metadata(
            args.model, as_json=True, client_timeout=args.timeout
        ),
    }

    result = client.infer(
        args.model,
        make_inputs(arrays),
        outputs=[grpcclient.InferRequestedOutput("scores")],
        request_id="triton-interop-1",
        client_timeout=args.timeout,
    )
    scores = result.as_numpy("scores")
    response = result.get_response(as_json=True)
    out["infer"] = {
        "scores": scores.tolist(),
        "dtype": str(scores.dtype),
        "shape": list(scores.shape),
        "model_name": response.get("model_name"),
        "model_version": response.get("model_version"),
        "id": response.get("id"),
        "outputs": [o["name"] for o in response.get("outputs", [])],
    }
    # No requested outputs: the server returns all of them.
    everything = client.infer(args.model, make_inputs(arrays), client_timeout=args.timeout)
    out["infer_all_outputs"] = [
        o["name"] for o in everything.get_response(as_json=True).get("outputs", [])
    ]

    wrong = dict(arrays, src_mask=arrays["src_mask"].astype(np.float64))
    out["wrong_dtype_error"] = error_of(
        lambda: client.infer(args.model, make_inputs(wrong), client_timeout=args.timeout)
    )
    out["unknown_model_error"] = error_of(
        lambda: client.infer("no-such-model", make_inputs(arrays), client_timeout=args.timeout)
    )
    out["unknown_output_error"] = error_of(
        lambda: client.infer(
            args.model,
            make_inputs(arrays),
            outputs=[grpcclient.InferRequestedOutput("no_such_output")],
            client_timeout=args.timeout,
        )
    )
    client.close()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
