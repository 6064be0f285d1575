"""The traffic generator as a MAC flood (BlastRequest.random_src)."""
import random

from xenlab.domain.traffic import blast, random_unicast
from xenlab.net.device import NetDevice

SRC = bytes.fromhex("00163e000001")
DST = bytes.fromhex("00163e000002")


class Wire(NetDevice):
    def __init__(self):
        super().__init__("eth0", SRC)
        self.frames = []

    def transmit(self, frames):
        self.count_tx(frames)
        self.frames.extend(frames)


def test_random_sources_are_unicast_and_locally_administered():
    rng = random.Random(7)
    macs = [random_unicast(rng) for _ in range(2000)]
    assert all(m[0] & 0x01 == 0 and m[0] & 0x02 for m in macs)
    assert len(set(macs)) == len(macs)


async def test_a_flood_sends_every_frame_from_a_new_station():
    wire = Wire()
    result = await blast(wire, DST, 500, size=64, batch=64, random_src=True, rng=random.Random(1))
    assert result.sent == 500 and len(wire.frames) == 500
    sources = {f[6:12] for f in wire.frames}
    assert len(sources) == 500 and SRC not in sources
    assert all(f[:6] == DST and len(f) == 64 for f in wire.frames)
    plain = Wire()
    await blast(plain, DST, 10, size=64)
    assert {f[6:12] for f in plain.frames} == {SRC}
