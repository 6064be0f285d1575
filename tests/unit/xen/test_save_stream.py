"""The save image codec (xen/save_stream.py): a round trip, and every kind
of damage refused with one line, whether the image comes whole or a byte
at a time."""
import struct

import pytest

from xenlab.xen import save_stream as s


def _image(pages=((0, b"\x01" * 4096), (7, b"\x07" * 4096)), extra: bytes = b"") -> bytes:
    enc = s.StreamEncoder()
    out = enc.headers()
    out += enc.emit(s.json_record(s.REC_DOMAIN_CONFIG, {"name": "web", "memory_mb": "32"}))
    out += enc.emit(s.json_record(s.REC_DEVICES, [{"devid": 0, "mac": "00:16:3e:00:00:01"}]))
    out += enc.emit(s.xenstore_data([s.XsNode("local/data/x", b"v", ((s.SELF, "n"), (0, "r")))]))
    out += enc.emit(s.json_record(s.REC_VCPU_CONTEXT, {"suspend_record_gfn": 1}))
    out += enc.emit(extra)
    out += enc.emit(s.page_data(list(pages)))
    out += enc.end()
    return out


def test_round_trip():
    image = s.decode(_image())
    assert image.config == {"name": "web", "memory_mb": "32"}
    assert image.devices == [{"devid": 0, "mac": "00:16:3e:00:00:01"}]
    assert image.xenstore == [s.XsNode("local/data/x", b"v", ((s.SELF, "n"), (0, "r")))]
    assert image.vcpu == {"suspend_record_gfn": 1}
    assert image.pages == {0: b"\x01" * 4096, 7: b"\x07" * 4096}


def test_round_trip_fed_a_byte_at_a_time():
    data = _image()
    decoder, records = s.StreamDecoder(), []
    for i in range(0, len(data), 1000):
        records += decoder.feed(data[i:i + 1000])
    assert s.read_image(records, decoder).pages[7] == b"\x07" * 4096


def test_records_are_padded_to_8_bytes():
    data = _image()
    offset = s.IHDR_SIZE + 16
    while offset < len(data):
        rtype, length, _, _ = struct.unpack_from("<IIII", data, offset)
        offset += 16 + length + (-length % 8)
        assert offset % 8 == 0
    assert offset == len(data)


def test_header_layout_is_libxc_like():
    marker, ident, version = struct.unpack_from(">QII", _image())
    assert (marker, ident, version) == (0xFFFFFFFFFFFFFFFF, s.IMAGE_ID, s.VERSION)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: b"\0" * 8 + d[8:], "bad magic"),
    (lambda d: d[:8] + b"XENF" + d[12:], "bad magic"),
    (lambda d: d[:12] + struct.pack(">I", 9) + d[16:], "version 9 is not supported"),
    (lambda d: d[:-5000], "truncated"),
    (lambda d: d[:s.IHDR_SIZE - 3], "truncated"),
    (lambda d: d[:-48], "truncated"),                         # the END record cut off
    (lambda d: d[:-100] + bytes([d[-100] ^ 1]) + d[-99:], "bad checksum"),
    (lambda d: d[:200] + bytes([d[200] ^ 0x40]) + d[201:], "bad checksum"),
    (lambda d: d + b"\0" * 8, "after the END record"),
])
def test_damage_is_refused(mutate, message):
    with pytest.raises(s.StreamError, match=message) as err:
        s.decode(mutate(_image()))
    assert "\n" not in str(err.value)


def test_a_record_dropped_from_the_middle_is_refused():
    data = _image()
    # The DEVICES record, whole and with a good checksum, taken out.
    first = s.IHDR_SIZE + 16
    _, length, _, _ = struct.unpack_from("<IIII", data, first)
    second = first + 16 + length + (-length % 8)
    _, length2, _, _ = struct.unpack_from("<IIII", data, second)
    cut = data[:second] + data[second + 16 + length2 + (-length2 % 8):]
    with pytest.raises(s.StreamError, match="digest"):
        s.decode(cut)


def test_unknown_mandatory_record_is_refused():
    with pytest.raises(s.StreamError, match="unknown mandatory type"):
        s.decode(_image(extra=s.record(0x00000077, b"future")))


def test_unknown_optional_record_is_skipped():
    image = s.decode(_image(extra=s.record(s.OPTIONAL | 0x77, b"a later xenlab's note")))
    assert image.skipped == 1 and image.pages


def test_huge_length_is_refused_before_it_is_waited_for():
    data = _image()
    at = s.IHDR_SIZE + 16
    bad = data[:at] + struct.pack("<I", s.REC_PAGE_DATA) + struct.pack("<I", 0xFFFFFFF0) + data[at + 8:]
    with pytest.raises(s.StreamError, match="claims"):
        s.StreamDecoder().feed(bad[:at + 16])


def test_a_required_record_missing_is_refused():
    enc = s.StreamEncoder()
    data = enc.headers() + enc.emit(s.page_data([(0, bytes(4096))])) + enc.end()
    with pytest.raises(s.StreamError, match="no VCPU_CONTEXT, XENSTORE_DATA, DOMAIN_CONFIG, DEVICES"):
        s.decode(data)


def test_page_data_with_a_wrong_length_is_refused():
    body = struct.pack("<II2Q", 2, 0, 1, 2) + bytes(4096)      # two pfns, one page
    enc = s.StreamEncoder()
    data = _image(extra=s.record(s.REC_PAGE_DATA, body))
    with pytest.raises(s.StreamError, match="PAGE_DATA record of 2 pages"):
        s.decode(data)
    del enc
