"""Hypothesis: whatever frames arrive, in whatever order, with whatever port
flags and clock jumps, every frame is forwarded or counted under exactly one
drop reason, outputs respect the port rules, and the FDB stays within its
limit."""
import collections

from hypothesis import given, settings, strategies as st

from xenlab.bridge.core import Bridge
from xenlab.testing import ManualClock

PORTS = ["p0", "p1", "p2", "p3"]

# A small address space so that sources repeat, move, and fill the table.
macs = st.one_of(
    st.integers(0, 11).map(lambda n: bytes.fromhex("00163e0000") + bytes([n])),
    st.sampled_from([b"\xff" * 6, bytes(6), bytes.fromhex("01005e000001"),
                     bytes.fromhex("0180c2000000"), bytes.fromhex("0180c200000e")]),
)

frames = st.one_of(
    st.tuples(macs, macs, st.integers(0, 120)).map(lambda t: t[0] + t[1] + b"\x08\x00" + bytes(t[2])),
    # 802.1Q-tagged, VLAN 0 (priority tag) to 3
    st.tuples(macs, macs, st.integers(0, 3)).map(
        lambda t: t[0] + t[1] + b"\x81\x00" + t[2].to_bytes(2, "big") + b"\x08\x00" + bytes(46)),
    st.binary(max_size=20),
)

steps = st.one_of(
    st.tuples(st.just("frame"), st.sampled_from(PORTS), frames),
    st.tuples(st.just("flags"), st.sampled_from(PORTS),
              st.fixed_dictionaries({"learning": st.booleans(), "flood": st.booleans(),
                                     "mcast_flood": st.booleans(), "bcast_flood": st.booleans(),
                                     "hairpin": st.booleans(), "isolated": st.booleans(),
                                     "locked": st.booleans(),
                                     "state": st.sampled_from(["forwarding", "disabled", "learning",
                                                               "listening", "blocking"])})),
    st.tuples(st.just("time"), st.just(""), st.floats(0, 400)),
    st.tuples(st.just("static"), st.sampled_from(PORTS), macs),
    st.tuples(st.just("flush"), st.sampled_from(PORTS + [None]), st.booleans()),
    st.tuples(st.just("carrier"), st.sampled_from(PORTS), st.booleans()),
    st.tuples(st.just("vlan"), st.sampled_from(PORTS),
              st.tuples(st.integers(1, 3), st.booleans(), st.booleans(), st.booleans())),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, max_size=120), st.integers(1, 6), st.sampled_from(["linux", "ovs"]),
       st.booleans())
def test_frames_are_conserved_and_the_fdb_stays_bounded(script, limit, policy, vlans):
    clock = ManualClock(0.0)
    br = Bridge("br0", ageing=300, max_learned=limit, clock=clock, fdb_policy=policy)
    for name in PORTS:
        br.add_port(name)
    br.set_vlan_filtering(vlans)
    forwarded_from = collections.Counter()
    for op, port, arg in script:
        if op == "frame":
            out = br.forward(port, arg)
            if out:
                forwarded_from[port] += 1
            _check_outputs(br, port, arg, out)
        else:
            _administer(br, clock, op, port, arg)
        assert br.fdb.n_learned == sum(1 for e in br.fdb if e.learned) <= limit
        assert len(br.fdb._lru) == sum(1 for e in br.fdb if not e.static)
        assert sum(map(len, br.fdb._port_lru.values())) == br.fdb.n_learned
    assert br.counters["rx"] == br.counters["forwarded"] + sum(br.drops.values())
    for name, p in br.ports.items():
        assert p.counters["rx_packets"] == forwarded_from[name] + sum(p.drops.values())
    assert sum(p.counters["tx_packets"] for p in br.ports.values()) == br.counters["tx"]


def _administer(br, clock, op, port, arg) -> None:
    """A step of a script other than frames: port flags, carrier, VLANs,
    time, static, sticky and flushed FDB entries."""
    if op == "flags":
        if not br.ports[port].carrier:
            arg = {**arg, "state": "disabled"}
        br.set_port_flags(port, **arg)
    elif op == "carrier":
        br.set_carrier(port, arg)
    elif op == "vlan":
        vid, add, pvid, untagged = arg
        if add:
            br.vlan_add(port, vid, pvid=pvid, untagged=untagged)
        elif vid in br.ports[port].vlans:
            br.vlan_delete(port, vid)
    elif op == "time":
        clock.now += arg
    elif op == "static":
        try:
            br.add_static(arg, port)
        except Exception as err:       # not unicast, or full of static entries
            assert getattr(err, "errno", None) is not None
    elif op == "sticky":
        br.fdb.add(arg, port, state="dynamic", sticky=True, replace=True)
    elif op == "flush":
        br.flush(port, include_static=arg)
    else:
        raise ValueError(f"unknown step {op!r}")


