from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeRequest(_message.Message):
    __slots__ = ("topics", "no_retained")
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    NO_RETAINED_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    no_retained: bool
    def __init__(self, topics: _Optional[_Iterable[str]] = ..., no_retained: bool = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("topic", "payload", "retained")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RETAINED_FIELD_NUMBER: _ClassVar[int]
    topic: str
    payload: bytes
    retained: bool
    def __init__(self, topic: _Optional[str] = ..., payload: _Optional[bytes] = ..., retained: bool = ...) -> None: ...
