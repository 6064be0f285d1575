from xenlab.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VcpuInfo(_message.Message):
    __slots__ = ("domid", "name", "vcpu", "online", "cpu", "running", "blocked", "time", "hard", "soft", "tid")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VCPU_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    SOFT_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    domid: int
    name: str
    vcpu: int
    online: bool
    cpu: int
    running: bool
    blocked: bool
    time: float
    hard: _containers.RepeatedScalarFieldContainer[int]
    soft: _containers.RepeatedScalarFieldContainer[int]
    tid: int
    def __init__(self, domid: _Optional[int] = ..., name: _Optional[str] = ..., vcpu: _Optional[int] = ..., online: bool = ..., cpu: _Optional[int] = ..., running: bool = ..., blocked: bool = ..., time: _Optional[float] = ..., hard: _Optional[_Iterable[int]] = ..., soft: _Optional[_Iterable[int]] = ..., tid: _Optional[int] = ...) -> None: ...

class VcpuList(_message.Message):
    __slots__ = ("vcpus", "nr_cpus")
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    NR_CPUS_FIELD_NUMBER: _ClassVar[int]
    vcpus: _containers.RepeatedCompositeFieldContainer[VcpuInfo]
    nr_cpus: int
    def __init__(self, vcpus: _Optional[_Iterable[_Union[VcpuInfo, _Mapping]]] = ..., nr_cpus: _Optional[int] = ...) -> None: ...

class VcpuListRequest(_message.Message):
    __slots__ = ("domains",)
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    domains: _containers.RepeatedCompositeFieldContainer[_common_pb2.DomainRef]
    def __init__(self, domains: _Optional[_Iterable[_Union[_common_pb2.DomainRef, _Mapping]]] = ...) -> None: ...

class VcpuPinRequest(_message.Message):
    __slots__ = ("domain", "vcpu", "hard", "soft")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    VCPU_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    SOFT_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    vcpu: int
    hard: str
    soft: str
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., vcpu: _Optional[int] = ..., hard: _Optional[str] = ..., soft: _Optional[str] = ...) -> None: ...

class SchedParams(_message.Message):
    __slots__ = ("domid", "name", "weight", "cap", "poolid")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    POOLID_FIELD_NUMBER: _ClassVar[int]
    domid: int
    name: str
    weight: int
    cap: int
    poolid: int
    def __init__(self, domid: _Optional[int] = ..., name: _Optional[str] = ..., weight: _Optional[int] = ..., cap: _Optional[int] = ..., poolid: _Optional[int] = ...) -> None: ...

class SchedParamsList(_message.Message):
    __slots__ = ("domains",)
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    domains: _containers.RepeatedCompositeFieldContainer[SchedParams]
    def __init__(self, domains: _Optional[_Iterable[_Union[SchedParams, _Mapping]]] = ...) -> None: ...

class SchedSetRequest(_message.Message):
    __slots__ = ("domain", "set_weight", "weight", "set_cap", "cap")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SET_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SET_CAP_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    set_weight: bool
    weight: int
    set_cap: bool
    cap: int
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., set_weight: bool = ..., weight: _Optional[int] = ..., set_cap: bool = ..., cap: _Optional[int] = ...) -> None: ...

class SchedSetReply(_message.Message):
    __slots__ = ("params", "written")
    class WrittenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    params: SchedParams
    written: _containers.ScalarMap[str, str]
    def __init__(self, params: _Optional[_Union[SchedParams, _Mapping]] = ..., written: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Cpupool(_message.Message):
    __slots__ = ("poolid", "name", "sched", "cpus", "domains")
    POOLID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHED_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    poolid: int
    name: str
    sched: str
    cpus: _containers.RepeatedScalarFieldContainer[int]
    domains: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, poolid: _Optional[int] = ..., name: _Optional[str] = ..., sched: _Optional[str] = ..., cpus: _Optional[_Iterable[int]] = ..., domains: _Optional[_Iterable[int]] = ...) -> None: ...

