from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PingRequest(_message.Message):
    __slots__ = ("dst", "count", "size", "interval", "timeout", "interface", "ttl")
    DST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    dst: str
    count: int
    size: int
    interval: float
    timeout: float
    interface: str
    ttl: int
    def __init__(self, dst: _Optional[str] = ..., count: _Optional[int] = ..., size: _Optional[int] = ..., interval: _Optional[float] = ..., timeout: _Optional[float] = ..., interface: _Optional[str] = ..., ttl: _Optional[int] = ...) -> None: ...

class PingError(_message.Message):
    __slots__ = ("seq", "src", "type", "code")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    src: str
    type: int
    code: int
    def __init__(self, seq: _Optional[int] = ..., src: _Optional[str] = ..., type: _Optional[int] = ..., code: _Optional[int] = ...) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("transmitted", "received", "rtt", "seq", "error", "src", "unreachable", "errors")
    TRANSMITTED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RTT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    transmitted: int
    received: int
    rtt: _containers.RepeatedScalarFieldContainer[float]
    seq: _containers.RepeatedScalarFieldContainer[int]
    error: str
    src: str
    unreachable: bool
    errors: _containers.RepeatedCompositeFieldContainer[PingError]
    def __init__(self, transmitted: _Optional[int] = ..., received: _Optional[int] = ..., rtt: _Optional[_Iterable[float]] = ..., seq: _Optional[_Iterable[int]] = ..., error: _Optional[str] = ..., src: _Optional[str] = ..., unreachable: bool = ..., errors: _Optional[_Iterable[_Union[PingError, _Mapping]]] = ...) -> None: ...

class SendUdpRequest(_message.Message):
    __slots__ = ("dst", "dport", "sport", "payload", "wait_reply", "timeout", "interface")
    DST_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    SPORT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WAIT_REPLY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    dst: str
    dport: int
    sport: int
    payload: bytes
    wait_reply: bool
    timeout: float
    interface: str
    def __init__(self, dst: _Optional[str] = ..., dport: _Optional[int] = ..., sport: _Optional[int] = ..., payload: _Optional[bytes] = ..., wait_reply: bool = ..., timeout: _Optional[float] = ..., interface: _Optional[str] = ...) -> None: ...

