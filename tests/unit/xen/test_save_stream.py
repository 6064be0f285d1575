"""The save image codec (xen/save_stream.py): a round trip, and every kind
of damage refused with one line, whether the image comes whole or a byte
at a time."""
import errno
import hashlib
import struct
import zlib

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


# -- the encoder's bytes, field by field ----------------------------------------------------
def _records(*recs: bytes) -> bytes:
    """A whole stream of these records: headers, the records, a good END."""
    enc = s.StreamEncoder()
    out = enc.headers()
    for rec in recs:
        out += enc.emit(rec)
    return out + enc.end()


def _required() -> list[bytes]:
    return [s.json_record(s.REC_DOMAIN_CONFIG, {"name": "web"}), s.json_record(s.REC_DEVICES, []),
            s.xenstore_data([]), s.json_record(s.REC_VCPU_CONTEXT, {})]


def test_the_image_and_domain_headers_byte_by_byte():
    assert s.image_header() == b"\xff" * 8 + b"XLSV" + b"\0\0\0\1" + bytes(8)
    assert s.domain_header() == struct.pack("<IHHII", 1, 12, 0, 4, 19)
    assert s.domain_header(13)[4:6] == b"\x0d\x00"
    enc = s.StreamEncoder()
    assert enc.headers() == s.image_header() + s.domain_header() and enc.bytes_out == 40


def test_a_record_is_type_length_crc_reserved_body_and_padding():
    crc = zlib.crc32(struct.pack("<II", 0x12345678, 5) + b"hello")
    assert s.record(0x12345678, b"hello") == (struct.pack("<IIII", 0x12345678, 5, crc, 0)
                                             + b"hello" + bytes(3))
    assert len(s.record(1, b"12345678")) == 24
    assert s.record(1, b"") == struct.pack("<IIII", 1, 0, zlib.crc32(struct.pack("<II", 1, 0)), 0)
    assert s.json_record(4, {"b": 1, "a": [1, 2]})[16:] == b'{"a":[1,2],"b":1}' + bytes(7)
    assert s.end_record(b"d" * 32)[:8] == struct.pack("<II", s.REC_END, 32)


def test_the_largest_record_is_written_and_one_byte_more_is_refused():
    assert len(s.record(s.REC_PAGE_DATA, bytes(s.MAX_BODY))) == 16 + s.MAX_BODY
    with pytest.raises(ValueError) as err:
        s.record(s.REC_PAGE_DATA, bytes(s.MAX_BODY + 1))
    assert str(err.value) == (f"a PAGE_DATA record of {s.MAX_BODY + 1} bytes is over the "
                              f"{s.MAX_BODY}-byte limit")
    with pytest.raises(ValueError, match="^a 0x77 record of "):
        s.record(0x77, bytes(s.MAX_BODY + 1))


def test_page_data_layout_and_its_bounds():
    rec = s.page_data([(5, b"\1" * 4096), (s.MAX_PFN, b"\2" * 4096)])
    assert rec[16:] == struct.pack("<II2Q", 2, 0, 5, s.MAX_PFN) + b"\1" * 4096 + b"\2" * 4096
    full = s.page_data([(i, bytes(4096)) for i in range(s.MAX_BATCH)])
    assert len(full) == 16 + s.MAX_BODY
    assert [pfn for pfn, _ in s.parse_page_data(full[16:])] == list(range(s.MAX_BATCH))
    for n in (0, s.MAX_BATCH + 1):
        with pytest.raises(ValueError) as err:
            s.page_data([(i, bytes(4096)) for i in range(n)])
        assert str(err.value) == f"a page batch holds 1..1024 pages, not {n}"
    for size in (4095, 4097):
        with pytest.raises(ValueError, match="^every page is PAGE_SIZE bytes$"):
            s.page_data([(0, bytes(4096)), (1, bytes(size))])


