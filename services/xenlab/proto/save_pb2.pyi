from xenlab.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SaveControl(_message.Message):
    __slots__ = ("domain", "checkpoint", "paused", "commit", "live")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    checkpoint: bool
    paused: bool
    commit: bool
    live: bool
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., checkpoint: bool = ..., paused: bool = ..., commit: bool = ..., live: bool = ...) -> None: ...

class SaveChunk(_message.Message):
    __slots__ = ("data", "image_done", "finished", "domid", "pages", "suspended_s", "round_pages")
    DATA_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DONE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    DOMID_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_S_FIELD_NUMBER: _ClassVar[int]
    ROUND_PAGES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    image_done: bool
    finished: bool
    domid: int
    pages: int
    suspended_s: float
    round_pages: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, data: _Optional[bytes] = ..., image_done: bool = ..., finished: bool = ..., domid: _Optional[int] = ..., pages: _Optional[int] = ..., suspended_s: _Optional[float] = ..., round_pages: _Optional[_Iterable[int]] = ...) -> None: ...

class RestoreChunk(_message.Message):
    __slots__ = ("paused", "unmonitored", "data")
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    UNMONITORED_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    paused: bool
    unmonitored: bool
    data: bytes
    def __init__(self, paused: bool = ..., unmonitored: bool = ..., data: _Optional[bytes] = ...) -> None: ...

class RestoreReply(_message.Message):
    __slots__ = ("domid", "name", "pages")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    domid: int
    name: str
    pages: int
    def __init__(self, domid: _Optional[int] = ..., name: _Optional[str] = ..., pages: _Optional[int] = ...) -> None: ...

class SchedSuspendRequest(_message.Message):
    __slots__ = ("record_gfn",)
    RECORD_GFN_FIELD_NUMBER: _ClassVar[int]
    record_gfn: int
    def __init__(self, record_gfn: _Optional[int] = ...) -> None: ...

class SchedSuspendReply(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: int
    def __init__(self, cancelled: _Optional[int] = ...) -> None: ...
