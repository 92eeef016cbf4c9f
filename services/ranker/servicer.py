"""``xdrec.ranker.v1.RankerService``: Recommend = validate, encode, score, rank.

Flow of one request, all under the caller's deadline (or ``default_timeout_s``):

1. validate ``user_id``, ``k`` and the list sizes (no downstream call for a bad request);
2. Encode at the encoder: it fixes the model version, maps ids to indices and drops seen (unless
   ``include_seen``) and excluded items, so its inputs hold exactly the candidates to score;
3. fetch that version's catalogue (cached) for ids, titles and popularity;
4. UNKNOWN users, and every user while the encoder's feature store does not answer
   (``features_unavailable``, flagged FALLBACK_FEATURES_UNAVAILABLE): the popularity fallback,
   without calling the scorer; others: Predict at the scorer on exactly the encoded version
   with the encoder's inputs, unchanged;
5. the ranking operators (``--ranking-ops``, ending with top k), then ids, titles, scores and
   1-based ranks.

Around this flow (ranker resilience): the request first takes an in-flight slot
(``services.ranker.admission``; RESOURCE_EXHAUSTED when none frees within the queue budget), and
the downstream calls get the caller's deadline minus ``fallback_reserve_ms``, so that when the
encoder or the scorer is down or too slow the ranker still has time to answer by popularity,
flagged (``services.ranker.fallback``). Encode and Predict go through a circuit breaker per
dependency (``services.ranker.circuit_breaker``): one that is up but persistently slow is not
called for a cool-down and the answer is the flagged popularity one at once.

The ranker is model-agnostic: it never names a model input. In the steady state one Recommend is
one Encode and one Predict (plus a GetCatalog per new version); under load, with ``--coalesce``,
concurrent Recommends share one EncodeBatch and one Predict (``services.ranker.coalescing``).
"""

from __future__ import annotations

import contextvars
import time

import grpc
import numpy as np
from xdrec.common.v1 import events_pb2, tensor_pb2
from xdrec.encoder.v1 import encoder_pb2
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from xdrec.scorer.v1 import scorer_pb2