def test_xenstore_data_layout():
    nodes = [s.XsNode("a", b"xy", ((s.SELF, "n"), (0, "r"))), s.XsNode("", b"", ())]
    body = (struct.pack("<I", 2) + struct.pack("<H", 1) + b"a" + struct.pack("<I", 2) + b"xy"
            + struct.pack("<H", 2) + struct.pack("<Hc", 0x7FF0, b"n") + struct.pack("<Hc", 0, b"r")
            + struct.pack("<HIH", 0, 0, 0))
    rec = s.xenstore_data(iter(nodes))
    assert rec[16:16 + len(body)] == body and rec[:8] == struct.pack("<II", 3, len(body))
    assert s.parse_xenstore_data(body) == nodes
    assert s.parse_xenstore_data(struct.pack("<I", 0)) == []


def test_the_end_record_carries_the_digest_of_every_byte_before_it():
    data = _records(*_required())
    assert data[-32:] == hashlib.sha256(data[:-48]).digest()
    enc = s.StreamEncoder()
    out = enc.headers() + enc.emit(b"x" * 5)
    assert enc.bytes_out == 45 and enc.end() == s.end_record(hashlib.sha256(out).digest())


# -- the decoder ---------------------------------------------------------------------------
def test_the_decoder_returns_each_record_once_and_not_the_end():
    data = _records(*_required())
    decoder = s.StreamDecoder()
    assert decoder.feed(data[:39]) == [] and decoder.offset == 24 and not decoder.done
    got = decoder.feed(data[39:])
    assert [r.name for r in got] == ["DOMAIN_CONFIG", "DEVICES", "XENSTORE_DATA", "VCPU_CONTEXT"]
    assert got[0] == s.Record(s.REC_DOMAIN_CONFIG, b'{"name":"web"}')
    assert decoder.done and decoder.offset == len(data)
    assert decoder.feed(b"") == []
    decoder.finish()
    with pytest.raises(s.StreamError) as err:
        decoder.feed(b"abcde")
    assert err.value.message == "5 byte(s) after the END record"
    with pytest.raises(s.StreamError) as err:
        s.StreamDecoder().feed(data + b"12")
    assert err.value.message == "2 byte(s) after the END record"
    assert s.Record(0x77, b"").name == "0x00000077" and s.Record(0, b"").name == "END"


@pytest.mark.parametrize("cut, where", [
    (0, "at byte 0, inside the image header"),
    (23, "at byte 23, inside the image header"),
    (24, "at byte 24, inside the domain header"),
    (39, "at byte 39, inside the domain header"),
    (40, "at byte 40, inside the records (no END record)"),
    (41, "at byte 41, inside the records (no END record)"),
    (-1, "inside the records (no END record)"),
])
def test_a_stream_cut_short_says_where(cut, where):
    data = _records(*_required())
    decoder = s.StreamDecoder()
    decoder.feed(data[:cut])
    with pytest.raises(s.StreamError) as err:
        decoder.finish()
    assert err.value.errno == errno.EINVAL
    assert err.value.message.startswith("truncated: the stream ends ")
    assert err.value.message.endswith(where)
    if cut == -1:
        assert err.value.message == (f"truncated: the stream ends at byte {len(data) - 1}, "
                                     f"inside the records (no END record)")


def _header(data: bytes, fmt: str, at: int, *values) -> bytes:
    raw = bytearray(data)
    struct.pack_into(fmt, raw, at, *values)
    return bytes(raw)


