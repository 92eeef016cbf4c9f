"""``xdrec.encoder.v1.EncoderService``: Encode and GetCatalog over the loaded vocabulary.

The servicer translates protos to ``EncodeQuery`` and ``Encoded`` back to protos; the logic is
in ``services.encoder.encoding``. It holds one ``EncoderState`` per loaded model version (the
version policy keeps the newest N, like the scorer) in an immutable mapping that a repository
poll replaces in one assignment; a request encodes for the version it pins (``model.version``)
or the newest one, and reads the mapping once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import grpc
from xdrec.common.v1 import events_pb2, tensor_pb2
from xdrec.encoder.v1 import encoder_pb2, encoder_pb2_grpc

from services.common.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    status_for,
)
from services.common.server import Readiness
from services.common.tensors import to_proto
from services.encoder.encoding import UNKNOWN, Encoded, EncodeQuery, Encoder, RecentEvent
from services.encoder.recording import EventRecorder
from services.encoder.stacking import stack_inputs
from services.encoder.vocab import ModelVocabulary

log = logging.getLogger("xdrec.encoder")

DEFAULT_MAX_BATCH_REQUESTS = 256
"""Most requests in one EncodeBatch (``EncoderConfig.max_batch_requests``)."""


@dataclass(frozen=True)
class EncoderState:
    """What one loaded model version needs to answer requests; replaced as a whole."""

    encoder: Encoder
    catalog_response: encoder_pb2.GetCatalogResponse

    @property
    def model_ref(self) -> tensor_pb2.ModelRef:
        return self.catalog_response.model

    @property
    def vocab(self) -> ModelVocabulary:
        return self.encoder.vocab

    @classmethod
    def build(cls, encoder: Encoder) -> EncoderState:
        vocab = encoder.vocab
        response = encoder_pb2.GetCatalogResponse(
            model=tensor_pb2.ModelRef(name=vocab.name, version=vocab.version),
            domain=vocab.target_domain,
            items=[
                encoder_pb2.CatalogItem(
                    item_id=e.item_id, index=e.index, title=e.title, popularity=e.popularity
                )
                for e in vocab.catalog
            ],
        )
        return cls(encoder=encoder, catalog_response=response)


def select_state(ref: tensor_pb2.ModelRef, states: Mapping[str, EncoderState]) -> EncoderState:
    """The pinned version (newest when none is pinned); NOT_FOUND for a model or version this
    encoder has not loaded."""
    newest = states[max(states, key=int)]
    name = newest.vocab.name
    if ref.name and ref.name != name:
        raise NotFound(f"model '{ref.name}' is not loaded by the encoder (it encodes for '{name}')")
    if not ref.version:
        return newest
    state = states.get(ref.version)
    if state is None:
        raise NotFound(
            f"model '{name}' version {ref.version} is not loaded by the encoder "
            f"(loaded versions: {', '.join(sorted(states, key=int))})"
        )
    return state


def query_of(request: encoder_pb2.EncodeRequest) -> EncodeQuery:
    """The plain query of an EncodeRequest."""
    return EncodeQuery(
        user_id=request.user_id,
        domain=request.domain,
        candidate_item_ids=list(request.candidate_item_ids),
        recent_events=[
            RecentEvent(item_id=e.item_id, domain=e.domain, timestamp=e.timestamp)
            for e in request.recent_events
        ],
        exclude_item_ids=list(request.exclude_item_ids),
        include_seen=request.include_seen,
    )


def needs_scoring(encoded: Encoded) -> bool:
    """Whether the ranker will send this request's inputs to the scorer: a known user, the
    store answered and at least one candidate (the others are answered by popularity or empty)."""
    return (
        encoded.user_status != UNKNOWN
        and not encoded.features_unavailable
        and encoded.candidate_indices.size > 0
    )


def previous_version(states: Mapping[str, EncoderState], version: str) -> str:
    """The newest held version older than ``version`` ("" when none): where an unpinned caller
    may fall back once while the scorer has not loaded ``version`` yet."""
    older = [v for v in states if int(v) < int(version)]
    return max(older, key=int) if older else ""


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    """Turns raw requests into model inputs for the loaded model version."""

    def swap(self, states: Mapping[str, EncoderState]) -> None:
        """Publishes a new set of loaded versions (one assignment)."""
        self.states = MappingProxyType(dict(states))

    def newest_version(self) -> str:
        states = self.states
        return max(states, key=int) if states else ""

    def _loaded(self) -> Mapping[str, EncoderState]:
        self.readiness.require()
        states = self.states
        if not states:  # ready implies loaded; this guards against wiring mistakes
            raise Unavailable("the encoder has no model version loaded")
        return states

    def __init__(
        self,
        readiness: Readiness,
        recorder: EventRecorder | None = None,
        max_batch_requests: int = DEFAULT_MAX_BATCH_REQUESTS,
    ) -> None:
        self.readiness = readiness
        self.recorder = recorder
        self.max_batch_requests = max_batch_requests
        self.states: Mapping[str, EncoderState] = MappingProxyType({})

    async def Encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        states = self._loaded()
        state = select_state(request.model, states)
        encoded = await state.encoder.encode(query_of(request))
        response = self._response(state, encoded, previous_version(states, state.vocab.version))
        response.inputs.extend(to_proto(name, array) for name, array in encoded.inputs.items())
        return response

    async def EncodeBatch(
        self, request: encoder_pb2.EncodeBatchRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeBatchResponse:
        """Every request for one version (read once), each with its own result or error; the
        inputs of those to score stacked for one Predict (``services.encoder.stacking``)."""
        states = self._loaded()
        if len(request.requests) > self.max_batch_requests:
            raise ResourceExhausted(
                f"requests: {len(request.requests)} requests exceed the limit of "
                f"{self.max_batch_requests}"
            )
        state = select_state(request.model, states)
        previous = previous_version(states, state.vocab.version)
        outcomes = await asyncio.gather(
            *(
                self._encode_item(i, r, request.model, state)
                for i, r in enumerate(request.requests)
            ),
            return_exceptions=True,
        )
        response = encoder_pb2.EncodeBatchResponse()
        rows: list[Encoded] = []
        for i, outcome in enumerate(outcomes):
            result = response.results.add()
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome  # cancellation: not one request's failure
                code, message = status_for(outcome)
                if code == grpc.StatusCode.INTERNAL:
                    log.warning("EncodeBatch requests[%d] failed", i, exc_info=outcome)
                result.error.code = code.value[0]
                result.error.message = message
                continue
            result.response.CopyFrom(self._response(state, outcome, previous))
            if needs_scoring(outcome):
                rows.append(outcome)
                response.stacked_results.append(i)
        if rows:
            response.stacked.extend(
                to_proto(name, array) for name, array in stack_inputs(rows).items()
            )
        return response

    async def _encode_item(
        self,
        index: int,
        request: encoder_pb2.EncodeRequest,
        model: tensor_pb2.ModelRef,
        state: EncoderState,
    ) -> Encoded:
        if request.HasField("model") and (
            (request.model.name and request.model.name != model.name)
            or (request.model.version and request.model.version != model.version)
        ):
            raise InvalidArgument(
                f"requests[{index}].model",
                "must be empty or equal to the batch's model "
                f"('{model.name}' version '{model.version}')",
            )
        return await state.encoder.encode(query_of(request))

    @staticmethod
    def _response(
        state: EncoderState, encoded: Encoded, previous: str
    ) -> encoder_pb2.EncodeResponse:
        """Everything of the answer but the inputs."""
        return encoder_pb2.EncodeResponse(
            model=state.model_ref,
            candidate_indices=to_proto("candidate_indices", encoded.candidate_indices),
            seen_indices=to_proto("seen_indices", encoded.seen_indices),
            user_status=encoded.user_status,
            unknown_candidate_ids=encoded.unknown_candidate_ids,
            source_history_length=encoded.source_history_length,
            target_history_length=encoded.target_history_length,
            previous_version=previous,
            features_unavailable=encoded.features_unavailable,
        )

    async def GetCatalog(
        self, request: encoder_pb2.GetCatalogRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.GetCatalogResponse:
        state = select_state(request.model, self._loaded())
        state.encoder.check_domain(request.domain)
        return state.catalog_response

    def _recorder(self) -> EventRecorder:
        if self.recorder is None:  # wiring guard: the app sets it before SERVING
            raise Unavailable("the encoder has no feature store attached")
        return self.recorder

    async def RecordEvents(
        self, request: events_pb2.RecordEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.RecordEventsResponse:
        """Events of the newest model's domains; acknowledged once the store holds them."""
        states = self._loaded()
        vocab = states[max(states, key=int)].vocab
        result = await self._recorder().record(request, (vocab.source_domain, vocab.target_domain))
        return events_pb2.RecordEventsResponse(
            accepted=result.accepted, duplicates=result.duplicates
        )

    async def ForgetUser(
        self, request: events_pb2.ForgetUserRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ForgetUserResponse:
        self.readiness.require()
        deleted = await self._recorder().forget(request.user_id)
        return events_pb2.ForgetUserResponse(deleted_events=deleted)