class SendUdpReply(_message.Message):
    __slots__ = ("replied", "reply", "src", "sport", "rtt")
    REPLIED_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    SPORT_FIELD_NUMBER: _ClassVar[int]
    RTT_FIELD_NUMBER: _ClassVar[int]
    replied: bool
    reply: bytes
    src: str
    sport: int
    rtt: float
    def __init__(self, replied: bool = ..., reply: _Optional[bytes] = ..., src: _Optional[str] = ..., sport: _Optional[int] = ..., rtt: _Optional[float] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("data", "interface")
    DATA_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    interface: str
    def __init__(self, data: _Optional[bytes] = ..., interface: _Optional[str] = ...) -> None: ...

class InjectSummary(_message.Message):
    __slots__ = ("accepted", "dropped", "drops")
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    dropped: int
    drops: _containers.ScalarMap[str, int]
    def __init__(self, accepted: _Optional[int] = ..., dropped: _Optional[int] = ..., drops: _Optional[_Mapping[str, int]] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("interface", "count", "direction")
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    interface: str
    count: int
    direction: str
    def __init__(self, interface: _Optional[str] = ..., count: _Optional[int] = ..., direction: _Optional[str] = ...) -> None: ...

class CapturedFrame(_message.Message):
    __slots__ = ("data", "timestamp", "direction", "interface")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    timestamp: float
    direction: str
    interface: str
    def __init__(self, data: _Optional[bytes] = ..., timestamp: _Optional[float] = ..., direction: _Optional[str] = ..., interface: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("interface", "gone")
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    GONE_FIELD_NUMBER: _ClassVar[int]
    interface: str
    gone: bool
    def __init__(self, interface: _Optional[str] = ..., gone: bool = ...) -> None: ...

class InterfaceStats(_message.Message):
    __slots__ = ("name", "tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "drops", "mac", "ip", "mtu", "state", "peer", "persistent_grants", "qdisc", "admin_up", "carrier", "ifindex", "master")
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class QdiscEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    RX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_GRANTS_FIELD_NUMBER: _ClassVar[int]
    QDISC_FIELD_NUMBER: _ClassVar[int]
    ADMIN_UP_FIELD_NUMBER: _ClassVar[int]
    CARRIER_FIELD_NUMBER: _ClassVar[int]
    IFINDEX_FIELD_NUMBER: _ClassVar[int]
    MASTER_FIELD_NUMBER: _ClassVar[int]
    name: str
    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int
    drops: _containers.ScalarMap[str, int]
    mac: str
    ip: str
    mtu: int
    state: str
    peer: str
    persistent_grants: int
    qdisc: _containers.ScalarMap[str, int]
    admin_up: bool
    carrier: bool
    ifindex: int
    master: str
    def __init__(self, name: _Optional[str] = ..., tx_packets: _Optional[int] = ..., tx_bytes: _Optional[int] = ..., rx_packets: _Optional[int] = ..., rx_bytes: _Optional[int] = ..., drops: _Optional[_Mapping[str, int]] = ..., mac: _Optional[str] = ..., ip: _Optional[str] = ..., mtu: _Optional[int] = ..., state: _Optional[str] = ..., peer: _Optional[str] = ..., persistent_grants: _Optional[int] = ..., qdisc: _Optional[_Mapping[str, int]] = ..., admin_up: bool = ..., carrier: bool = ..., ifindex: _Optional[int] = ..., master: _Optional[str] = ...) -> None: ...

class SetLinkRequest(_message.Message):
    __slots__ = ("interface", "up")
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    interface: str
    up: bool
    def __init__(self, interface: _Optional[str] = ..., up: bool = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("interfaces",)
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    interfaces: _containers.RepeatedCompositeFieldContainer[InterfaceStats]
    def __init__(self, interfaces: _Optional[_Iterable[_Union[InterfaceStats, _Mapping]]] = ...) -> None: ...

class BlastRequest(_message.Message):
    __slots__ = ("interface", "dst_mac", "count", "size", "ethertype", "batch", "timeout", "random_src")
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    DST_MAC_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ETHERTYPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RANDOM_SRC_FIELD_NUMBER: _ClassVar[int]
    interface: str
    dst_mac: str
    count: int
    size: int
    ethertype: int
    batch: int
    timeout: float
    random_src: bool
    def __init__(self, interface: _Optional[str] = ..., dst_mac: _Optional[str] = ..., count: _Optional[int] = ..., size: _Optional[int] = ..., ethertype: _Optional[int] = ..., batch: _Optional[int] = ..., timeout: _Optional[float] = ..., random_src: bool = ...) -> None: ...

class BlastReply(_message.Message):
    __slots__ = ("sent", "dropped", "drops", "started", "finished")
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SENT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    sent: int
    dropped: int
    drops: _containers.ScalarMap[str, int]
    started: float
    finished: float
    def __init__(self, sent: _Optional[int] = ..., dropped: _Optional[int] = ..., drops: _Optional[_Mapping[str, int]] = ..., started: _Optional[float] = ..., finished: _Optional[float] = ...) -> None: ...

class SinkRequest(_message.Message):
    __slots__ = ("interface", "ethertype", "count", "idle", "timeout")
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    ETHERTYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    interface: str
    ethertype: int
    count: int
    idle: float
    timeout: float
    def __init__(self, interface: _Optional[str] = ..., ethertype: _Optional[int] = ..., count: _Optional[int] = ..., idle: _Optional[float] = ..., timeout: _Optional[float] = ...) -> None: ...

class SinkReply(_message.Message):
    __slots__ = ("received", "bytes", "first", "last", "ready")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    received: int
    bytes: int
    first: float
    last: float
    ready: bool
    def __init__(self, received: _Optional[int] = ..., bytes: _Optional[int] = ..., first: _Optional[float] = ..., last: _Optional[float] = ..., ready: bool = ...) -> None: ...

class PerfSendRequest(_message.Message):
    __slots__ = ("dst", "dport", "rate", "length", "duration", "interval", "interface")
    DST_FIELD_NUMBER: _ClassVar[int]
    DPORT_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    dst: str
    dport: int
    rate: float
    length: int
    duration: float
    interval: float
    interface: str
    def __init__(self, dst: _Optional[str] = ..., dport: _Optional[int] = ..., rate: _Optional[float] = ..., length: _Optional[int] = ..., duration: _Optional[float] = ..., interval: _Optional[float] = ..., interface: _Optional[str] = ...) -> None: ...

class PerfServeRequest(_message.Message):
    __slots__ = ("port", "interval", "timeout", "interface")
    PORT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    port: int
    interval: float
    timeout: float
    interface: str
    def __init__(self, port: _Optional[int] = ..., interval: _Optional[float] = ..., timeout: _Optional[float] = ..., interface: _Optional[str] = ...) -> None: ...

class PerfInterval(_message.Message):
    __slots__ = ("start", "end", "datagrams", "bytes", "lost", "jitter", "out_of_order", "errors", "total", "ready", "duplicates")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    DATAGRAMS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_ORDER_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    start: float
    end: float
    datagrams: int
    bytes: int
    lost: int
    jitter: float
    out_of_order: int
    errors: int
    total: bool
    ready: bool
    duplicates: int
    def __init__(self, start: _Optional[float] = ..., end: _Optional[float] = ..., datagrams: _Optional[int] = ..., bytes: _Optional[int] = ..., lost: _Optional[int] = ..., jitter: _Optional[float] = ..., out_of_order: _Optional[int] = ..., errors: _Optional[int] = ..., total: bool = ..., ready: bool = ..., duplicates: _Optional[int] = ...) -> None: ...

class SpinRequest(_message.Message):
    __slots__ = ("vcpus", "seconds")
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    vcpus: _containers.RepeatedScalarFieldContainer[int]
    seconds: float
    def __init__(self, vcpus: _Optional[_Iterable[int]] = ..., seconds: _Optional[float] = ...) -> None: ...

class SpinReply(_message.Message):
    __slots__ = ("vcpus",)
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    vcpus: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, vcpus: _Optional[_Iterable[int]] = ...) -> None: ...

class PagingWorkloadRequest(_message.Message):
    __slots__ = ("pages", "remap", "seed")
    PAGES_FIELD_NUMBER: _ClassVar[int]
    REMAP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    pages: int
    remap: int
    seed: int
    def __init__(self, pages: _Optional[int] = ..., remap: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class PagingFault(_message.Message):
    __slots__ = ("va", "code")
    VA_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    va: int
    code: int
    def __init__(self, va: _Optional[int] = ..., code: _Optional[int] = ...) -> None: ...

class PagingWorkloadResult(_message.Message):
    __slots__ = ("name", "ops", "digest", "faults", "guest", "counters", "seconds", "gauges")
    class GuestEntry(_message.Message):
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
    class GaugesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    GAUGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    ops: int
    digest: str
    faults: _containers.RepeatedCompositeFieldContainer[PagingFault]
    guest: _containers.ScalarMap[str, int]
    counters: _containers.ScalarMap[str, int]
    seconds: float
    gauges: _containers.ScalarMap[str, int]
    def __init__(self, name: _Optional[str] = ..., ops: _Optional[int] = ..., digest: _Optional[str] = ..., faults: _Optional[_Iterable[_Union[PagingFault, _Mapping]]] = ..., guest: _Optional[_Mapping[str, int]] = ..., counters: _Optional[_Mapping[str, int]] = ..., seconds: _Optional[float] = ..., gauges: _Optional[_Mapping[str, int]] = ...) -> None: ...

class PagingWorkloadReply(_message.Message):
    __slots__ = ("mode", "results")
    MODE_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    results: _containers.RepeatedCompositeFieldContainer[PagingWorkloadResult]
    def __init__(self, mode: _Optional[str] = ..., results: _Optional[_Iterable[_Union[PagingWorkloadResult, _Mapping]]] = ...) -> None: ...
