from xenlab.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VifSpec(_message.Message):
    __slots__ = ("devid", "mac", "bridge", "ip", "vifname", "rate", "mtu", "backend", "script", "model", "vlan")
    DEVID_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    VIFNAME_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    devid: int
    mac: str
    bridge: str
    ip: str
    vifname: str
    rate: str
    mtu: int
    backend: str
    script: str
    model: str
    vlan: str
    def __init__(self, devid: _Optional[int] = ..., mac: _Optional[str] = ..., bridge: _Optional[str] = ..., ip: _Optional[str] = ..., vifname: _Optional[str] = ..., rate: _Optional[str] = ..., mtu: _Optional[int] = ..., backend: _Optional[str] = ..., script: _Optional[str] = ..., model: _Optional[str] = ..., vlan: _Optional[str] = ...) -> None: ...

class DomainSpec(_message.Message):
    __slots__ = ("name", "memory_mb", "maxmem_mb", "vcpus", "maxvcpus", "on_poweroff", "on_reboot", "on_crash", "vif", "uuid", "launcher", "extra", "config_text", "on_watchdog", "type", "hap", "shadow_memory_mb")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MAXMEM_MB_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MAXVCPUS_FIELD_NUMBER: _ClassVar[int]
    ON_POWEROFF_FIELD_NUMBER: _ClassVar[int]
    ON_REBOOT_FIELD_NUMBER: _ClassVar[int]
    ON_CRASH_FIELD_NUMBER: _ClassVar[int]
    VIF_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    CONFIG_TEXT_FIELD_NUMBER: _ClassVar[int]
    ON_WATCHDOG_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    HAP_FIELD_NUMBER: _ClassVar[int]
    SHADOW_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    name: str
    memory_mb: int
    maxmem_mb: int
    vcpus: int
    maxvcpus: int
    on_poweroff: str
    on_reboot: str
    on_crash: str
    vif: _containers.RepeatedCompositeFieldContainer[VifSpec]
    uuid: str
    launcher: str
    extra: _containers.ScalarMap[str, str]
    config_text: str
    on_watchdog: str
    type: str
    hap: bool
    shadow_memory_mb: int
    def __init__(self, name: _Optional[str] = ..., memory_mb: _Optional[int] = ..., maxmem_mb: _Optional[int] = ..., vcpus: _Optional[int] = ..., maxvcpus: _Optional[int] = ..., on_poweroff: _Optional[str] = ..., on_reboot: _Optional[str] = ..., on_crash: _Optional[str] = ..., vif: _Optional[_Iterable[_Union[VifSpec, _Mapping]]] = ..., uuid: _Optional[str] = ..., launcher: _Optional[str] = ..., extra: _Optional[_Mapping[str, str]] = ..., config_text: _Optional[str] = ..., on_watchdog: _Optional[str] = ..., type: _Optional[str] = ..., hap: bool = ..., shadow_memory_mb: _Optional[int] = ...) -> None: ...

class CreateDomainRequest(_message.Message):
    __slots__ = ("spec", "paused")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    spec: DomainSpec
    paused: bool
    def __init__(self, spec: _Optional[_Union[DomainSpec, _Mapping]] = ..., paused: bool = ...) -> None: ...

class DomainInfo(_message.Message):
    __slots__ = ("domid", "name", "uuid", "state", "memory_kb", "maxmem_kb", "vcpus", "cpu_time", "privileged", "shutdown_reason", "pid", "launcher", "spec", "target_kb", "paging_mode", "paging_pool_kb")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_KB_FIELD_NUMBER: _ClassVar[int]
    MAXMEM_KB_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_REASON_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TARGET_KB_FIELD_NUMBER: _ClassVar[int]
    PAGING_MODE_FIELD_NUMBER: _ClassVar[int]
    PAGING_POOL_KB_FIELD_NUMBER: _ClassVar[int]
    domid: int
    name: str
    uuid: str
    state: str
    memory_kb: int
    maxmem_kb: int
    vcpus: int
    cpu_time: float
    privileged: bool
    shutdown_reason: str
    pid: int
    launcher: str
    spec: DomainSpec
    target_kb: int
    paging_mode: str
    paging_pool_kb: int
    def __init__(self, domid: _Optional[int] = ..., name: _Optional[str] = ..., uuid: _Optional[str] = ..., state: _Optional[str] = ..., memory_kb: _Optional[int] = ..., maxmem_kb: _Optional[int] = ..., vcpus: _Optional[int] = ..., cpu_time: _Optional[float] = ..., privileged: bool = ..., shutdown_reason: _Optional[str] = ..., pid: _Optional[int] = ..., launcher: _Optional[str] = ..., spec: _Optional[_Union[DomainSpec, _Mapping]] = ..., target_kb: _Optional[int] = ..., paging_mode: _Optional[str] = ..., paging_pool_kb: _Optional[int] = ...) -> None: ...

