from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QdiscRequest(_message.Message):
    __slots__ = ("op", "dev", "args")
    OP_FIELD_NUMBER: _ClassVar[int]
    DEV_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    op: str
    dev: str
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, op: _Optional[str] = ..., dev: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ...) -> None: ...

class QdiscInfo(_message.Message):
    __slots__ = ("dev", "line", "stats", "options")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DEV_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    dev: str
    line: str
    stats: _containers.ScalarMap[str, int]
    options: str
    def __init__(self, dev: _Optional[str] = ..., line: _Optional[str] = ..., stats: _Optional[_Mapping[str, int]] = ..., options: _Optional[str] = ...) -> None: ...

class QdiscReply(_message.Message):
    __slots__ = ("qdiscs",)
    QDISCS_FIELD_NUMBER: _ClassVar[int]
    qdiscs: _containers.RepeatedCompositeFieldContainer[QdiscInfo]
    def __init__(self, qdiscs: _Optional[_Iterable[_Union[QdiscInfo, _Mapping]]] = ...) -> None: ...