@pytest.mark.parametrize("change, message", [
    (lambda d: _header(d, ">Q", 0, s.MARKER - 1), "not a xenlab save image (bad magic)"),
    (lambda d: _header(d, ">I", 8, s.IMAGE_ID + 1), "not a xenlab save image (bad magic)"),
    (lambda d: _header(d, ">I", 12, 0),
     "save image version 0 is not supported (this xenlab reads version 1)"),
    (lambda d: _header(d, ">I", 12, 2),
     "save image version 2 is not supported (this xenlab reads version 1)"),
    (lambda d: _header(d, ">H", 16, s.OPT_BIG_ENDIAN), "big-endian save images are not supported"),
    (lambda d: _header(d, ">H", 16, 3), "big-endian save images are not supported"),
    (lambda d: _header(d, "<I", 24, 2), "guest type 0x2 is not xenlab's PV guest"),
    (lambda d: _header(d, "<I", 24, 0), "guest type 0x0 is not xenlab's PV guest"),
    (lambda d: _header(d, "<H", 28, 13), "page shift 13: this host's pages are 4096 bytes"),
    (lambda d: _header(d, "<H", 28, 11), "page shift 11: this host's pages are 4096 bytes"),
])
def test_a_bad_header_is_refused_with_why(change, message):
    data = change(_records(*_required()))
    with pytest.raises(s.StreamError) as err:
        s.StreamDecoder().feed(data)
    assert err.value.message == message


@pytest.mark.parametrize("at, fmt, value", [(16, ">H", 2), (30, "<H", 1), (32, "<I", 5)])
def test_a_header_field_the_reader_ignores_is_still_in_the_digest(at, fmt, value):
    """Another options bit, the domain header's reserved field or Xen
    version: read past, but any change to them fails the END record."""
    data = _header(_records(*_required()), fmt, at, value)
    with pytest.raises(s.StreamError) as err:
        s.decode(data)
    assert err.value.message == ("the END record's digest does not match the stream "
                                 "(a record is missing or altered)")


def test_the_largest_length_is_waited_for_and_one_more_is_refused_at_once():
    head = s.image_header() + s.domain_header()
    decoder = s.StreamDecoder()
    assert decoder.feed(head + struct.pack("<IIII", s.REC_PAGE_DATA, s.MAX_BODY, 0, 0)) == []
    assert decoder.offset == 40
    with pytest.raises(s.StreamError) as err:
        s.StreamDecoder().feed(head + struct.pack("<IIII", s.REC_DEVICES, s.MAX_BODY + 1, 0, 0))
    assert err.value.message == (f"record DEVICES at byte 40 claims {s.MAX_BODY + 1} bytes "
                                 f"(at most {s.MAX_BODY})")


def test_a_record_with_its_reserved_word_set_is_refused_even_with_a_good_crc():
    rec = bytearray(s.json_record(s.REC_DEVICES, []))
    struct.pack_into("<I", rec, 12, 1)
    with pytest.raises(s.StreamError) as err:
        s.decode(_records(bytes(rec)))
    assert err.value.message == "record DEVICES at byte 40: bad checksum (the file is corrupt)"


def test_a_crc_that_leaves_out_the_header_is_refused():
    body = b"[]"
    rec = struct.pack("<IIII", s.REC_DEVICES, 2, zlib.crc32(body), 0) + body + bytes(6)
    with pytest.raises(s.StreamError, match="record DEVICES at byte 40: bad checksum"):
        s.decode(_records(rec))


def test_unknown_records_named_by_their_type_and_place():
    with pytest.raises(s.StreamError) as err:
        s.decode(_records(s.json_record(s.REC_DEVICES, []), s.record(0x77, b"")))
    assert err.value.message == "record 0x00000077 at byte 64 is of an unknown mandatory type"
    decoder = s.StreamDecoder()
    got = decoder.feed(_records(s.record(s.OPTIONAL | 1, b"a"), s.record(s.OPTIONAL | 0x77, b""),
                                *_required()))
    assert decoder.skipped == 2 and len(got) == 4
    assert s.read_image(got, decoder).skipped == 2


def test_an_altered_end_record_is_refused():
    data = _records(*_required())
    bad = data[:-48] + s.end_record(bytes(32))
    with pytest.raises(s.StreamError, match="the END record's digest does not match"):
        s.decode(bad)


