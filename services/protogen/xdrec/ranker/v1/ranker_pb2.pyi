from xdrec.common.v1 import events_pb2 as _events_pb2
from xdrec.common.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Fallback(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_NONE: _ClassVar[Fallback]
    FALLBACK_POPULARITY: _ClassVar[Fallback]
    FALLBACK_SCORER_UNAVAILABLE: _ClassVar[Fallback]
    FALLBACK_ENCODER_UNAVAILABLE: _ClassVar[Fallback]
    FALLBACK_FEATURES_UNAVAILABLE: _ClassVar[Fallback]
FALLBACK_NONE: Fallback
FALLBACK_POPULARITY: Fallback
FALLBACK_SCORER_UNAVAILABLE: Fallback
FALLBACK_ENCODER_UNAVAILABLE: Fallback
FALLBACK_FEATURES_UNAVAILABLE: Fallback

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "candidate_item_ids", "exclude_item_ids", "recent_events", "domain", "model", "include_seen")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    RECENT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    candidate_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    recent_events: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Event]
    domain: str
    model: _tensor_pb2.ModelRef
    include_seen: bool
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., candidate_item_ids: _Optional[_Iterable[str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., recent_events: _Optional[_Iterable[_Union[_tensor_pb2.Event, _Mapping]]] = ..., domain: _Optional[str] = ..., model: _Optional[_Union[_tensor_pb2.ModelRef, _Mapping]] = ..., include_seen: _Optional[bool] = ...) -> None: ...

class RankedItem(_message.Message):
    __slots__ = ("item_id", "title", "score", "rank")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    score: float
    rank: int
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model", "user_status", "fallback", "unknown_candidate_ids", "request_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_STATUS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RankedItem]
    model: _tensor_pb2.ModelRef
    user_status: _tensor_pb2.UserStatus
    fallback: Fallback
    unknown_candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[RankedItem, _Mapping]]] = ..., model: _Optional[_Union[_tensor_pb2.ModelRef, _Mapping]] = ..., user_status: _Optional[_Union[_tensor_pb2.UserStatus, str]] = ..., fallback: _Optional[_Union[Fallback, str]] = ..., unknown_candidate_ids: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...