def _check_outputs(br, ingress, frame, out):
    names = [name for name, _ in out]
    assert len(names) == len(set(names))
    for name, data in out:
        if br.vlan_filtering:
            # The same frame, tagged or not as the egress port's membership says.
            vid = _vlan_of(br.ports[ingress], frame)
            assert vid in br.ports[name].vlans
            tagged = data[12:14] == b"\x81\x00"
            assert tagged != br.ports[name].vlans[vid]
            assert (data[:12] + data[16:] if tagged else data) == _untagged(frame)
        else:
            assert data is frame
        assert br.ports[name].state == "forwarding"
        if name == ingress:
            assert br.ports[ingress].hairpin
    if out and frame[:6] == b"\xff" * 6:
        assert all(br.ports[name].bcast_flood for name in names)
    elif out and frame[0] & 1:
        assert all(br.ports[name].mcast_flood for name in names)
    elif len(out) > 1:
        assert all(br.ports[name].flood for name in names)
    if out and br.ports[ingress].isolated:
        assert not any(br.ports[name].isolated for name in names)


def _untagged(frame: bytes) -> bytes:
    return frame[:12] + frame[16:] if frame[12:14] == b"\x81\x00" else frame


def _vlan_of(port, frame: bytes) -> int:
    if frame[12:14] == b"\x81\x00" and int.from_bytes(frame[14:16], "big") & 0xFFF:
        return int.from_bytes(frame[14:16], "big") & 0xFFF
    return port.pvid


# A burst: a station answers from another port (so that it is known, or
# moved), then a batch of frames from one port, mostly a stream to it
# (the previous frame's addresses again), with sizes around the limits.
# Few stations, so that they collide with sticky entries and the bridge's
# own address (the last of them).
stations = st.integers(0, 3).map(lambda n: bytes.fromhex("00163e0000") + bytes([n]))
OWN = bytes.fromhex("00163e000003")
bursts = st.tuples(st.sampled_from(PORTS), stations, st.lists(
    st.tuples(st.one_of(stations, macs), st.one_of(stations, macs), st.sampled_from([0, 1, 1, 1, 1, 1]),
              st.sampled_from([-15, -1, 0, 50, 1500, 9000, 20000])),
    min_size=1, max_size=30))


def _burst(br, port, burst) -> dict:
    """``burst``: (the station's port, the station, frames); ``same`` 1
    keeps the previous frame's addresses, the first is to the station."""
    other, station, spec = burst
    br.forward_batch(other, [b"\xff" * 6 + station + b"\x08\x06" + bytes(46)])
    frames, head = [], None
    for dst, src, same, size in spec:
        if head is None:
            head = station + src
        elif not same:
            head = dst + src
        frames.append((head + b"\x08\x00" + bytes(max(0, size)))[:max(0, 14 + size)])
    return br.forward_batch(port, frames)


def _bridge_state(br) -> tuple:
    return (dict(br.counters), dict(br.drops),
            {n: (dict(p.counters), dict(p.drops)) for n, p in br.ports.items()},
            dict(br.fdb.counters),
            sorted((e.mac, e.vid, e.port, e.updated, e.used, e.static, e.sticky) for e in br.fdb))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(steps, st.tuples(st.just("burst"), st.sampled_from(PORTS), bursts),
                          st.tuples(st.just("sticky"), st.sampled_from(PORTS), stations)),
                max_size=60),
       st.integers(1, 6), st.booleans(), st.sampled_from([2, 4]))
def test_a_stream_decided_once_per_batch_is_decided_as_frame_by_frame(script, limit, ageing, nports):
    """forward_batch reuses a known-unicast decision for frames with the
    same addresses (Bridge._repeatable): the outputs, every counter and the
    FDB must be what deciding each frame anew gives."""
    bridges = []
    for reuse in (True, False):
        clock = ManualClock(0.0)
        br = Bridge("br0", ageing=300 if ageing else 0, max_learned=limit, clock=clock, mac=OWN)
        for name in PORTS[:nports]:     # with 2, a flood has one port to go to
            br.add_port(name)
        if not reuse:
            br._repeatable = lambda *args: None
        bridges.append((br, clock))
    outs = [[], []]
    for k, (br, clock) in enumerate(bridges):
        for op, port, arg in script:
            port = PORTS[PORTS.index(port) % nports] if port else port
            if op == "burst":
                other, station, spec = arg
                outs[k].append(_burst(br, port, (PORTS[PORTS.index(other) % nports], station, spec)))
            elif op == "frame":
                outs[k].append(br.forward_batch(port, [arg]))
            else:
                _administer(br, clock, op, port, arg)
    (with_reuse, _), (frame_by_frame, _) = bridges
    assert outs[0] == outs[1]
    assert _bridge_state(with_reuse) == _bridge_state(frame_by_frame)
