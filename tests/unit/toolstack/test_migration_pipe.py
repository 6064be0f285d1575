"""xl migrate's pipe between the sender and `xl migrate-receive`: the
receiver takes one image off the stream and not a byte more (the sender's
"go" follows it on the same pipe), refuses a stream cut short or a record
claiming too much, and checks xl's fixed messages."""
from __future__ import annotations

import asyncio
import struct

import pytest

from xenlab.toolstack import save_client
from xenlab.toolstack.save_client import MigrationError, read_fixed, read_image
from xenlab.xen import save_stream as s


def image(pages: int = 300) -> bytes:
    """An image whose page record (300 pages: 1.2 MiB) spans many reads."""
    enc = s.StreamEncoder()
    out = enc.headers()
    out += enc.emit(s.json_record(s.REC_DOMAIN_CONFIG, {"name": "web"}))
    out += enc.emit(s.page_data([(gfn, bytes([gfn % 251]) * 4096) for gfn in range(pages)]))
    return out + enc.end()


def fed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 22)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def collect(reader) -> bytes:
    pieces = [piece async for piece in read_image(reader)]
    assert all(len(p) <= save_client.READ_CHUNK for p in pieces)
    return b"".join(pieces)


async def test_one_image_is_read_and_what_follows_it_is_left_on_the_stream():
    data = image()
    reader = fed(data + save_client.GO)
    assert await collect(reader) == data
    await read_fixed(reader, save_client.GO, "GO message")
    decoder = s.StreamDecoder()
    decoder.feed(data)
    assert decoder.done


async def test_a_stream_cut_inside_the_image_is_refused_saying_so():
    data = image()
    for cut in (10, s.HEADERS_SIZE + 5, len(data) // 2, len(data) - 1):
        with pytest.raises(MigrationError, match="ended inside the image"):
            await collect(fed(data[:cut]))


async def test_a_record_claiming_more_than_the_largest_is_refused_before_it_is_read():
    data = image()
    head = s.HEADERS_SIZE
    rtype, length, crc, reserved = struct.unpack_from("<IIII", data, head)
    bad = data[:head] + struct.pack("<IIII", rtype, s.MAX_BODY + 1, crc, reserved) + data[head + 16:]
    with pytest.raises(MigrationError, match="not an image: record DOMAIN_CONFIG claims 4202505 bytes"):
        await collect(fed(bad))


async def test_xls_messages_are_checked_whole():
    await read_fixed(fed(save_client.BANNER), save_client.BANNER, "banner")
    with pytest.raises(MigrationError, match="ended before the banner"):
        await read_fixed(fed(save_client.BANNER[:10]), save_client.BANNER, "banner")
    with pytest.raises(MigrationError, match="unexpected data instead of the ready message"):
        await read_fixed(fed(b"x" * len(save_client.READY)), save_client.READY, "ready message")
    # xl sends the banner without its NUL and the others with theirs
    assert save_client.BANNER.endswith(b".\n") and save_client.GO.endswith(b"\0")
