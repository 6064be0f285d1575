from xenlab.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PagingInfo(_message.Message):
    __slots__ = ("domid", "mode", "pool_pages", "pool_used", "pool_mfns", "eptp", "shadow_root", "cr3")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    POOL_PAGES_FIELD_NUMBER: _ClassVar[int]
    POOL_USED_FIELD_NUMBER: _ClassVar[int]
    POOL_MFNS_FIELD_NUMBER: _ClassVar[int]
    EPTP_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ROOT_FIELD_NUMBER: _ClassVar[int]
    CR3_FIELD_NUMBER: _ClassVar[int]
    domid: int
    mode: str
    pool_pages: int
    pool_used: int
    pool_mfns: _containers.RepeatedScalarFieldContainer[int]
    eptp: int
    shadow_root: int
    cr3: int
    def __init__(self, domid: _Optional[int] = ..., mode: _Optional[str] = ..., pool_pages: _Optional[int] = ..., pool_used: _Optional[int] = ..., pool_mfns: _Optional[_Iterable[int]] = ..., eptp: _Optional[int] = ..., shadow_root: _Optional[int] = ..., cr3: _Optional[int] = ...) -> None: ...

class PageFaultRequest(_message.Message):
    __slots__ = ("domid", "va", "code", "value")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    VA_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    domid: int
    va: int
    code: int
    value: bytes
    def __init__(self, domid: _Optional[int] = ..., va: _Optional[int] = ..., code: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class PageFaultReply(_message.Message):
    __slots__ = ("outcome", "flush_tlb")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    FLUSH_TLB_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    flush_tlb: bool
    def __init__(self, outcome: _Optional[str] = ..., flush_tlb: bool = ...) -> None: ...

class SetCr3Request(_message.Message):
    __slots__ = ("domid", "gfn")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    GFN_FIELD_NUMBER: _ClassVar[int]
    domid: int
    gfn: int
    def __init__(self, domid: _Optional[int] = ..., gfn: _Optional[int] = ...) -> None: ...

class SetCr3Reply(_message.Message):
    __slots__ = ("shadow_root",)
    SHADOW_ROOT_FIELD_NUMBER: _ClassVar[int]
    shadow_root: int
    def __init__(self, shadow_root: _Optional[int] = ...) -> None: ...

class PagetableDyingRequest(_message.Message):
    __slots__ = ("domid", "gpa")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    GPA_FIELD_NUMBER: _ClassVar[int]
    domid: int
    gpa: int
    def __init__(self, domid: _Optional[int] = ..., gpa: _Optional[int] = ...) -> None: ...

class NestedFaultRequest(_message.Message):
    __slots__ = ("domid", "gpa", "write")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    GPA_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    domid: int
    gpa: int
    write: bool
    def __init__(self, domid: _Optional[int] = ..., gpa: _Optional[int] = ..., write: bool = ...) -> None: ...

class NestedFaultReply(_message.Message):
    __slots__ = ("outcome", "mfn", "flush_tlb")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MFN_FIELD_NUMBER: _ClassVar[int]
    FLUSH_TLB_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    mfn: int
    flush_tlb: bool
    def __init__(self, outcome: _Optional[str] = ..., mfn: _Optional[int] = ..., flush_tlb: bool = ...) -> None: ...

class PagingStats(_message.Message):
    __slots__ = ("domid", "mode", "hypercalls", "traps", "validations", "pool_pages", "pool_used", "counters")
    class HypercallsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DOMID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HYPERCALLS_FIELD_NUMBER: _ClassVar[int]
    TRAPS_FIELD_NUMBER: _ClassVar[int]
    VALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    POOL_PAGES_FIELD_NUMBER: _ClassVar[int]
    POOL_USED_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    domid: int
    mode: str
    hypercalls: _containers.ScalarMap[str, int]
    traps: int
    validations: int
    pool_pages: int
    pool_used: int
    counters: _containers.ScalarMap[str, int]
    def __init__(self, domid: _Optional[int] = ..., mode: _Optional[str] = ..., hypercalls: _Optional[_Mapping[str, int]] = ..., traps: _Optional[int] = ..., validations: _Optional[int] = ..., pool_pages: _Optional[int] = ..., pool_used: _Optional[int] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...
