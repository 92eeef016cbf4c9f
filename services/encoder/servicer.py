"""``xdrec.encoder.v1.EncoderService``: Encode and GetCatalog over the loaded vocabulary.

The servicer translates protos to ``EncodeQuery`` and ``Encoded`` back to protos; the logic is
in ``services.encoder.encoding``. It reads the current ``EncoderState`` once per request, so a
later vocabulary reload can swap the state atomically.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from xdrec.common.v1 import tensor_pb2
from xdrec.encoder.v1 import encoder_pb2, encoder_pb2_grpc

from services.common.errors import NotFound, Unavailable
from services.common.server import Readiness
from services.common.tensors import to_proto
from services.encoder.encoding import EncodeQuery, Encoder, RecentEvent
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


def check_model(ref: tensor_pb2.ModelRef, vocab: ModelVocabulary) -> None:
    """NOT_FOUND when the request pins a model or version this encoder has not loaded."""
    if ref.name and ref.name != vocab.name:
        raise NotFound(
            f"model '{ref.name}' is not loaded by the encoder (it encodes for '{vocab.name}')"
        )
    if ref.version and ref.version != vocab.version:
        raise NotFound(
            f"model '{vocab.name}' version {ref.version} is not loaded by the encoder "
            f"(it encodes for version {vocab.version})"
        )


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    """Turns raw requests into model inputs for the loaded model version."""

    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness
        self.state: EncoderState | None = None

    def _state(self) -> EncoderState:
        self.readiness.require()
        state = self.state
        if state is None:  # ready implies loaded; this guards against wiring mistakes
            raise Unavailable("the encoder has no model version loaded")
        return state

    async def Encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        state = self._state()
        check_model(request.model, state.vocab)
        query = EncodeQuery(
            user_id=request.user_id,
            domain=request.domain,
            candidate_item_ids=list(request.candidate_item_ids),
            recent_events=[
                RecentEvent(item_id=e.item_id, domain=e.domain, timestamp=e.timestamp)
                for e in request.recent_events
            ],
        )
        encoded = state.encoder.encode(query)
        return encoder_pb2.EncodeResponse(
            model=tensor_pb2.ModelRef(name=state.vocab.name, version=state.vocab.version),
            inputs=[to_proto(name, array) for name, array in encoded.inputs.items()],
            candidate_indices=to_proto("candidate_indices", encoded.candidate_indices),
            seen_indices=to_proto("seen_indices", encoded.seen_indices),
            user_status=encoded.user_status,
            unknown_candidate_ids=encoded.unknown_candidate_ids,
            source_history_length=encoded.source_history_length,
            target_history_length=encoded.target_history_length,
        )

    async def GetCatalog(
        self, request: encoder_pb2.GetCatalogRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.GetCatalogResponse:
        state = self._state()
        check_model(request.model, state.vocab)
        state.encoder.check_domain(request.domain)
        return state.catalog_response