from services.common.errors import (
    Internal,
    InvalidArgument,
    Relayed,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.common.logs import REQUEST_ID
from services.common.rpc import deadline_of
from services.common.server import Readiness
from services.common.validation import validate_user_id
from services.ranker import fallback
from services.ranker.admission import Admission
from services.ranker.catalog import Catalog, CatalogCache
from services.ranker.circuit_breaker import CircuitBreaker, LoopLag, through
from services.ranker.coalescing import CoalesceConfig, Coalescer, EncodeOutcome
from services.ranker.config import RankerConfig
from services.ranker.downstream import (
    EncoderClient,
    ScorerClient,
    decode_downstream,
    score_output,
)
from services.ranker.health_monitor import DependencyHealth
from services.ranker.ops import Ranking, build_ranking_ops

CALLER_DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar(
    "caller_deadline", default=float("inf")
)
"""The current Recommend's deadline (``time.monotonic()``); each RPC runs in its own task."""


class VersionNotServed(Exception):
    """Predict answered NOT_FOUND for the encoded version (the scorer has not loaded it)."""

    def __init__(self, error: Relayed) -> None:
        super().__init__(error.message)
        self.error = error


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


class RankerServicer(ranker_pb2_grpc.RankerServiceServicer):
    """Orchestrates encoder and scorer and applies the ranking operators."""

    def __init__(
        self,
        config: RankerConfig,
        encoder: EncoderClient,
        scorer: ScorerClient,
        readiness: Readiness,
        health: DependencyHealth | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.health = health or DependencyHealth()
        self.config = config
        self.encoder = encoder
        self.scorer = scorer
        self.readiness = readiness
        self.catalogs = CatalogCache(self._fetch_catalog, config.catalog_cache_size)
        self.ranking = build_ranking_ops(config.ranking_ops)
        self.admission = admission or Admission(
            config.max_in_flight,
            config.queue_budget_ms / 1000.0,
            config.latency_target_ms / 1000.0,
            config.min_in_flight,
        )
        self.reserve_s = max(config.fallback_reserve_ms, 0.0) / 1000.0
        # The breakers do not blame a dependency for the ranker's own lag or full slots.
        self.loop_lag = LoopLag()  # started by the app
        self.encoder_breaker, self.scorer_breaker = (
            CircuitBreaker(
                name, config.breaker, loop_lag=self.loop_lag, saturated=self.admission.saturated
            )
            for name in ("encoder", "scorer")
        )
        coalesce = CoalesceConfig(
            enabled=config.coalesce,
            max_batch=config.coalesce_max_batch,
            max_wait_ms=config.coalesce_max_wait_ms,
            busy_batches=config.coalesce_busy_batches,
            busy_recommends=config.coalesce_busy_recommends,
        )
        self.coalescer = (
            Coalescer(
                encoder,
                scorer,
                coalesce,
                config.score_output,
                recommends_in_flight=lambda: self.admission.in_flight,
            )
            if coalesce.enabled
            else None
        )

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
        """One Encode and one Predict; at most one retry during a roll-out.

        A pinned version is served exactly or the scorer's NOT_FOUND is surfaced. An unpinned
        request is encoded for the encoder's newest version; in the short window after the
        encoder loaded a version the scorer has not loaded yet, Predict answers NOT_FOUND and the
        ranker re-encodes ONCE, pinned to the next older version the encoder reports
        (``previous_version``), which both hold (both keep the newest N). Why retry rather than
        surface the error: the services poll the repository independently, so every roll-out
        would otherwise fail the requests of that window; the retry costs one extra Encode and
        Predict only then, and needs no state in the ranker (no ListModels, no version cache).
        A second NOT_FOUND, or none to fall back to, is surfaced as NOT_FOUND.
        """
        self.readiness.require()
        validate(request, self.config)
        deadline = deadline_of(context) or time.monotonic() + self.config.default_timeout_s
        # The reserve only when the deadline leaves room for it: a caller in a hurry gets the
        # whole budget downstream and DEADLINE_EXCEEDED, not a popularity answer by default.
        remaining = deadline - time.monotonic()
        reserve = self.reserve_s if remaining > 2 * self.reserve_s else 0.0
        CALLER_DEADLINE.set(deadline)
        async with self.admission.slot(deadline - reserve):  # never queue into the reserve
            return await self._recommend(request, deadline - reserve)

    async def _recommend(
        self, request: ranker_pb2.RecommendRequest, deadline: float
    ) -> ranker_pb2.RecommendResponse:
        """The personal answer, or the popularity answer from the cached catalogue when the
        encoder cannot answer; ``deadline`` is the downstream calls' (the fallback's reserve is
        already taken off). Scorer failures are degraded inside ``_answer``, so a degrading error
        that reaches this level came from the encoder (Encode or GetCatalog)."""
        try:
            if not self.health.encoder_up and self.catalogs.latest() is not None:
                raise Unavailable("encoder: down as of the last health check")
            return await self._personal(request, deadline)
        except ServiceError as exc:
            if not self._degrades(exc):
                raise
            return self._without_encoder(request, exc)

    @staticmethod
    def _degrades(exc: BaseException) -> bool:
        """Whether a downstream failure gets the popularity answer: only while the caller is
        still waiting (``CALLER_DEADLINE``); an expired caller gets DEADLINE_EXCEEDED, not an
        answer it can no longer use."""
        return fallback.degrades(exc) and time.monotonic() < CALLER_DEADLINE.get()

    async def _personal(
        self, request: ranker_pb2.RecommendRequest, deadline: float
    ) -> ranker_pb2.RecommendResponse:
        encoded = await self._encode(request, request.model, deadline)
        try:
            return await self._answer(request, encoded, deadline)
        except VersionNotServed as exc:
            if request.model.version or not encoded.response.previous_version:
                raise exc.error from None
        model = encoded.response.model
        pinned = tensor_pb2.ModelRef(name=model.name, version=encoded.response.previous_version)
        encoded = await self._encode(request, pinned, deadline)
        try:
            return await self._answer(request, encoded, deadline)
        except VersionNotServed as exc:
            raise exc.error from None

    async def RecordEvents(
        self, request: events_pb2.RecordEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.RecordEventsResponse:
        """Forwarded unchanged to the encoder, which validates and stores (the ranker checks
        only the user id); acknowledged when the encoder acknowledged."""
        self.readiness.require()
        validate_user_id(request.user_id, self.config.max_user_id_length)
        deadline = deadline_of(context) or time.monotonic() + self.config.default_timeout_s
        return await self.encoder.record_events(request, deadline)

    async def ForgetUser(
        self, request: events_pb2.ForgetUserRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ForgetUserResponse:
        self.readiness.require()
        validate_user_id(request.user_id, self.config.max_user_id_length)
        deadline = deadline_of(context) or time.monotonic() + self.config.default_timeout_s
        return await self.encoder.forget_user(request, deadline)

    async def _encode(
        self, request: ranker_pb2.RecommendRequest, model: tensor_pb2.ModelRef, deadline: float
    ) -> EncodeOutcome:
        encode = encoder_pb2.EncodeRequest(
            user_id=request.user_id,
            domain=request.domain,
            candidate_item_ids=request.candidate_item_ids,
            recent_events=request.recent_events,
            model=model,
            exclude_item_ids=request.exclude_item_ids,
            include_seen=request.include_seen,
        )
        # The breaker judges each Recommend's wait, coalesced or not (as N plain calls would).
        if self.coalescer is not None:
            coalescer = self.coalescer
            return await through(self.encoder_breaker, lambda: coalescer.encode(encode, deadline))
        response = await through(
            self.encoder_breaker, lambda: self.encoder.encode(encode, deadline)
        )
        return EncodeOutcome(response)

    async def _answer(
        self,
        request: ranker_pb2.RecommendRequest,
        outcome: EncodeOutcome,
        deadline: float,
    ) -> ranker_pb2.RecommendResponse:
        encoded = outcome.response
        catalog = await self.catalogs.get(encoded.model.name, encoded.model.version, deadline)
        candidates = catalog.check(
            decode_downstream(encoded.candidate_indices, "encoder candidate_indices")
        )

        flag = ranker_pb2.FALLBACK_NONE
        if encoded.features_unavailable:
            flag = ranker_pb2.FALLBACK_FEATURES_UNAVAILABLE
            scores = catalog.popularity_shares(candidates)
        elif encoded.user_status == tensor_pb2.USER_STATUS_UNKNOWN:
            flag = ranker_pb2.FALLBACK_POPULARITY
            scores = catalog.popularity_shares(candidates)
        elif candidates.size == 0:
            scores = np.empty(0, dtype=np.float32)
        else:
            try:
                if not self.health.scorer_up:
                    raise Unavailable("scorer: down as of the last health check")
                scores = await self._score(outcome, candidates.size, deadline)
            except ServiceError as exc:
                if not self._degrades(exc):
                    raise
                flag = ranker_pb2.FALLBACK_SCORER_UNAVAILABLE
                fallback.record(flag)
                scores = catalog.popularity_shares(candidates)

        ranking = self.ranking.apply(Ranking(candidates, scores, request.k))
        return ranker_pb2.RecommendResponse(
            items=self._items(catalog, ranking),
            model=encoded.model,
            user_status=encoded.user_status,
            fallback=flag,
            unknown_candidate_ids=encoded.unknown_candidate_ids,
            request_id=REQUEST_ID.get(),
        )

    def _without_encoder(
        self, request: ranker_pb2.RecommendRequest, error: ServiceError
    ) -> ranker_pb2.RecommendResponse:
        """The popularity answer from the cached catalogue (the pinned version's when held,
        else the latest); the encoder's error when the ranker holds no catalogue yet."""
        pinned = request.model
        catalog = (
            self.catalogs.peek(pinned.name, pinned.version) if pinned.version else None
        ) or self.catalogs.latest()
        if catalog is None:
            raise error
        candidates, unknown = fallback.candidates_without_encoder(catalog, request)
        ranking = self.ranking.apply(
            Ranking(candidates, catalog.popularity_shares(candidates), request.k)
        )
        fallback.record(ranker_pb2.FALLBACK_ENCODER_UNAVAILABLE)
        return ranker_pb2.RecommendResponse(
            items=self._items(catalog, ranking),
            model=tensor_pb2.ModelRef(name=catalog.name, version=catalog.version),
            user_status=tensor_pb2.USER_STATUS_UNSPECIFIED,
            fallback=ranker_pb2.FALLBACK_ENCODER_UNAVAILABLE,
            unknown_candidate_ids=unknown,
            request_id=REQUEST_ID.get(),
        )

    async def _score(self, outcome: EncodeOutcome, count: int, deadline: float) -> np.ndarray:
        """Scores the encoder's inputs, unchanged, with exactly the version they were encoded
        for; the scores are aligned with ``candidate_indices`` (the encoder's contract). Inputs
        stacked by a coalesced EncodeBatch are scored by that batch's one Predict; the breaker
        judges each Recommend's wait either way."""
        try:
            if outcome.scoring is not None:
                scoring, row = outcome.scoring, outcome.row
                return await through(
                    self.scorer_breaker, lambda: scoring.scores(row, count, deadline)
                )
            encoded = outcome.response
            predict = scorer_pb2.PredictRequest(
                model=encoded.model, inputs=encoded.inputs, output_names=[self.config.score_output]
            )
            response = await through(
                self.scorer_breaker, lambda: self.scorer.predict(predict, deadline)
            )
        except Relayed as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                raise VersionNotServed(exc) from None
            raise
        scores = score_output(response, self.config.score_output)
        if scores.size != count:
            raise Internal(
                f"scorer returned {scores.size} scores for {count} candidates "
                f"(shape {list(scores.shape)})"
            )
        return scores.reshape(-1)

    @staticmethod
    def _items(catalog: Catalog, ranking: Ranking) -> list[ranker_pb2.RankedItem]:
        return [
            ranker_pb2.RankedItem(
                item_id=catalog.item_ids[index],
                title=catalog.titles[index],
                score=float(score),
                rank=rank,
            )
            for rank, (index, score) in enumerate(
                zip(ranking.indices.tolist(), ranking.scores.tolist(), strict=True), start=1
            )
        ]
