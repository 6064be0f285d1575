from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DomainRef(_message.Message):
    __slots__ = ("domid", "name")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    domid: int
    name: str
    def __init__(self, domid: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...
