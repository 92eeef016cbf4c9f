"""``xdrec.ranker.v1.RankerService``: Recommend = validate, encode, filter, score, top-k.

Flow of one request, all under the caller's deadline (or ``default_timeout_s``):

1. validate ``user_id``, ``k`` and the list sizes (no downstream call for a bad request);
2. Encode at the encoder, which fixes the model version for the whole request (during a roll-out
   the encoder may hold a version the scorer has not loaded yet, or the reverse: unless the
   caller pinned a version, the ranker then re-encodes pinned to the newest version the scorer
   serves - both hold the newest N - and remembers the scorer's versions for a health interval);
3. fetch that version's catalogue (cached);
4. drop seen (unless ``include_seen``) and excluded items from the candidates *before* scoring;
5. UNKNOWN users: the popularity fallback, without calling the scorer; others: Predict at the
   scorer on exactly the encoded version;
6. top k, with ids, titles, scores and 1-based ranks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
import numpy as np
from xdrec.common.v1 import tensor_pb2
from xdrec.encoder.v1 import encoder_pb2
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from xdrec.scorer.v1 import scorer_pb2

from services.common.errors import Internal, InvalidArgument, Relayed, ResourceExhausted
from services.common.logs import REQUEST_ID
from services.common.rpc import deadline_of
from services.common.server import Readiness
from services.common.tensors import TensorError, from_proto, to_proto
from services.common.validation import validate_user_id
from services.ranker.catalog import Catalog, CatalogCache
from services.ranker.config import RankerConfig
from services.ranker.downstream import EncoderClient, ScorerClient
from services.ranker.policy import filter_candidates, popularity_scores, top_k

CANDIDATES = "candidates"


def validate(request: ranker_pb2.RecommendRequest, config: RankerConfig) -> None:
    """Checks the request before any downstream call; the error names the field."""
    validate_user_id(request.user_id, config.max_user_id_length)
    if request.k < 1:
        raise InvalidArgument("k", f"must be between 1 and {config.max_k}, got {request.k}")
    if request.k > config.max_k:
        raise ResourceExhausted(f"k: {request.k} exceeds the limit of {config.max_k}")
    if len(request.candidate_item_ids) > config.max_candidates:
        raise ResourceExhausted(
            f"candidate_item_ids: {len(request.candidate_item_ids)} candidates exceed the limit "
            f"of {config.max_candidates}"
        )
    if len(request.exclude_item_ids) > config.max_excluded:
        raise ResourceExhausted(
            f"exclude_item_ids: {len(request.exclude_item_ids)} ids exceed the limit of "
            f"{config.max_excluded}"
        )


def decode_downstream(tensor: tensor_pb2.Tensor, what: str) -> np.ndarray:
    """Decodes a tensor a downstream service sent; a malformed one is an INTERNAL error."""
    try:
        return from_proto(tensor)
    except TensorError as exc:
        raise Internal(f"{what}: {exc}") from None


class RankerServicer(ranker_pb2_grpc.RankerServiceServicer):
    """Orchestrates encoder and scorer and applies the ranking policy."""

    def __init__(
        self,
        config: RankerConfig,
        encoder: EncoderClient,
        scorer: ScorerClient,
        readiness: Readiness,
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.scorer = scorer
        self.readiness = readiness
        self.catalogs = CatalogCache(self._fetch_catalog, config.catalog_cache_size)
        self._scorer_versions: dict[str, tuple[float, tuple[str, ...]]] = {}

    async def _fetch_catalog(
        self, name: str, version: str, deadline: float
    ) -> encoder_pb2.GetCatalogResponse:
        request = encoder_pb2.GetCatalogRequest(
            model=tensor_pb2.ModelRef(name=name, version=version)
        )
        return await self.encoder.catalog(request, deadline)

    async def Recommend(
        self, request: ranker_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> ranker_pb2.RecommendResponse:
        self.readiness.require()
        validate(request, self.config)
        deadline = deadline_of(context) or time.monotonic() + self.config.default_timeout_s

        encoded = await self._encode(request, request.model, deadline)
        if request.model.version:  # the caller pinned a version: exactly that one
            return await self._answer(request, encoded, deadline)
        known = self._known_scorer_versions(encoded.model.name)
        if known and encoded.model.version not in known:
            encoded = await self._encode(request, self._pin(encoded, known), deadline)
            return await self._answer(request, encoded, deadline)
        try:
            return await self._answer(request, encoded, deadline)
        except Relayed as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise
            known = await self._refresh_scorer_versions(encoded.model.name, deadline)
            if not known or encoded.model.version in known:
                raise
            encoded = await self._encode(request, self._pin(encoded, known), deadline)
            return await self._answer(request, encoded, deadline)

    async def _encode(
        self, request: ranker_pb2.RecommendRequest, model: tensor_pb2.ModelRef, deadline: float
    ) -> encoder_pb2.EncodeResponse:
        return await self.encoder.encode(
            encoder_pb2.EncodeRequest(
                user_id=request.user_id,
                domain=request.domain,
                candidate_item_ids=request.candidate_item_ids,
                recent_events=request.recent_events,
                model=model,
            ),
            deadline,
        )

    @staticmethod
    def _pin(encoded: encoder_pb2.EncodeResponse, versions: Sequence[str]) -> tensor_pb2.ModelRef:
        return tensor_pb2.ModelRef(name=encoded.model.name, version=max(versions, key=int))

    def _known_scorer_versions(self, name: str) -> tuple[str, ...]:
        entry = self._scorer_versions.get(name)
        if entry is None or time.monotonic() - entry[0] > self.config.health_interval_s:
            return ()
        return entry[1]

    async def _refresh_scorer_versions(self, name: str, deadline: float) -> tuple[str, ...]:
        listed = await self.scorer.list_models(deadline)
        versions = tuple(m.model.version for m in listed.models if m.model.name == name)
        self._scorer_versions[name] = (time.monotonic(), versions)
        return versions

    async def _answer(
        self,
        request: ranker_pb2.RecommendRequest,
        encoded: encoder_pb2.EncodeResponse,
        deadline: float,
    ) -> ranker_pb2.RecommendResponse:
        catalog = await self.catalogs.get(encoded.model.name, encoded.model.version, deadline)
        candidates = catalog.known(
            decode_downstream(encoded.candidate_indices, "encoder candidates")
        )
        candidates = filter_candidates(
            candidates,
            decode_downstream(encoded.seen_indices, "encoder seen_indices"),
            catalog.indices(request.exclude_item_ids),
            include_seen=request.include_seen,
        )

        fallback = ranker_pb2.FALLBACK_NONE
        if encoded.user_status == tensor_pb2.USER_STATUS_UNKNOWN:
            fallback = ranker_pb2.FALLBACK_POPULARITY
            scores = popularity_scores(catalog.share, candidates)
        elif candidates.size == 0:
            scores = np.empty(0, dtype=np.float32)
        else:
            scores = await self._score(encoded, candidates, deadline)

        return ranker_pb2.RecommendResponse(
            items=self._items(catalog, candidates, scores, request.k),
            model=encoded.model,
            user_status=encoded.user_status,
            fallback=fallback,
            unknown_candidate_ids=encoded.unknown_candidate_ids,
            request_id=REQUEST_ID.get(),
        )

    async def _score(
        self, encoded: encoder_pb2.EncodeResponse, candidates: np.ndarray, deadline: float
    ) -> np.ndarray:
        """Scores the filtered candidates with exactly the version the encoder encoded for."""
        inputs = [t for t in encoded.inputs if t.name != CANDIDATES]
        inputs.append(to_proto(CANDIDATES, candidates.reshape(1, -1)))
        response = await self.scorer.predict(
            scorer_pb2.PredictRequest(
                model=encoded.model, inputs=inputs, output_names=[self.config.score_output]
            ),
            deadline,
        )
        outputs = {t.name: t for t in response.outputs}
        if self.config.score_output not in outputs:
            raise Internal(f"scorer returned no '{self.config.score_output}' output")
        scores = decode_downstream(outputs[self.config.score_output], "scorer output")
        if scores.size != candidates.size:
            raise Internal(
                f"scorer returned {scores.size} scores for {candidates.size} candidates "
                f"(shape {list(scores.shape)})"
            )
        return scores.reshape(-1)

    @staticmethod
    def _items(
        catalog: Catalog, candidates: np.ndarray, scores: np.ndarray, k: int
    ) -> list[ranker_pb2.RankedItem]:
        items = []
        for rank, position in enumerate(top_k(scores, k), start=1):
            index = int(candidates[position])
            items.append(
                ranker_pb2.RankedItem(
                    item_id=catalog.item_ids[index],
                    title=catalog.titles[index],
                    score=float(scores[position]),
                    rank=rank,
                )
            )
        return items