# -- record bodies ------------------------------------------------------------------------
def test_page_data_bodies_are_checked_before_a_page_is_given():
    assert _page_error(bytes(7)) == "PAGE_DATA record too short"
    assert _page_error(struct.pack("<II", 0, 0)) == "PAGE_DATA record of 0 pages has 8 bytes"
    over = struct.pack("<II", 1025, 0) + bytes(1025 * (8 + 4096))
    assert _page_error(over) == f"PAGE_DATA record of 1025 pages has {len(over)} bytes"
    one = struct.pack("<IIQ", 1, 0, 3) + b"p" * 4096
    assert _page_error(one + b"x") == "PAGE_DATA record of 1 pages has 4113 bytes"
    assert [(pfn, bytes(p)) for pfn, p in s.parse_page_data(one)] == [(3, b"p" * 4096)]
    top = struct.pack("<IIQ", 1, 0, s.MAX_PFN) + bytes(4096)
    assert [pfn for pfn, _ in s.parse_page_data(top)] == [s.MAX_PFN]
    past = struct.pack("<IIQ", 1, 0, s.MAX_PFN + 1) + bytes(4096)
    assert _page_error(past) == "PAGE_DATA: pfn 0x10000000000 is out of range"
    # libxc's type bits: XTAB (0xf) carries no contents; others are not used here
    xtab = struct.pack("<IIQQ", 2, 0, 0xF << 60 | 5, 6) + b"q" * 4096
    assert [(pfn, p if p is None else bytes(p)) for pfn, p in s.parse_page_data(xtab)] == \
        [(5, None), (6, b"q" * 4096)]
    assert _page_error(xtab + bytes(4096)) == \
        "PAGE_DATA record of 2 pages (1 with contents) has 8216 bytes"
    assert _page_error(struct.pack("<IIQ", 1, 0, 0x1 << 60 | 5) + bytes(4096)) == \
        "PAGE_DATA: page type 0x1 is not one this stream uses (0: a page, 0xf: XTAB, not present)"
    assert _page_error(struct.pack("<IIQ", 1, 0, 1 << 55 | 5) + bytes(4096)) == \
        f"PAGE_DATA: entry {1 << 55 | 5:#x} has reserved bits set"


def test_an_xtab_entry_after_a_page_takes_it_out_of_the_image_and_a_page_after_it_back():
    enc = s.StreamEncoder()
    data = enc.headers()
    for rtype, value in ((s.REC_DOMAIN_CONFIG, {}), (s.REC_DEVICES, []),
                         (s.REC_VCPU_CONTEXT, {"suspend_record_gfn": 1})):
        data += enc.emit(s.json_record(rtype, value))
    data += enc.emit(s.xenstore_data([]))
    data += enc.emit(s.page_data([(1, b"a" * 4096), (2, b"b" * 4096), (3, b"c" * 4096)]))
    data += enc.emit(s.page_data([(2, None), (3, None)]))       # given back during pre-copy
    data += enc.emit(s.page_data([(3, b"C" * 4096)]))           # and 3 populated again
    data += enc.end()
    assert s.decode(data).pages == {1: b"a" * 4096, 3: b"C" * 4096}


def _page_error(body: bytes) -> str:
    with pytest.raises(s.StreamError) as err:
        list(s.parse_page_data(body))
    return err.value.message


@pytest.mark.parametrize("body, message", [
    (b"", "XENSTORE_DATA record is malformed"),
    (struct.pack("<IH", 1, 5) + b"ab", "XENSTORE_DATA record is malformed"),
    (struct.pack("<IH", 1, 1) + b"\xff" + struct.pack("<IH", 0, 0),
     "XENSTORE_DATA record is malformed"),
    (struct.pack("<IH", 1, 1) + b"a" + struct.pack("<IH", 0, 1) + b"\0\0\xff",
     "XENSTORE_DATA record is malformed"),
    (struct.pack("<IH", 1, 1) + b"a" + struct.pack("<I", 9) + b"v",
     "XENSTORE_DATA record is malformed"),
    (struct.pack("<I", 0) + b"\0", "XENSTORE_DATA record has bytes past its last node"),
    (struct.pack("<IH", 1, 1) + b"a" + struct.pack("<IH", 0, 0) + b"\0",
     "XENSTORE_DATA record has bytes past its last node"),
])
def test_a_malformed_xenstore_record_is_refused(body, message):
    with pytest.raises(s.StreamError) as err:
        s.parse_xenstore_data(body)
    assert err.value.message == message


