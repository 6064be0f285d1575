from xenlab.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Reservation(_message.Message):
    __slots__ = ("domid", "current_pages", "max_pages", "target_pages")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_PAGES_FIELD_NUMBER: _ClassVar[int]
    TARGET_PAGES_FIELD_NUMBER: _ClassVar[int]
    domid: int
    current_pages: int
    max_pages: int
    target_pages: int
    def __init__(self, domid: _Optional[int] = ..., current_pages: _Optional[int] = ..., max_pages: _Optional[int] = ..., target_pages: _Optional[int] = ...) -> None: ...

class IncreaseReservationRequest(_message.Message):
    __slots__ = ("domid", "nr_pages", "gfns")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    GFNS_FIELD_NUMBER: _ClassVar[int]
    domid: int
    nr_pages: int
    gfns: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, domid: _Optional[int] = ..., nr_pages: _Optional[int] = ..., gfns: _Optional[_Iterable[int]] = ...) -> None: ...

class DecreaseReservationRequest(_message.Message):
    __slots__ = ("domid", "gfns")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    GFNS_FIELD_NUMBER: _ClassVar[int]
    domid: int
    gfns: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, domid: _Optional[int] = ..., gfns: _Optional[_Iterable[int]] = ...) -> None: ...

class ReservationResult(_message.Message):
    __slots__ = ("gfns", "reservation")
    GFNS_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    gfns: _containers.RepeatedScalarFieldContainer[int]
    reservation: Reservation
    def __init__(self, gfns: _Optional[_Iterable[int]] = ..., reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class MemSetRequest(_message.Message):
    __slots__ = ("domain", "kb")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    KB_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    kb: int
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., kb: _Optional[int] = ...) -> None: ...

class MemoryMap(_message.Message):
    __slots__ = ("domid", "shm_path", "segment_pages", "shared_info_offset", "first_frame_offset", "populated", "mfns")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    SHM_PATH_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_PAGES_FIELD_NUMBER: _ClassVar[int]
    SHARED_INFO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    POPULATED_FIELD_NUMBER: _ClassVar[int]
    MFNS_FIELD_NUMBER: _ClassVar[int]
    domid: int
    shm_path: str
    segment_pages: int
    shared_info_offset: int
    first_frame_offset: int
    populated: _containers.RepeatedScalarFieldContainer[int]
    mfns: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, domid: _Optional[int] = ..., shm_path: _Optional[str] = ..., segment_pages: _Optional[int] = ..., shared_info_offset: _Optional[int] = ..., first_frame_offset: _Optional[int] = ..., populated: _Optional[_Iterable[int]] = ..., mfns: _Optional[_Iterable[int]] = ...) -> None: ...

class MemoryMapRequest(_message.Message):
    __slots__ = ("domain", "with_populated")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    WITH_POPULATED_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    with_populated: bool
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., with_populated: bool = ...) -> None: ...

class MmuUpdate(_message.Message):
    __slots__ = ("ptr", "val")
    PTR_FIELD_NUMBER: _ClassVar[int]
    VAL_FIELD_NUMBER: _ClassVar[int]
    ptr: int
    val: int
    def __init__(self, ptr: _Optional[int] = ..., val: _Optional[int] = ...) -> None: ...

class MmuUpdateRequest(_message.Message):
    __slots__ = ("updates",)
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[MmuUpdate]
    def __init__(self, updates: _Optional[_Iterable[_Union[MmuUpdate, _Mapping]]] = ...) -> None: ...

class MmuUpdateResult(_message.Message):
    __slots__ = ("done", "status")
    DONE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    done: int
    status: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, done: _Optional[int] = ..., status: _Optional[_Iterable[int]] = ...) -> None: ...

class MmuextOp(_message.Message):
    __slots__ = ("cmd", "arg")
    CMD_FIELD_NUMBER: _ClassVar[int]
    ARG_FIELD_NUMBER: _ClassVar[int]
    cmd: int
    arg: int
    def __init__(self, cmd: _Optional[int] = ..., arg: _Optional[int] = ...) -> None: ...

class MachineToPhysRequest(_message.Message):
    __slots__ = ("mfns",)
    MFNS_FIELD_NUMBER: _ClassVar[int]
    mfns: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, mfns: _Optional[_Iterable[int]] = ...) -> None: ...

class MachineToPhysResult(_message.Message):
    __slots__ = ("gfns",)
    GFNS_FIELD_NUMBER: _ClassVar[int]
    gfns: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, gfns: _Optional[_Iterable[int]] = ...) -> None: ...

class MmuextRequest(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[MmuextOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[MmuextOp, _Mapping]]] = ...) -> None: ...
