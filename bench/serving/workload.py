"""The benchmark's requests: real users of a features.tsv snapshot, encoded as the encoder does.

Why real users and pre-serialised bytes: the request shapes (history lengths, warm vs cold-start)
are what the scorer sees in production, and serialising every request once up front keeps the
load generator cheap on a machine it shares with the server. Every system gets the same bytes in
the same order.
"""

from __future__ import annotations

import asyncio
import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Workload:
    """Encoded requests (batch 1 each) and how they were made."""

    model: str
    version: str
    inputs: list[dict[str, np.ndarray]]
    users: list[str]
    kinds: Counter
    candidates: int
    repeats: bool = False  # candidates drawn with replacement (more asked than the catalogue)

    def describe(self) -> dict[str, Any]:
        src = [int(x["src_mask"].sum()) for x in self.inputs]
        tgt = [int(x["tgt_mask"].sum()) for x in self.inputs]
        return {
            "model": self.model,
            "version": self.version,
            "requests": len(self.inputs),
            "batch": 1,
            "candidates_per_request": self.candidates,
            "candidates_with_replacement": self.repeats,
            "user_kinds": dict(self.kinds),
            "source_history_median": float(np.median(src)),
            "target_history_median": float(np.median(tgt)),
            "source_history_max": max(src),
            "target_history_max": max(tgt),
        }


def feature_users(path: Path) -> list[str]:
    """User ids of a features.tsv snapshot, in first-seen order."""
    seen: dict[str, None] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip() for h in next(reader)]
        column = header.index("user_id")
        for row in reader:
            if len(row) > column:
                seen.setdefault(row[column], None)
    return list(seen)


def build_workload(
    repo: Path,
    model: str,
    features: Path,
    *,
    users: int,
    candidates: int,
    seed: int,
    allow_repeats: bool = False,
) -> Workload:
    """Real users encoded exactly as the encoder does for the ranker (one user per request).

    ``allow_repeats``: when more candidates are asked for than the catalogue holds, draw them
    with replacement (the model scores each slot alike) instead of capping at the catalogue."""
    from services.common.model_repository import ModelRepository
    from services.encoder.encoding import WARM, EncodeQuery, Encoder, EncoderLimits
    from services.encoder.memory_store import InMemoryFeatureStore
    from services.encoder.vocab import ModelVocabulary

    version = ModelRepository(repo).open(model)
    vocab = ModelVocabulary.load(version)
    encoder = Encoder(vocab, InMemoryFeatureStore.from_tsv(features), EncoderLimits())
    rng = np.random.default_rng(seed)
    catalog = [entry.item_id for entry in vocab.catalog]
    repeats = allow_repeats and candidates > len(catalog)
    per_request = candidates if repeats else min(candidates, len(catalog))
    pool = feature_users(features)
    rng.shuffle(pool)
    inputs, chosen, kinds = [], [], Counter()
    for user in pool:
        if len(inputs) >= users:
            break
        items = list(rng.choice(catalog, size=per_request, replace=repeats))
        # include_seen keeps exactly ``per_request`` candidates per request (fixed-size payloads)
        query = EncodeQuery(user_id=user, candidate_item_ids=items, include_seen=True)
        encoded = asyncio.run(encoder.encode(query, now=0.0))
        if encoded.source_history_length + encoded.target_history_length == 0:
            continue  # unknown users never reach the scorer (the ranker's popularity fallback)
        inputs.append({k: np.ascontiguousarray(v) for k, v in encoded.inputs.items()})
        chosen.append(user)
        kinds["warm" if encoded.user_status == WARM else "cold_start"] += 1
    if not inputs:
        raise ValueError(f"{features}: no user with a history known to {model}")
    return Workload(model, version.version, inputs, chosen, kinds, per_request, repeats)


def predict_payloads(workload: Workload) -> list[bytes]:
    from xdrec.common.v1 import tensor_pb2
    from xdrec.scorer.v1 import scorer_pb2

    from services.common.tensors import to_proto

    return [
        scorer_pb2.PredictRequest(
            model=tensor_pb2.ModelRef(name=workload.model),
            inputs=[to_proto(name, array) for name, array in inputs.items()],
            output_names=["scores"],
        ).SerializeToString()
        for inputs in workload.inputs
    ]


V2_TYPES = {np.dtype("int64"): "INT64", np.dtype("float32"): "FP32"}


def v2_payloads(workload: Workload) -> list[bytes]:
    from xdrec.kserve.v2 import grpc_service_pb2 as v2

    payloads = []
    for inputs in workload.inputs:
        request = v2.ModelInferRequest(model_name=workload.model)
        for name, array in inputs.items():
            request.inputs.add(name=name, datatype=V2_TYPES[array.dtype], shape=list(array.shape))
            request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
        request.outputs.add(name="scores")
        payloads.append(request.SerializeToString())
    return payloads


def decode_predict(data: bytes) -> np.ndarray:
    from xdrec.scorer.v1 import scorer_pb2

    reply = scorer_pb2.PredictResponse.FromString(data)
    out = next(t for t in reply.outputs if t.name == "scores")
    return np.frombuffer(out.data, dtype="<f4").reshape(tuple(out.shape))


def decode_v2(data: bytes) -> np.ndarray:
    from xdrec.kserve.v2 import grpc_service_pb2 as v2

    reply = v2.ModelInferResponse.FromString(data)
    for i, out in enumerate(reply.outputs):
        if out.name != "scores":
            continue
        if reply.raw_output_contents:
            values = np.frombuffer(reply.raw_output_contents[i], dtype="<f4")
        else:
            values = np.asarray(out.contents.fp32_contents, dtype=np.float32)
        return values.reshape(tuple(out.shape))
    raise ValueError("no 'scores' output in the response")