def test_records_put_together_and_their_refusals():
    image = s.decode(_records(s.page_data([(1, b"a" * 4096)]), *_required(),
                              s.page_data([(2, b"b" * 4096), (1, b"c" * 4096)])))
    assert image.pages == {1: b"c" * 4096, 2: b"b" * 4096}
    assert (image.config, image.devices, image.vcpu, image.xenstore) == ({"name": "web"}, [], {},
                                                                         [])
    assert image.skipped == 0
    twice = _required() + [s.json_record(s.REC_DEVICES, [])]
    with pytest.raises(s.StreamError) as err:
        s.decode(_records(*twice))
    assert err.value.message == "record DEVICES appears twice"
    with pytest.raises(s.StreamError) as err:
        s.decode(_records(*_required()[:3]))
    assert err.value.message == "no VCPU_CONTEXT record"
    bad = _required()[:1] + [s.record(s.REC_DEVICES, b"[")] + _required()[2:]
    with pytest.raises(s.StreamError) as err:
        s.decode(_records(*bad))
    assert err.value.message == "DEVICES record is not valid JSON"
    data = _records(*_required())
    decoder = s.StreamDecoder()
    records = decoder.feed(data[:-1])
    with pytest.raises(s.StreamError, match=": truncated: "):
        s.read_image(records, decoder)


def test_each_record_is_returned_as_soon_as_its_last_byte_arrives():
    """Fed a byte at a time, the decoder hands back a record with the byte
    that completes it, an empty-bodied one included, and not one byte
    before."""
    recs = [s.record(s.REC_DEVICES, b""), s.record(s.REC_DOMAIN_CONFIG, b"{}")]
    data = _records(*recs)
    ends = {40 + 16: s.REC_DEVICES, 40 + 16 + 24: s.REC_DOMAIN_CONFIG}
    decoder = s.StreamDecoder()
    for i in range(len(data) - 48):
        got = decoder.feed(data[i:i + 1])
        assert [r.rtype for r in got] == ([ends[i + 1]] if i + 1 in ends else [])
    assert decoder.feed(data[-48:-1]) == [] and not decoder.done
    assert decoder.feed(data[-1:]) == [] and decoder.done


def test_xenstore_fields_are_unsigned_to_their_full_width():
    """u16 path lengths, permission counts and domids, u32 counts and
    lengths: values with the top bit set go through as they are."""
    node = s.XsNode("p" * 40000, b"v", tuple((0xFFFF - i, "b") for i in range(40000)))
    rec = s.xenstore_data([node, s.XsNode("q", b"", ((0x8000, "w"),))])
    assert s.parse_xenstore_data(rec[16:16 + struct.unpack_from("<I", rec, 4)[0]]) == \
        [node, s.XsNode("q", b"", ((0x8000, "w"),))]


@pytest.mark.parametrize("body", [
    struct.pack("<I", 0x80000000),                            # a count no record can hold
    struct.pack("<IH", 1, 0xFFFF) + bytes(3 + 255 + 2),       # a path past the record
    struct.pack("<IHI", 1, 0, 0xFFFFFFF6),                    # a value past the record
    struct.pack("<IHIH", 1, 0, 0, 0xFFFF),                    # perms past the record
])
def test_a_length_with_its_top_bit_set_is_read_unsigned_and_refused(body):
    with pytest.raises(s.StreamError) as err:
        s.parse_xenstore_data(body)
    assert err.value.message == "XENSTORE_DATA record is malformed"


def test_a_page_count_with_its_top_bit_set_is_read_unsigned():
    assert _page_error(struct.pack("<II", 0xFFFFFFFF, 0)) == \
        "PAGE_DATA record of 4294967295 pages has 8 bytes"


def test_a_new_decoder_is_not_done():
    decoder = s.StreamDecoder()
    assert decoder.done is False and decoder.skipped == 0 and decoder.offset == 0