class CreateDomainResponse(_message.Message):
    __slots__ = ("info", "secret", "agent", "agent_token")
    INFO_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    info: DomainInfo
    secret: str
    agent: str
    agent_token: str
    def __init__(self, info: _Optional[_Union[DomainInfo, _Mapping]] = ..., secret: _Optional[str] = ..., agent: _Optional[str] = ..., agent_token: _Optional[str] = ...) -> None: ...

class DomainList(_message.Message):
    __slots__ = ("domains",)
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    domains: _containers.RepeatedCompositeFieldContainer[DomainInfo]
    def __init__(self, domains: _Optional[_Iterable[_Union[DomainInfo, _Mapping]]] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ("domain", "reason", "wait", "timeout")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    reason: str
    wait: bool
    timeout: float
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., reason: _Optional[str] = ..., wait: bool = ..., timeout: _Optional[float] = ...) -> None: ...

class SchedShutdownRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class SchedWatchdogRequest(_message.Message):
    __slots__ = ("id", "timeout")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    id: int
    timeout: int
    def __init__(self, id: _Optional[int] = ..., timeout: _Optional[int] = ...) -> None: ...

class SchedWatchdogReply(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class VcpuSetRequest(_message.Message):
    __slots__ = ("domain", "vcpus")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    vcpus: int
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., vcpus: _Optional[int] = ...) -> None: ...

class HostInfo(_message.Message):
    __slots__ = ("host", "release", "xen_version", "nr_cpus", "total_memory_kb", "free_memory_kb", "nr_domains", "xen_caps", "rundir", "doorbell", "launcher", "uptime", "ops", "sharing_freed_kb", "sharing_used_kb", "page_sharing")
    class OpsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    HOST_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    XEN_VERSION_FIELD_NUMBER: _ClassVar[int]
    NR_CPUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_KB_FIELD_NUMBER: _ClassVar[int]
    FREE_MEMORY_KB_FIELD_NUMBER: _ClassVar[int]
    NR_DOMAINS_FIELD_NUMBER: _ClassVar[int]
    XEN_CAPS_FIELD_NUMBER: _ClassVar[int]
    RUNDIR_FIELD_NUMBER: _ClassVar[int]
    DOORBELL_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    SHARING_FREED_KB_FIELD_NUMBER: _ClassVar[int]
    SHARING_USED_KB_FIELD_NUMBER: _ClassVar[int]
    PAGE_SHARING_FIELD_NUMBER: _ClassVar[int]
    host: str
    release: str
    xen_version: str
    nr_cpus: int
    total_memory_kb: int
    free_memory_kb: int
    nr_domains: int
    xen_caps: str
    rundir: str
    doorbell: str
    launcher: str
    uptime: float
    ops: _containers.ScalarMap[str, int]
    sharing_freed_kb: int
    sharing_used_kb: int
    page_sharing: str
    def __init__(self, host: _Optional[str] = ..., release: _Optional[str] = ..., xen_version: _Optional[str] = ..., nr_cpus: _Optional[int] = ..., total_memory_kb: _Optional[int] = ..., free_memory_kb: _Optional[int] = ..., nr_domains: _Optional[int] = ..., xen_caps: _Optional[str] = ..., rundir: _Optional[str] = ..., doorbell: _Optional[str] = ..., launcher: _Optional[str] = ..., uptime: _Optional[float] = ..., ops: _Optional[_Mapping[str, int]] = ..., sharing_freed_kb: _Optional[int] = ..., sharing_used_kb: _Optional[int] = ..., page_sharing: _Optional[str] = ...) -> None: ...

