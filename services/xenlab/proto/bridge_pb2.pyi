from xenlab.proto import agent_pb2 as _agent_pb2
from xenlab.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BridgePortRef(_message.Message):
    __slots__ = ("bridge", "port")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    port: str
    def __init__(self, bridge: _Optional[str] = ..., port: _Optional[str] = ...) -> None: ...

class AddBridgePortRequest(_message.Message):
    __slots__ = ("bridge", "port", "mac")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    port: str
    mac: str
    def __init__(self, bridge: _Optional[str] = ..., port: _Optional[str] = ..., mac: _Optional[str] = ...) -> None: ...

class PortVlan(_message.Message):
    __slots__ = ("vid", "pvid", "untagged")
    VID_FIELD_NUMBER: _ClassVar[int]
    PVID_FIELD_NUMBER: _ClassVar[int]
    UNTAGGED_FIELD_NUMBER: _ClassVar[int]
    vid: int
    pvid: bool
    untagged: bool
    def __init__(self, vid: _Optional[int] = ..., pvid: bool = ..., untagged: bool = ...) -> None: ...

class BridgePortInfo(_message.Message):
    __slots__ = ("name", "port_no", "mac", "learning", "flood", "hairpin", "state", "link", "peer", "mcast_flood", "bcast_flood", "isolated", "locked", "priority", "cost", "carrier", "mtu", "vlans", "role", "designated_root", "designated_bridge", "designated_port", "designated_cost", "port_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_NO_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    LEARNING_FIELD_NUMBER: _ClassVar[int]
    FLOOD_FIELD_NUMBER: _ClassVar[int]
    HAIRPIN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    MCAST_FLOOD_FIELD_NUMBER: _ClassVar[int]
    BCAST_FLOOD_FIELD_NUMBER: _ClassVar[int]
    ISOLATED_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    CARRIER_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    VLANS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DESIGNATED_ROOT_FIELD_NUMBER: _ClassVar[int]
    DESIGNATED_BRIDGE_FIELD_NUMBER: _ClassVar[int]
    DESIGNATED_PORT_FIELD_NUMBER: _ClassVar[int]
    DESIGNATED_COST_FIELD_NUMBER: _ClassVar[int]
    PORT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    port_no: int
    mac: str
    learning: bool
    flood: bool
    hairpin: bool
    state: str
    link: str
    peer: str
    mcast_flood: bool
    bcast_flood: bool
    isolated: bool
    locked: bool
    priority: int
    cost: int
    carrier: bool
    mtu: int
    vlans: _containers.RepeatedCompositeFieldContainer[PortVlan]
    role: str
    designated_root: str
    designated_bridge: str
    designated_port: int
    designated_cost: int
    port_id: int
    def __init__(self, name: _Optional[str] = ..., port_no: _Optional[int] = ..., mac: _Optional[str] = ..., learning: bool = ..., flood: bool = ..., hairpin: bool = ..., state: _Optional[str] = ..., link: _Optional[str] = ..., peer: _Optional[str] = ..., mcast_flood: bool = ..., bcast_flood: bool = ..., isolated: bool = ..., locked: bool = ..., priority: _Optional[int] = ..., cost: _Optional[int] = ..., carrier: bool = ..., mtu: _Optional[int] = ..., vlans: _Optional[_Iterable[_Union[PortVlan, _Mapping]]] = ..., role: _Optional[str] = ..., designated_root: _Optional[str] = ..., designated_bridge: _Optional[str] = ..., designated_port: _Optional[int] = ..., designated_cost: _Optional[int] = ..., port_id: _Optional[int] = ...) -> None: ...

class BridgeInfo(_message.Message):
    __slots__ = ("name", "bridge_id", "mac", "stp", "ports", "ageing", "fdb_max", "fdb_entries", "veth_address", "fdb_policy", "fdb_learned", "group_fwd_mask", "priority", "vlan_filtering", "root_id", "root_port", "root_path_cost", "topology_change", "hello_time", "max_age", "forward_delay")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_ID_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    STP_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    AGEING_FIELD_NUMBER: _ClassVar[int]
    FDB_MAX_FIELD_NUMBER: _ClassVar[int]
    FDB_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    VETH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FDB_POLICY_FIELD_NUMBER: _ClassVar[int]
    FDB_LEARNED_FIELD_NUMBER: _ClassVar[int]
    GROUP_FWD_MASK_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    VLAN_FILTERING_FIELD_NUMBER: _ClassVar[int]
    ROOT_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_PORT_FIELD_NUMBER: _ClassVar[int]
    ROOT_PATH_COST_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_CHANGE_FIELD_NUMBER: _ClassVar[int]
    HELLO_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_DELAY_FIELD_NUMBER: _ClassVar[int]
    name: str
    bridge_id: str
    mac: str
    stp: bool
    ports: _containers.RepeatedCompositeFieldContainer[BridgePortInfo]
    ageing: float
    fdb_max: int
    fdb_entries: int
    veth_address: str
    fdb_policy: str
    fdb_learned: int
    group_fwd_mask: int
    priority: int
    vlan_filtering: bool
    root_id: str
    root_port: int
    root_path_cost: int
    topology_change: bool
    hello_time: float
    max_age: float
    forward_delay: float
    def __init__(self, name: _Optional[str] = ..., bridge_id: _Optional[str] = ..., mac: _Optional[str] = ..., stp: bool = ..., ports: _Optional[_Iterable[_Union[BridgePortInfo, _Mapping]]] = ..., ageing: _Optional[float] = ..., fdb_max: _Optional[int] = ..., fdb_entries: _Optional[int] = ..., veth_address: _Optional[str] = ..., fdb_policy: _Optional[str] = ..., fdb_learned: _Optional[int] = ..., group_fwd_mask: _Optional[int] = ..., priority: _Optional[int] = ..., vlan_filtering: bool = ..., root_id: _Optional[str] = ..., root_port: _Optional[int] = ..., root_path_cost: _Optional[int] = ..., topology_change: bool = ..., hello_time: _Optional[float] = ..., max_age: _Optional[float] = ..., forward_delay: _Optional[float] = ...) -> None: ...

class ShowBridgesRequest(_message.Message):
    __slots__ = ("bridge",)
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    def __init__(self, bridge: _Optional[str] = ...) -> None: ...

class BridgeList(_message.Message):
    __slots__ = ("bridges", "text")
    BRIDGES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    bridges: _containers.RepeatedCompositeFieldContainer[BridgeInfo]
    text: str
    def __init__(self, bridges: _Optional[_Iterable[_Union[BridgeInfo, _Mapping]]] = ..., text: _Optional[str] = ...) -> None: ...

class ShowFdbRequest(_message.Message):
    __slots__ = ("bridge", "port", "stats")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    port: str
    stats: bool
    def __init__(self, bridge: _Optional[str] = ..., port: _Optional[str] = ..., stats: bool = ...) -> None: ...

class FdbRecord(_message.Message):
    __slots__ = ("mac", "bridge", "port", "port_no", "static", "used", "updated", "expires_in", "sticky", "state", "vlan", "learned")
    MAC_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PORT_NO_FIELD_NUMBER: _ClassVar[int]
    STATIC_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    LEARNED_FIELD_NUMBER: _ClassVar[int]
    mac: str
    bridge: str
    port: str
    port_no: int
    static: bool
    used: float
    updated: float
    expires_in: float
    sticky: bool
    state: str
    vlan: int
    learned: bool
    def __init__(self, mac: _Optional[str] = ..., bridge: _Optional[str] = ..., port: _Optional[str] = ..., port_no: _Optional[int] = ..., static: bool = ..., used: _Optional[float] = ..., updated: _Optional[float] = ..., expires_in: _Optional[float] = ..., sticky: bool = ..., state: _Optional[str] = ..., vlan: _Optional[int] = ..., learned: bool = ...) -> None: ...

class FdbTable(_message.Message):
    __slots__ = ("entries", "text")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[FdbRecord]
    text: str
    def __init__(self, entries: _Optional[_Iterable[_Union[FdbRecord, _Mapping]]] = ..., text: _Optional[str] = ...) -> None: ...

class SetAgeingRequest(_message.Message):
    __slots__ = ("bridge", "seconds")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    seconds: float
    def __init__(self, bridge: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class StaticFdbRequest(_message.Message):
    __slots__ = ("bridge", "mac", "port")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    mac: str
    port: str
    def __init__(self, bridge: _Optional[str] = ..., mac: _Optional[str] = ..., port: _Optional[str] = ...) -> None: ...

class FdbEntryRequest(_message.Message):
    __slots__ = ("bridge", "mac", "port", "state", "sticky", "vlan", "replace")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    mac: str
    port: str
    state: str
    sticky: bool
    vlan: int
    replace: bool
    def __init__(self, bridge: _Optional[str] = ..., mac: _Optional[str] = ..., port: _Optional[str] = ..., state: _Optional[str] = ..., sticky: bool = ..., vlan: _Optional[int] = ..., replace: bool = ...) -> None: ...

class SetBridgeRequest(_message.Message):
    __slots__ = ("bridge", "ageing", "fdb_max", "fdb_policy", "group_fwd_mask", "vlan_filtering", "stp", "priority", "hello_time", "forward_delay", "max_age")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    AGEING_FIELD_NUMBER: _ClassVar[int]
    FDB_MAX_FIELD_NUMBER: _ClassVar[int]
    FDB_POLICY_FIELD_NUMBER: _ClassVar[int]
    GROUP_FWD_MASK_FIELD_NUMBER: _ClassVar[int]
    VLAN_FILTERING_FIELD_NUMBER: _ClassVar[int]
    STP_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    HELLO_TIME_FIELD_NUMBER: _ClassVar[int]
    FORWARD_DELAY_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    ageing: float
    fdb_max: int
    fdb_policy: str
    group_fwd_mask: int
    vlan_filtering: bool
    stp: bool
    priority: int
    hello_time: float
    forward_delay: float
    max_age: float
    def __init__(self, bridge: _Optional[str] = ..., ageing: _Optional[float] = ..., fdb_max: _Optional[int] = ..., fdb_policy: _Optional[str] = ..., group_fwd_mask: _Optional[int] = ..., vlan_filtering: bool = ..., stp: bool = ..., priority: _Optional[int] = ..., hello_time: _Optional[float] = ..., forward_delay: _Optional[float] = ..., max_age: _Optional[float] = ...) -> None: ...

class PortVlanRequest(_message.Message):
    __slots__ = ("bridge", "port", "vid", "vid_end", "pvid", "untagged", "add")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    VID_FIELD_NUMBER: _ClassVar[int]
    VID_END_FIELD_NUMBER: _ClassVar[int]
    PVID_FIELD_NUMBER: _ClassVar[int]
    UNTAGGED_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    port: str
    vid: int
    vid_end: int
    pvid: bool
    untagged: bool
    add: bool
    def __init__(self, bridge: _Optional[str] = ..., port: _Optional[str] = ..., vid: _Optional[int] = ..., vid_end: _Optional[int] = ..., pvid: bool = ..., untagged: bool = ..., add: bool = ...) -> None: ...

class SetPortFlagsRequest(_message.Message):
    __slots__ = ("bridge", "port", "learning", "flood", "hairpin", "state", "mcast_flood", "bcast_flood", "isolated", "locked", "priority", "cost")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    LEARNING_FIELD_NUMBER: _ClassVar[int]
    FLOOD_FIELD_NUMBER: _ClassVar[int]
    HAIRPIN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MCAST_FLOOD_FIELD_NUMBER: _ClassVar[int]
    BCAST_FLOOD_FIELD_NUMBER: _ClassVar[int]
    ISOLATED_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    port: str
    learning: bool
    flood: bool
    hairpin: bool
    state: str
    mcast_flood: bool
    bcast_flood: bool
    isolated: bool
    locked: bool
    priority: int
    cost: int
    def __init__(self, bridge: _Optional[str] = ..., port: _Optional[str] = ..., learning: bool = ..., flood: bool = ..., hairpin: bool = ..., state: _Optional[str] = ..., mcast_flood: bool = ..., bcast_flood: bool = ..., isolated: bool = ..., locked: bool = ..., priority: _Optional[int] = ..., cost: _Optional[int] = ...) -> None: ...

class FlushFdbRequest(_message.Message):
    __slots__ = ("bridge", "port", "include_static")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_STATIC_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    port: str
    include_static: bool
    def __init__(self, bridge: _Optional[str] = ..., port: _Optional[str] = ..., include_static: bool = ...) -> None: ...

class FlushFdbReply(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class BridgeStatsRequest(_message.Message):
    __slots__ = ("bridge",)
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    def __init__(self, bridge: _Optional[str] = ...) -> None: ...

class BridgePortStats(_message.Message):
    __slots__ = ("name", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops", "link", "rx_broadcast", "rx_multicast")
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LinkEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    RX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    RX_BROADCAST_FIELD_NUMBER: _ClassVar[int]
    RX_MULTICAST_FIELD_NUMBER: _ClassVar[int]
    name: str
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int
    drops: _containers.ScalarMap[str, int]
    link: _containers.ScalarMap[str, int]
    rx_broadcast: int
    rx_multicast: int
    def __init__(self, name: _Optional[str] = ..., rx_packets: _Optional[int] = ..., rx_bytes: _Optional[int] = ..., tx_packets: _Optional[int] = ..., tx_bytes: _Optional[int] = ..., drops: _Optional[_Mapping[str, int]] = ..., link: _Optional[_Mapping[str, int]] = ..., rx_broadcast: _Optional[int] = ..., rx_multicast: _Optional[int] = ...) -> None: ...

class BridgeCounters(_message.Message):
    __slots__ = ("name", "counters", "drops", "fdb", "ports", "gone")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FdbEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    FDB_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    GONE_FIELD_NUMBER: _ClassVar[int]
    name: str
    counters: _containers.ScalarMap[str, int]
    drops: _containers.ScalarMap[str, int]
    fdb: _containers.ScalarMap[str, int]
    ports: _containers.RepeatedCompositeFieldContainer[BridgePortStats]
    gone: _containers.RepeatedCompositeFieldContainer[BridgePortStats]
    def __init__(self, name: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ..., drops: _Optional[_Mapping[str, int]] = ..., fdb: _Optional[_Mapping[str, int]] = ..., ports: _Optional[_Iterable[_Union[BridgePortStats, _Mapping]]] = ..., gone: _Optional[_Iterable[_Union[BridgePortStats, _Mapping]]] = ...) -> None: ...

class BridgeStatsReply(_message.Message):
    __slots__ = ("bridges",)
    BRIDGES_FIELD_NUMBER: _ClassVar[int]
    bridges: _containers.RepeatedCompositeFieldContainer[BridgeCounters]
    def __init__(self, bridges: _Optional[_Iterable[_Union[BridgeCounters, _Mapping]]] = ...) -> None: ...

class WatchFdbRequest(_message.Message):
    __slots__ = ("bridge",)
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    def __init__(self, bridge: _Optional[str] = ...) -> None: ...

class FdbEvent(_message.Message):
    __slots__ = ("kind", "bridge", "mac", "port", "old_port", "static", "time", "vlan", "sticky", "permanent")
    KIND_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    OLD_PORT_FIELD_NUMBER: _ClassVar[int]
    STATIC_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    bridge: str
    mac: str
    port: str
    old_port: str
    static: bool
    time: float
    vlan: int
    sticky: bool
    permanent: bool
    def __init__(self, kind: _Optional[str] = ..., bridge: _Optional[str] = ..., mac: _Optional[str] = ..., port: _Optional[str] = ..., old_port: _Optional[str] = ..., static: bool = ..., time: _Optional[float] = ..., vlan: _Optional[int] = ..., sticky: bool = ..., permanent: bool = ...) -> None: ...

class PortEvent(_message.Message):
    __slots__ = ("kind", "bridge", "port", "time")
    KIND_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    bridge: str
    port: BridgePortInfo
    time: float
    def __init__(self, kind: _Optional[str] = ..., bridge: _Optional[str] = ..., port: _Optional[_Union[BridgePortInfo, _Mapping]] = ..., time: _Optional[float] = ...) -> None: ...

class MonitorRequest(_message.Message):
    __slots__ = ("bridge", "fdb", "link")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    FDB_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    fdb: bool
    link: bool
    def __init__(self, bridge: _Optional[str] = ..., fdb: bool = ..., link: bool = ...) -> None: ...

class BridgeEvent(_message.Message):
    __slots__ = ("fdb", "link")
    FDB_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    fdb: FdbEvent
    link: PortEvent
    def __init__(self, fdb: _Optional[_Union[FdbEvent, _Mapping]] = ..., link: _Optional[_Union[PortEvent, _Mapping]] = ...) -> None: ...

class BridgeCaptureRequest(_message.Message):
    __slots__ = ("bridge", "port", "count", "direction")
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    port: str
    count: int
    direction: str
    def __init__(self, bridge: _Optional[str] = ..., port: _Optional[str] = ..., count: _Optional[int] = ..., direction: _Optional[str] = ...) -> None: ...

class BridgeInjectFrame(_message.Message):
    __slots__ = ("data", "bridge", "port")
    DATA_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    bridge: str
    port: str
    def __init__(self, data: _Optional[bytes] = ..., bridge: _Optional[str] = ..., port: _Optional[str] = ...) -> None: ...