class CpupoolList(_message.Message):
    __slots__ = ("pools", "free_cpus", "nr_cpus")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    FREE_CPUS_FIELD_NUMBER: _ClassVar[int]
    NR_CPUS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[Cpupool]
    free_cpus: _containers.RepeatedScalarFieldContainer[int]
    nr_cpus: int
    def __init__(self, pools: _Optional[_Iterable[_Union[Cpupool, _Mapping]]] = ..., free_cpus: _Optional[_Iterable[int]] = ..., nr_cpus: _Optional[int] = ...) -> None: ...

class CpupoolCreateRequest(_message.Message):
    __slots__ = ("name", "sched", "cpus")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHED_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    sched: str
    cpus: str
    def __init__(self, name: _Optional[str] = ..., sched: _Optional[str] = ..., cpus: _Optional[str] = ...) -> None: ...

class CpupoolCpusRequest(_message.Message):
    __slots__ = ("pool", "cpus")
    POOL_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    cpus: str
    def __init__(self, pool: _Optional[str] = ..., cpus: _Optional[str] = ...) -> None: ...

class CpupoolRef(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class CpupoolMigrateRequest(_message.Message):
    __slots__ = ("domain", "pool")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    pool: str
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., pool: _Optional[str] = ...) -> None: ...

class PhysInfo(_message.Message):
    __slots__ = ("nr_cpus", "max_cpu_id", "nr_nodes", "cores_per_socket", "threads_per_core", "cpu_khz", "hw_caps", "virt_caps", "free_cpus", "scheduler", "commandline", "cc_compiler", "cc_compile_date", "nr_sockets", "version", "machine")
    NR_CPUS_FIELD_NUMBER: _ClassVar[int]
    MAX_CPU_ID_FIELD_NUMBER: _ClassVar[int]
    NR_NODES_FIELD_NUMBER: _ClassVar[int]
    CORES_PER_SOCKET_FIELD_NUMBER: _ClassVar[int]
    THREADS_PER_CORE_FIELD_NUMBER: _ClassVar[int]
    CPU_KHZ_FIELD_NUMBER: _ClassVar[int]
    HW_CAPS_FIELD_NUMBER: _ClassVar[int]
    VIRT_CAPS_FIELD_NUMBER: _ClassVar[int]
    FREE_CPUS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    COMMANDLINE_FIELD_NUMBER: _ClassVar[int]
    CC_COMPILER_FIELD_NUMBER: _ClassVar[int]
    CC_COMPILE_DATE_FIELD_NUMBER: _ClassVar[int]
    NR_SOCKETS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    nr_cpus: int
    max_cpu_id: int
    nr_nodes: int
    cores_per_socket: int
    threads_per_core: int
    cpu_khz: int
    hw_caps: _containers.RepeatedScalarFieldContainer[int]
    virt_caps: str
    free_cpus: int
    scheduler: str
    commandline: str
    cc_compiler: str
    cc_compile_date: str
    nr_sockets: int
    version: str
    machine: str
    def __init__(self, nr_cpus: _Optional[int] = ..., max_cpu_id: _Optional[int] = ..., nr_nodes: _Optional[int] = ..., cores_per_socket: _Optional[int] = ..., threads_per_core: _Optional[int] = ..., cpu_khz: _Optional[int] = ..., hw_caps: _Optional[_Iterable[int]] = ..., virt_caps: _Optional[str] = ..., free_cpus: _Optional[int] = ..., scheduler: _Optional[str] = ..., commandline: _Optional[str] = ..., cc_compiler: _Optional[str] = ..., cc_compile_date: _Optional[str] = ..., nr_sockets: _Optional[int] = ..., version: _Optional[str] = ..., machine: _Optional[str] = ...) -> None: ...

class ReadConsoleRequest(_message.Message):
    __slots__ = ("clear",)
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    clear: bool
    def __init__(self, clear: bool = ...) -> None: ...

class ConsoleLines(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lines: _Optional[_Iterable[str]] = ...) -> None: ...

class RenameRequest(_message.Message):
    __slots__ = ("domain", "name")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    name: str
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...