class ConsoleRequest(_message.Message):
    __slots__ = ("domain", "follow")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    follow: bool
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., follow: bool = ...) -> None: ...

class ConsoleChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class VifInfo(_message.Message):
    __slots__ = ("domid", "devid", "backend_id", "mac", "bridge", "ip", "vifname", "state", "backend_state", "evtchn", "tx_ring_ref", "rx_ring_ref", "backend_path", "frontend_path", "hotplug_status", "mtu", "rate", "frontend_link", "backend_link")
    DOMID_FIELD_NUMBER: _ClassVar[int]
    DEVID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    VIFNAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_STATE_FIELD_NUMBER: _ClassVar[int]
    EVTCHN_FIELD_NUMBER: _ClassVar[int]
    TX_RING_REF_FIELD_NUMBER: _ClassVar[int]
    RX_RING_REF_FIELD_NUMBER: _ClassVar[int]
    BACKEND_PATH_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_PATH_FIELD_NUMBER: _ClassVar[int]
    HOTPLUG_STATUS_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_LINK_FIELD_NUMBER: _ClassVar[int]
    BACKEND_LINK_FIELD_NUMBER: _ClassVar[int]
    domid: int
    devid: int
    backend_id: int
    mac: str
    bridge: str
    ip: str
    vifname: str
    state: int
    backend_state: int
    evtchn: int
    tx_ring_ref: int
    rx_ring_ref: int
    backend_path: str
    frontend_path: str
    hotplug_status: str
    mtu: int
    rate: str
    frontend_link: str
    backend_link: str
    def __init__(self, domid: _Optional[int] = ..., devid: _Optional[int] = ..., backend_id: _Optional[int] = ..., mac: _Optional[str] = ..., bridge: _Optional[str] = ..., ip: _Optional[str] = ..., vifname: _Optional[str] = ..., state: _Optional[int] = ..., backend_state: _Optional[int] = ..., evtchn: _Optional[int] = ..., tx_ring_ref: _Optional[int] = ..., rx_ring_ref: _Optional[int] = ..., backend_path: _Optional[str] = ..., frontend_path: _Optional[str] = ..., hotplug_status: _Optional[str] = ..., mtu: _Optional[int] = ..., rate: _Optional[str] = ..., frontend_link: _Optional[str] = ..., backend_link: _Optional[str] = ...) -> None: ...

class VifList(_message.Message):
    __slots__ = ("vifs",)
    VIFS_FIELD_NUMBER: _ClassVar[int]
    vifs: _containers.RepeatedCompositeFieldContainer[VifInfo]
    def __init__(self, vifs: _Optional[_Iterable[_Union[VifInfo, _Mapping]]] = ...) -> None: ...

class NetworkAttachRequest(_message.Message):
    __slots__ = ("domain", "vif")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    VIF_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    vif: VifSpec
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., vif: _Optional[_Union[VifSpec, _Mapping]] = ...) -> None: ...

class NetworkDetachRequest(_message.Message):
    __slots__ = ("domain", "device", "force", "timeout")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    device: str
    force: bool
    timeout: float
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., device: _Optional[str] = ..., force: bool = ..., timeout: _Optional[float] = ...) -> None: ...

class BackendGoneRequest(_message.Message):
    __slots__ = ("domain", "timeout")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    domain: _common_pb2.DomainRef
    timeout: float
    def __init__(self, domain: _Optional[_Union[_common_pb2.DomainRef, _Mapping]] = ..., timeout: _Optional[float] = ...) -> None: ...

class BackendGoneReply(_message.Message):
    __slots__ = ("closed", "stuck", "unmapped", "ports")
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    STUCK_FIELD_NUMBER: _ClassVar[int]
    UNMAPPED_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    closed: _containers.RepeatedScalarFieldContainer[str]
    stuck: _containers.RepeatedScalarFieldContainer[str]
    unmapped: int
    ports: int
    def __init__(self, closed: _Optional[_Iterable[str]] = ..., stuck: _Optional[_Iterable[str]] = ..., unmapped: _Optional[int] = ..., ports: _Optional[int] = ...) -> None: ...
