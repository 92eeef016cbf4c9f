from xdrec.common.v1 import events_pb2 as _events_pb2
from xdrec.common.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeRequest(_message.Message):
    __slots__ = ("user_id", "domain", "candidate_item_ids", "recent_events", "model", "exclude_item_ids", "include_seen")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    RECENT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    domain: str
    candidate_item_ids: _containers.RepeatedScalarFieldContainer[str]
    recent_events: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Event]
    model: _tensor_pb2.ModelRef
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    include_seen: bool
    def __init__(self, user_id: _Optional[str] = ..., domain: _Optional[str] = ..., candidate_item_ids: _Optional[_Iterable[str]] = ..., recent_events: _Optional[_Iterable[_Union[_tensor_pb2.Event, _Mapping]]] = ..., model: _Optional[_Union[_tensor_pb2.ModelRef, _Mapping]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., include_seen: _Optional[bool] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("model", "inputs", "candidate_indices", "seen_indices", "user_status", "unknown_candidate_ids", "source_history_length", "target_history_length", "previous_version", "features_unavailable")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_INDICES_FIELD_NUMBER: _ClassVar[int]
    SEEN_INDICES_FIELD_NUMBER: _ClassVar[int]
    USER_STATUS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TARGET_HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    model: _tensor_pb2.ModelRef
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    candidate_indices: _tensor_pb2.Tensor
    seen_indices: _tensor_pb2.Tensor
    user_status: _tensor_pb2.UserStatus
    unknown_candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    source_history_length: int
    target_history_length: int
    previous_version: str
    features_unavailable: bool
    def __init__(self, model: _Optional[_Union[_tensor_pb2.ModelRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., candidate_indices: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., seen_indices: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., user_status: _Optional[_Union[_tensor_pb2.UserStatus, str]] = ..., unknown_candidate_ids: _Optional[_Iterable[str]] = ..., source_history_length: _Optional[int] = ..., target_history_length: _Optional[int] = ..., previous_version: _Optional[str] = ..., features_unavailable: _Optional[bool] = ...) -> None: ...

class EncodeBatchRequest(_message.Message):
    __slots__ = ("model", "requests")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    model: _tensor_pb2.ModelRef
    requests: _containers.RepeatedCompositeFieldContainer[EncodeRequest]
    def __init__(self, model: _Optional[_Union[_tensor_pb2.ModelRef, _Mapping]] = ..., requests: _Optional[_Iterable[_Union[EncodeRequest, _Mapping]]] = ...) -> None: ...

class ItemStatus(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class EncodeResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: EncodeResponse
    error: ItemStatus
    def __init__(self, response: _Optional[_Union[EncodeResponse, _Mapping]] = ..., error: _Optional[_Union[ItemStatus, _Mapping]] = ...) -> None: ...

class EncodeBatchResponse(_message.Message):
    __slots__ = ("results", "stacked", "stacked_results")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    STACKED_FIELD_NUMBER: _ClassVar[int]
    STACKED_RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EncodeResult]
    stacked: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    stacked_results: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, results: _Optional[_Iterable[_Union[EncodeResult, _Mapping]]] = ..., stacked: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., stacked_results: _Optional[_Iterable[int]] = ...) -> None: ...

class GetCatalogRequest(_message.Message):
    __slots__ = ("model", "domain")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    model: _tensor_pb2.ModelRef
    domain: str
    def __init__(self, model: _Optional[_Union[_tensor_pb2.ModelRef, _Mapping]] = ..., domain: _Optional[str] = ...) -> None: ...

class CatalogItem(_message.Message):
    __slots__ = ("item_id", "index", "title", "popularity")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    index: int
    title: str
    popularity: int
    def __init__(self, item_id: _Optional[str] = ..., index: _Optional[int] = ..., title: _Optional[str] = ..., popularity: _Optional[int] = ...) -> None: ...

class GetCatalogResponse(_message.Message):
    __slots__ = ("model", "domain", "items")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    model: _tensor_pb2.ModelRef
    domain: str
    items: _containers.RepeatedCompositeFieldContainer[CatalogItem]
    def __init__(self, model: _Optional[_Union[_tensor_pb2.ModelRef, _Mapping]] = ..., domain: _Optional[str] = ..., items: _Optional[_Iterable[_Union[CatalogItem, _Mapping]]] = ...) -> None: ...
