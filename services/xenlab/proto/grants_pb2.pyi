from xenlab.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SetupTableRequest(_message.Message):
    __slots__ = ("gfns",)
    GFNS_FIELD_NUMBER: _ClassVar[int]
    gfns: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, gfns: _Optional[_Iterable[int]] = ...) -> None: ...

class GrantTableSize(_message.Message):
    __slots__ = ("nr_frames", "max_nr_frames")
    NR_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_NR_FRAMES_FIELD_NUMBER: _ClassVar[int]
    nr_frames: int
    max_nr_frames: int
    def __init__(self, nr_frames: _Optional[int] = ..., max_nr_frames: _Optional[int] = ...) -> None: ...

class MapGrantRequest(_message.Message):
    __slots__ = ("domid", "ref", "readonly", "pte_addr")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    READONLY_FIELD_NUMBER: _ClassVar[int]
    PTE_ADDR_FIELD_NUMBER: _ClassVar[int]
    domid: int
    ref: int
    readonly: bool
    pte_addr: int
    def __init__(self, domid: _Optional[int] = ..., ref: _Optional[int] = ..., readonly: bool = ..., pte_addr: _Optional[int] = ...) -> None: ...

class GrantMapping(_message.Message):
    __slots__ = ("handle", "shm_path", "offset", "length", "readonly", "mfn")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    SHM_PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    READONLY_FIELD_NUMBER: _ClassVar[int]
    MFN_FIELD_NUMBER: _ClassVar[int]
    handle: int
    shm_path: str
    offset: int
    length: int
    readonly: bool
    mfn: int
    def __init__(self, handle: _Optional[int] = ..., shm_path: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., readonly: bool = ..., mfn: _Optional[int] = ...) -> None: ...

class UnmapGrantRequest(_message.Message):
    __slots__ = ("handle",)
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    handle: int
    def __init__(self, handle: _Optional[int] = ...) -> None: ...

class MapGrantsRequest(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[MapGrantRequest]
    def __init__(self, ops: _Optional[_Iterable[_Union[MapGrantRequest, _Mapping]]] = ...) -> None: ...

class MapGrantResult(_message.Message):
    __slots__ = ("status", "mapping", "error")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    status: int
    mapping: GrantMapping
    error: str
    def __init__(self, status: _Optional[int] = ..., mapping: _Optional[_Union[GrantMapping, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class MapGrantsReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[MapGrantResult]
    def __init__(self, results: _Optional[_Iterable[_Union[MapGrantResult, _Mapping]]] = ...) -> None: ...

class UnmapGrantsRequest(_message.Message):
    __slots__ = ("handles",)
    HANDLES_FIELD_NUMBER: _ClassVar[int]
    handles: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, handles: _Optional[_Iterable[int]] = ...) -> None: ...

class UnmapGrantsReply(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, status: _Optional[_Iterable[int]] = ...) -> None: ...

class CopyPtr(_message.Message):
    __slots__ = ("domid", "ref", "gfn", "use_gref", "offset")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    GFN_FIELD_NUMBER: _ClassVar[int]
    USE_GREF_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    domid: int
    ref: int
    gfn: int
    use_gref: bool
    offset: int
    def __init__(self, domid: _Optional[int] = ..., ref: _Optional[int] = ..., gfn: _Optional[int] = ..., use_gref: bool = ..., offset: _Optional[int] = ...) -> None: ...

class GrantCopyOp(_message.Message):
    __slots__ = ("source", "dest", "len")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEST_FIELD_NUMBER: _ClassVar[int]
    LEN_FIELD_NUMBER: _ClassVar[int]
    source: CopyPtr
    dest: CopyPtr
    len: int
    def __init__(self, source: _Optional[_Union[CopyPtr, _Mapping]] = ..., dest: _Optional[_Union[CopyPtr, _Mapping]] = ..., len: _Optional[int] = ...) -> None: ...

class GrantCopyRequest(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[GrantCopyOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[GrantCopyOp, _Mapping]]] = ...) -> None: ...

class GrantCopyResult(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, status: _Optional[_Iterable[int]] = ...) -> None: ...

class GrantTableInfo(_message.Message):
    __slots__ = ("domid", "nr_frames", "max_frames", "entries_in_use", "max_entries", "active_maps", "maptrack")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    NR_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_IN_USE_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MAPS_FIELD_NUMBER: _ClassVar[int]
    MAPTRACK_FIELD_NUMBER: _ClassVar[int]
    domid: int
    nr_frames: int
    max_frames: int
    entries_in_use: int
    max_entries: int
    active_maps: int
    maptrack: int
    def __init__(self, domid: _Optional[int] = ..., nr_frames: _Optional[int] = ..., max_frames: _Optional[int] = ..., entries_in_use: _Optional[int] = ..., max_entries: _Optional[int] = ..., active_maps: _Optional[int] = ..., maptrack: _Optional[int] = ...) -> None: ...
