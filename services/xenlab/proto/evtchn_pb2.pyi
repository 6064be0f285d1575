from xenlab.proto import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Port(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: int
    def __init__(self, port: _Optional[int] = ...) -> None: ...

class AllocUnboundRequest(_message.Message):
    __slots__ = ("dom", "remote_dom")
    DOM_FIELD_NUMBER: _ClassVar[int]
    REMOTE_DOM_FIELD_NUMBER: _ClassVar[int]
    dom: int
    remote_dom: int
    def __init__(self, dom: _Optional[int] = ..., remote_dom: _Optional[int] = ...) -> None: ...

class BindInterdomainRequest(_message.Message):
    __slots__ = ("remote_dom", "remote_port")
    REMOTE_DOM_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    remote_dom: int
    remote_port: int
    def __init__(self, remote_dom: _Optional[int] = ..., remote_port: _Optional[int] = ...) -> None: ...

class BindVirqRequest(_message.Message):
    __slots__ = ("virq", "vcpu")
    VIRQ_FIELD_NUMBER: _ClassVar[int]
    VCPU_FIELD_NUMBER: _ClassVar[int]
    virq: int
    vcpu: int
    def __init__(self, virq: _Optional[int] = ..., vcpu: _Optional[int] = ...) -> None: ...

class BindIpiRequest(_message.Message):
    __slots__ = ("vcpu",)
    VCPU_FIELD_NUMBER: _ClassVar[int]
    vcpu: int
    def __init__(self, vcpu: _Optional[int] = ...) -> None: ...

class BindPirqRequest(_message.Message):
    __slots__ = ("pirq",)
    PIRQ_FIELD_NUMBER: _ClassVar[int]
    pirq: int
    def __init__(self, pirq: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("dom", "port")
    DOM_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    dom: int
    port: int
    def __init__(self, dom: _Optional[int] = ..., port: _Optional[int] = ...) -> None: ...

class ChannelStatus(_message.Message):
    __slots__ = ("state", "vcpu", "remote_dom", "remote_port", "pirq", "virq", "pending", "masked")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CLOSED: _ClassVar[ChannelStatus.State]
        UNBOUND: _ClassVar[ChannelStatus.State]
        INTERDOMAIN: _ClassVar[ChannelStatus.State]
        PIRQ: _ClassVar[ChannelStatus.State]
        VIRQ: _ClassVar[ChannelStatus.State]
        IPI: _ClassVar[ChannelStatus.State]
    CLOSED: ChannelStatus.State
    UNBOUND: ChannelStatus.State
    INTERDOMAIN: ChannelStatus.State
    PIRQ: ChannelStatus.State
    VIRQ: ChannelStatus.State
    IPI: ChannelStatus.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    VCPU_FIELD_NUMBER: _ClassVar[int]
    REMOTE_DOM_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    PIRQ_FIELD_NUMBER: _ClassVar[int]
    VIRQ_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    state: ChannelStatus.State
    vcpu: int
    remote_dom: int
    remote_port: int
    pirq: int
    virq: int
    pending: bool
    masked: bool
    def __init__(self, state: _Optional[_Union[ChannelStatus.State, str]] = ..., vcpu: _Optional[int] = ..., remote_dom: _Optional[int] = ..., remote_port: _Optional[int] = ..., pirq: _Optional[int] = ..., virq: _Optional[int] = ..., pending: bool = ..., masked: bool = ...) -> None: ...

class BindVcpuRequest(_message.Message):
    __slots__ = ("port", "vcpu")
    PORT_FIELD_NUMBER: _ClassVar[int]
    VCPU_FIELD_NUMBER: _ClassVar[int]
    port: int
    vcpu: int
    def __init__(self, port: _Optional[int] = ..., vcpu: _Optional[int] = ...) -> None: ...

class SetTimerRequest(_message.Message):
    __slots__ = ("vcpu", "timeout")
    VCPU_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    vcpu: int
    timeout: float
    def __init__(self, vcpu: _Optional[int] = ..., timeout: _Optional[float] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("dom",)
    DOM_FIELD_NUMBER: _ClassVar[int]
    dom: int
    def __init__(self, dom: _Optional[int] = ...) -> None: ...

class Upcall(_message.Message):
    __slots__ = ("vcpu",)
    VCPU_FIELD_NUMBER: _ClassVar[int]
    vcpu: int
    def __init__(self, vcpu: _Optional[int] = ...) -> None: ...

class DoorbellInfo(_message.Message):
    __slots__ = ("path", "shared_info_shm", "shared_info_offset", "max_ports")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHARED_INFO_SHM_FIELD_NUMBER: _ClassVar[int]
    SHARED_INFO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_PORTS_FIELD_NUMBER: _ClassVar[int]
    path: str
    shared_info_shm: str
    shared_info_offset: int
    max_ports: int
    def __init__(self, path: _Optional[str] = ..., shared_info_shm: _Optional[str] = ..., shared_info_offset: _Optional[int] = ..., max_ports: _Optional[int] = ...) -> None: ...
