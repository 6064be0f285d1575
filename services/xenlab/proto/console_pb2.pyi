from xenlab.proto import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConsoleWriteRequest(_message.Message):
    __slots__ = ("domain", "data")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    data: bytes
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ConsoleWriteReply(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class TriggerRequest(_message.Message):
    __slots__ = ("domain", "trigger", "vcpu")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    VCPU_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    trigger: str
    vcpu: int
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., trigger: _Optional[str] = ..., vcpu: _Optional[int] = ...) -> None: ...
