from xenlab.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PathRequest(_message.Message):
    __slots__ = ("path", "tx")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TX_FIELD_NUMBER: _ClassVar[int]
    path: str
    tx: int
    def __init__(self, path: _Optional[str] = ..., tx: _Optional[int] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("path", "value", "tx")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TX_FIELD_NUMBER: _ClassVar[int]
    path: str
    value: bytes
    tx: int
    def __init__(self, path: _Optional[str] = ..., value: _Optional[bytes] = ..., tx: _Optional[int] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    def __init__(self, value: _Optional[bytes] = ...) -> None: ...

class Children(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class Perm(_message.Message):
    __slots__ = ("domid", "perm")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    PERM_FIELD_NUMBER: _ClassVar[int]
    domid: int
    perm: str
    def __init__(self, domid: _Optional[int] = ..., perm: _Optional[str] = ...) -> None: ...

class Perms(_message.Message):
    __slots__ = ("perms",)
    PERMS_FIELD_NUMBER: _ClassVar[int]
    perms: _containers.RepeatedCompositeFieldContainer[Perm]
    def __init__(self, perms: _Optional[_Iterable[_Union[Perm, _Mapping]]] = ...) -> None: ...

class SetPermsRequest(_message.Message):
    __slots__ = ("path", "perms", "tx")
    PATH_FIELD_NUMBER: _ClassVar[int]
    PERMS_FIELD_NUMBER: _ClassVar[int]
    TX_FIELD_NUMBER: _ClassVar[int]
    path: str
    perms: _containers.RepeatedCompositeFieldContainer[Perm]
    tx: int
    def __init__(self, path: _Optional[str] = ..., perms: _Optional[_Iterable[_Union[Perm, _Mapping]]] = ..., tx: _Optional[int] = ...) -> None: ...

class Transaction(_message.Message):
    __slots__ = ("tx",)
    TX_FIELD_NUMBER: _ClassVar[int]
    tx: int
    def __init__(self, tx: _Optional[int] = ...) -> None: ...

class TransactionEndRequest(_message.Message):
    __slots__ = ("tx", "commit")
    TX_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    tx: int
    commit: bool
    def __init__(self, tx: _Optional[int] = ..., commit: bool = ...) -> None: ...

class WatchControl(_message.Message):
    __slots__ = ("op", "path", "token")
    class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WATCH: _ClassVar[WatchControl.Op]
        UNWATCH: _ClassVar[WatchControl.Op]
    WATCH: WatchControl.Op
    UNWATCH: WatchControl.Op
    OP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    op: WatchControl.Op
    path: str
    token: str
    def __init__(self, op: _Optional[_Union[WatchControl.Op, str]] = ..., path: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("path", "token", "ack", "error", "errno")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    path: str
    token: str
    ack: bool
    error: str
    errno: int
    def __init__(self, path: _Optional[str] = ..., token: _Optional[str] = ..., ack: bool = ..., error: _Optional[str] = ..., errno: _Optional[int] = ...) -> None: ...
