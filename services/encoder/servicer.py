"""``xdrec.encoder.v1.EncoderService``: Encode and GetCatalog over the loaded vocabulary.

The servicer translates protos to ``EncodeQuery`` and ``Encoded`` back to protos; the logic is
in ``services.encoder.encoding``. It holds one ``EncoderState`` per loaded model version (the
version policy keeps the newest N, like the scorer) in an immutable mapping that a repository
poll replaces in one assignment; a request encodes for the version it pins (``model.version``)
or the newest one, and reads the mapping once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import grpc
from xdrec.common.v1 import events_pb2, tensor_pb2
from xdrec.encoder.v1 import encoder_pb2, encoder_pb2_grpc

from services.common.errors import NotFound, Unavailable
from services.common.server import Readiness
from services.common.tensors import to_proto
from services.encoder.encoding import EncodeQuery, Encoder, RecentEvent
from services.encoder.recording import EventRecorder
from services.encoder.vocab import ModelVocabulary


@dataclass(frozen=True)
class EncoderState:
    """What one loaded model version needs to answer requests; replaced as a whole."""

    encoder: Encoder
    catalog_response: encoder_pb2.GetCatalogResponse

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


def previous_version(states: Mapping[str, EncoderState], version: str) -> str:
    """The newest held version older than ``version`` ("" when none): where an unpinned caller
    may fall back once while the scorer has not loaded ``version`` yet."""
    older = [v for v in states if int(v) < int(version)]
    return max(older, key=int) if older else ""


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    """Turns raw requests into model inputs for the loaded model version."""

    def __init__(self, readiness: Readiness, recorder: EventRecorder | None = None) -> None:
        self.readiness = readiness
        self.recorder = recorder
        self.states: Mapping[str, EncoderState] = MappingProxyType({})

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

    async def Encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        states = self._loaded()
        state = select_state(request.model, states)
        query = EncodeQuery(
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
        encoded = await state.encoder.encode(query)
        return encoder_pb2.EncodeResponse(
            model=tensor_pb2.ModelRef(name=state.vocab.name, version=state.vocab.version),
            inputs=[to_proto(name, array) for name, array in encoded.inputs.items()],
            candidate_indices=to_proto("candidate_indices", encoded.candidate_indices),
            seen_indices=to_proto("seen_indices", encoded.seen_indices),
            user_status=encoded.user_status,
            unknown_candidate_ids=encoded.unknown_candidate_ids,
            source_history_length=encoded.source_history_length,
            target_history_length=encoded.target_history_length,
            previous_version=previous_version(states, state.vocab.version),
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
