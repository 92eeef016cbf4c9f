from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_VIEW: _ClassVar[EventKind]
    EVENT_KIND_CLICK: _ClassVar[EventKind]
    EVENT_KIND_PURCHASE: _ClassVar[EventKind]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_VIEW: EventKind
EVENT_KIND_CLICK: EventKind
EVENT_KIND_PURCHASE: EventKind

class UserEvent(_message.Message):
    __slots__ = ("item_id", "domain", "timestamp", "kind", "event_id")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    domain: str
    timestamp: float
    kind: EventKind
    event_id: str
    def __init__(self, item_id: _Optional[str] = ..., domain: _Optional[str] = ..., timestamp: _Optional[float] = ..., kind: _Optional[_Union[EventKind, str]] = ..., event_id: _Optional[str] = ...) -> None: ...

class RecordEventsRequest(_message.Message):
    __slots__ = ("user_id", "events")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    events: _containers.RepeatedCompositeFieldContainer[UserEvent]
    def __init__(self, user_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[UserEvent, _Mapping]]] = ...) -> None: ...

class RecordEventsResponse(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ("deleted_events",)
    DELETED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    deleted_events: int
    def __init__(self, deleted_events: _Optional[int] = ...) -> None: ...
