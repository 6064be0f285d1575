"""Frame accounting across a veth pair when one end goes away: every frame
handed to one end is received by the other or counted as a drop, once."""
import asyncio


from xenlab.net import veth


async def pair(sock_dir):
    address = f"unix:{sock_dir}/br.sock"
    ports = []
    listener = veth.VethListener(address, admit=lambda hello: (hello["name"], {}), attached=ports.append)
    await listener.start()
    end = await veth.connect_veth(listener.bound_address, "vif1.0", {})
    for _ in range(200):
        if ports:
            break
        await asyncio.sleep(0.01)
    return listener, end, ports[0]


def sent(end):
    return end.counters["tx_packets"]


def handled(end):
    return end.counters["rx_packets"] + end.drops["no_receiver"] + end.drops["closed_unread"]


async def settle():
    for _ in range(20):
        await asyncio.sleep(0.01)


async def test_frames_the_closing_end_never_read_are_counted_unread(sock_dir):
    listener, a, b = await pair(sock_dir)
    got = []
    b.receiver = got.extend
    frames = [bytes([i % 256]) * 200 for i in range(3000)]
    a.transmit(frames)          # most of them are still in b's socket when b closes
    b.close()
    await asyncio.wait_for(a.closed.wait(), 5)
    a.transmit(frames[:7])      # after the peer went: dropped, never sent
    await settle()
    assert sent(a) + a.drops["link_down"] == 3007
    assert sent(a) == handled(b) == len(got) + b.drops["closed_unread"]
    assert b.drops["closed_unread"] > 0 and a.drops["link_down"] >= 7
    await listener.close()


async def test_frames_queued_when_the_link_fails_are_dropped_not_also_sent(sock_dir):
    listener, a, b = await pair(sock_dir)
    b.receiver = lambda frames: None
    # More than the socket takes at once: the rest waits in a's queue.
    frames = [b"\x01" * 1400] * 6000
    a.transmit(frames)
    assert a.counters["tx_packets"] < 6000
    b.close()
    await asyncio.wait_for(a.closed.wait(), 5)
    await settle()
    assert sent(a) + a.drops["link_down"] == 6000
    assert sent(a) == handled(b)
    assert a.drops["link_down"] > 0 and b.drops["closed_unread"] > 0
    await listener.close()


async def test_a_clean_close_in_order_loses_nothing(sock_dir):
    listener, a, b = await pair(sock_dir)
    got = []
    b.receiver = got.extend
    a.transmit([b"\x02" * 100] * 500)
    await settle()
    a.close()
    await asyncio.wait_for(b.closed.wait(), 5)
    assert len(got) == sent(a) == 500 and b.drops["closed_unread"] == 0
    await listener.close()


async def test_frames_right_behind_the_hello_reach_the_connecting_end(sock_dir):
    # A bridge floods to a port as soon as it is attached, which can be
    # before the connecting end has read the answer to its hello.
    address = f"unix:{sock_dir}/br.sock"
    ends = []

    def attached(end):
        ends.append(end)
        end.transmit([b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + bytes(50)] * 3)

    listener = veth.VethListener(address, admit=lambda hello: (hello["name"], {}), attached=attached)
    await listener.start()
    real = veth._read_hello

    async def slow_read_hello(sock, link, timeout):
        await asyncio.sleep(0.1)          # the frames are queued behind the answer by now
        return await real(sock, link, timeout)

    veth._read_hello = slow_read_hello
    try:
        end = await veth.connect_veth(listener.bound_address, "vif1.0", {})
    finally:
        veth._read_hello = real
    got = []
    end.receiver = got.extend
    await settle()
    assert len(got) == 3 and sent(ends[0]) == 3
    end.close()
    await listener.close()


async def test_tx_room_shrinks_while_the_peer_does_not_read_and_wait_room_returns_when_it_does(sock_dir):
    listener, a, b = await pair(sock_dir)
    got = []
    b.receiver = got.extend
    reader = b.link.sock.fileno()
    asyncio.get_running_loop().remove_reader(reader)       # b stops reading
    a.transmit([b"\x02" * 1400] * 6000)
    assert a.tx_room() < veth.TX_QUEUE_FRAMES
    waiting = asyncio.create_task(a.wait_room(veth.TX_QUEUE_FRAMES))
    await settle()
    assert not waiting.done()
    asyncio.get_running_loop().add_reader(reader, b._on_readable)   # and reads again
    await asyncio.wait_for(waiting, 5)
    assert a.tx_room() == veth.TX_QUEUE_FRAMES and not a.drops
    b.close()
    await asyncio.wait_for(a.closed.wait(), 5)
    await asyncio.wait_for(a.wait_room(1), 5)                # a link that went: no waiting
    assert a.tx_room() is None                               # and no bound: drops count as link_down
    a.transmit([b"\x02" * 60])
    assert a.drops["link_down"] == 1
    await listener.close()


async def test_a_frame_too_long_for_the_wire_is_counted_and_the_rest_cross(sock_dir):
    listener, a, b = await pair(sock_dir)
    got = []
    b.receiver = got.extend
    frames = [b"\x01" * 60, b"\x02" * (veth.MAX_FRAME + 1), b"\x03" * veth.MAX_FRAME]
    a.transmit(frames)
    for _ in range(200):
        if len(got) == 2:
            break
        await asyncio.sleep(0.01)
    assert got == [frames[0], frames[2]]
    assert a.drops["oversize"] == 1 and sent(a) == 2 == handled(b)
    a.close()
    await listener.close()
