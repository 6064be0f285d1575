"""The xenstore wire codec (xenlab.xen.xs_wire) on bytes: headers, payload
rules, error names, the ring layout; round trips and malformed streams."""
from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenlab.xen import xs_wire as w
from xenlab.xen.xs_wire import MessageReader, WireError, XsMessage, XsType

u32 = st.integers(0, 0xFFFFFFFF)
messages = st.builds(XsMessage, type=u32, req_id=u32, tx_id=u32,
                     payload=st.binary(max_size=w.XENSTORE_PAYLOAD_MAX))


def test_types_and_errors_are_xs_wire_h():
    assert [t.value for t in XsType] == [*range(20), *range(21, 27)]
    assert w.XS_TYPE_COUNT == 27 and w.XS_INVALID == 0xFFFF and w.XS_DEBUG == XsType.CONTROL
    assert 20 not in {t.value for t in XsType}          # XS_RESTRICT was removed
    assert [name for _, name in w.XSD_ERRORS] == [
        "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
        "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM"]
    for num, name in w.XSD_ERRORS:
        assert errno.errorcode[num] == name


def test_header_is_four_u32s():
    data = w.encode(XsMessage(XsType.READ, 7, 3, b"/a\0"))
    assert data == struct.pack("<IIII", 2, 7, 3, 3) + b"/a\0"
    assert w.HEADER_SIZE == 16


def test_ring_layout_is_xenstore_domain_interface():
    assert (w.XS_RING_REQ, w.XS_RING_RSP) == (0, 1024)
    assert (w.XS_RING_REQ_CONS, w.XS_RING_REQ_PROD, w.XS_RING_RSP_CONS, w.XS_RING_RSP_PROD) == \
        (2048, 2052, 2056, 2060)
    # xenstore.txt: the feature field is at offset 2064 of the ring page
    assert w.XS_RING_SERVER_FEATURES == 2064
    assert (w.XS_RING_CONNECTION, w.XS_RING_ERROR, w.XS_RING_EVTCHN_PORT) == (2068, 2072, 2076)
    assert w.MASK_XENSTORE_IDX(1024 + 5) == 5 and w.MASK_XENSTORE_IDX(0xFFFFFFFF) == 1023


@given(st.lists(messages, max_size=8), st.data())
def test_messages_round_trip_however_the_stream_is_cut(msgs, data):
    stream = b"".join(w.encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader, got = MessageReader(), []
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        reader.feed(stream[start:end])
        while (msg := reader.next()) is not None:
            got.append(msg)
    assert got == msgs
    assert reader.buffered == 0


def test_a_header_split_across_reads_waits_for_the_rest():
    data = w.encode(XsMessage(XsType.READ, 1, 0, b"/x\0"))
    reader = MessageReader()
    for byte in data[:-1]:
        reader.feed(bytes([byte]))
        assert reader.next() is None
    reader.feed(data[-1:])
    assert reader.next() == XsMessage(XsType.READ, 1, 0, b"/x\0")


@given(st.integers(w.XENSTORE_PAYLOAD_MAX + 1, 0xFFFFFFFF), u32)
def test_a_length_over_the_payload_limit_is_fatal(length, type_):
    reader = MessageReader()
    reader.feed(struct.pack("<IIII", type_, 1, 0, length))
    with pytest.raises(WireError) as info:
        reader.next()
    assert info.value.code == w.XENSTORE_ERROR_PROTO
    reader.feed(w.encode(XsMessage(XsType.READ, 2, 0, b"/\0")))
    with pytest.raises(WireError):      # the stream cannot be resynchronised
        reader.next()


def test_exactly_the_payload_limit_is_fine():
    msg = XsMessage(XsType.WRITE, 1, 0, b"/a\0" + b"v" * (w.XENSTORE_PAYLOAD_MAX - 3))
    reader = MessageReader()
    reader.feed(w.encode(msg))
    assert reader.next() == msg


def test_encode_refuses_what_cannot_be_sent():
    with pytest.raises(WireError):
        w.encode(XsMessage(XsType.WRITE, 1, 0, b"x" * (w.XENSTORE_PAYLOAD_MAX + 1)))
    with pytest.raises(WireError):
        w.encode(XsMessage(1 << 32, 1, 0, b""))
    with pytest.raises(WireError):
        w.encode(XsMessage(XsType.READ, -1, 0, b""))


@given(st.binary(max_size=64))
def test_payload_parsers_never_raise(payload):
    arg = w.onearg(payload)
    assert arg is None or arg + b"\0" == payload
    parts = w.strings(payload)
    assert len(parts) == w.count_strings(payload)
    assert all(b"\0" not in p for p in parts)
    assert w.join(*parts) == payload[:len(w.join(*parts))]


@pytest.mark.parametrize("payload,expected", [
    (b"/a\0", b"/a"), (b"\0", b""), (b"", None), (b"/a", None), (b"/a\0b\0", None),
    (b"/a\0\0", None), (b"/a\0tail", None)])
def test_onearg_is_exactly_one_string(payload, expected):
    assert w.onearg(payload) == expected


def test_strings_drop_an_unterminated_tail():
    assert w.strings(b"a\0b\0c") == [b"a", b"b"]
    assert w.strings(b"a\0\0") == [b"a", b""]
    assert w.strings(b"") == []


@pytest.mark.parametrize("num,name", list(w.XSD_ERRORS))
def test_error_names_round_trip(num, name):
    assert w.error_payload(num) == name.encode() + b"\0"
    assert w.error_from_payload(w.error_payload(num)) == num


def test_unlisted_errors_are_einval_both_ways():
    assert w.error_payload(errno.EDQUOT) == b"EINVAL\0"
    assert w.error_from_payload(b"EDQUOT\0") == errno.EINVAL
    assert w.error_from_payload(b"\xff\xfe") == errno.EINVAL


@given(st.integers(0, 0xFFFF), st.sampled_from("nrwb"))
def test_perms_round_trip(domid, letter):
    assert w.perm_from_string(w.perm_to_string(domid, letter)) == (domid, letter)


@pytest.mark.parametrize("text", [b"", b"r", b"x5", b"r-1", b"r5x", b"5r", b"R5", b"r 5"])
def test_malformed_perms_are_refused(text):
    with pytest.raises(ValueError):
        w.perm_from_string(text)


@pytest.mark.parametrize("text", [b"", b"-1", b"65536", b"0x10", b"1 ", b"999999"])
def test_malformed_domids_are_refused(text):
    with pytest.raises(ValueError):
        w.parse_domid(text)


# -- both sides of each bound, and what a refusal says -------------------------

@pytest.mark.parametrize("field", ["type", "req_id", "tx_id"])
def test_each_header_field_takes_a_whole_u32_and_no_more(field):
    top = XsMessage(**{"type": XsType.READ, field: 0xFFFFFFFF})
    assert w.HEADER.unpack_from(w.encode(top))[["type", "req_id", "tx_id"].index(field)] == 0xFFFFFFFF
    for bad in (0x1_0000_0000, -1):
        with pytest.raises(WireError) as err:
            w.encode(XsMessage(**{"type": XsType.READ, field: bad}))
        assert str(err.value) == f"{field} {bad} does not fit in a u32"
        assert err.value.code == w.XENSTORE_ERROR_PROTO


def test_an_oversized_payload_is_refused_saying_both_sizes():
    with pytest.raises(WireError) as err:
        w.encode(XsMessage(XsType.WRITE, payload=b"x" * 4097))
    assert str(err.value) == "a payload is 4096 bytes at most, not 4097"
    assert len(w.encode(XsMessage(XsType.WRITE, payload=b"x" * 4096))) == 16 + 4096


def test_a_fatal_header_says_what_it_announced():
    reader = MessageReader()
    reader.feed(struct.pack("<IIII", XsType.READ, 1, 0, 4097))
    with pytest.raises(WireError) as err:
        reader.next()
    assert str(err.value) == "a header announces 4097 payload bytes; the most is 4096"
    with pytest.raises(WireError) as again:
        reader.next()
    assert again.value is err.value


def test_the_reader_hands_out_one_message_at_a_time_and_keeps_the_rest():
    a = w.encode(XsMessage(XsType.READ, 1, 0, b"/a\0"))
    b = w.encode(XsMessage(XsType.WRITE, 2, 9, b"/b\0v"))
    reader = MessageReader()
    assert reader.next() is None and reader.buffered == 0
    reader.feed(a + b[:17])
    assert reader.buffered == len(a) + 17
    assert reader.next() == XsMessage(XsType.READ, 1, 0, b"/a\0")
    assert reader.buffered == 17 and reader.next() is None
    reader.feed(b[17:])
    assert reader.next() == XsMessage(XsType.WRITE, 2, 9, b"/b\0v") and reader.buffered == 0
    reader.feed(w.encode(XsMessage(XsType.RM, 3)))
    assert reader.next() == XsMessage(XsType.RM, 3, 0, b"")


def test_a_wire_error_defaults_to_a_protocol_error():
    assert WireError("x").code == w.XENSTORE_ERROR_PROTO == 3
    assert WireError("x", w.XENSTORE_ERROR_COMM).code == 1


def test_a_message_names_its_type():
    assert XsMessage(XsType.DIRECTORY_PART).type_name == "DIRECTORY_PART"
    assert XsMessage(20).type_name == "type 20"
    assert XsMessage(0xFFFF).type_name == "type 65535"


def test_error_names_of_unlisted_errnos_are_einval():
    assert w.error_name(errno.ENOENT) == "ENOENT" and w.error_name(errno.EPERM) == "EPERM"
    assert w.error_name(errno.EDQUOT) == "EINVAL"
    assert w.error_from_payload(b"ENOENT") == errno.ENOENT            # no NUL: still the name
    assert w.error_from_payload(b"EACCES\0junk") == errno.EACCES
    assert w.error_from_payload(b"EACCES\0more\0") == errno.EACCES    # the first string only


def test_join_terminates_every_string():
    assert w.join() == b"" and w.join(b"") == b"\0"
    assert w.join(b"a", b"bc") == b"a\0bc\0"
    assert w.count_strings(b"a\0bc\0d") == 2


@pytest.mark.parametrize("text, expected", [(b"0", 0), (b"65535", 65535), (b"00042", 42),
                                            (b"32752", 32752)])
def test_domids_in_range_are_taken(text, expected):
    assert w.parse_domid(text) == expected


@pytest.mark.parametrize("text", [b"000001", b"65536", b"99999"])
def test_domids_past_five_digits_or_16_bits_say_so(text):
    with pytest.raises(ValueError) as err:
        w.parse_domid(text)
    assert str(err.value) == f"bad domain id {text!r}"


@pytest.mark.parametrize("text, expected", [(b"n0", (0, "n")), (b"b65535", (65535, "b")),
                                            (b"w12", (12, "w"))])
def test_shortest_and_longest_perms(text, expected):
    assert w.perm_from_string(text) == expected
    assert w.perm_to_string(*expected) == text


def test_a_malformed_perm_says_what_a_perm_is():
    with pytest.raises(ValueError) as err:
        w.perm_from_string(b"x5")
    assert str(err.value) == "bad permission b'x5': n, r, w or b and a domain id"
