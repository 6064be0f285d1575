"""netback's xenstore keys (xenlab.drivers.netback.xenbus): the backend
directory the toolstack wrote and the frontend's ring details, parsed as
netback reads them; anything a domain may write that is not what the
protocol allows is refused with its errno."""
from __future__ import annotations

import errno
import ipaddress

import pytest

from xenlab.drivers.netback.xenbus import FrontendRings, parse_backend_dir, parse_frontend_keys
from xenlab.xen.errors import XenError

IP = ipaddress.IPv4Address("10.0.0.1")


# -- xenstore ------------------------------------------------------------------------------------------
BE = "/local/domain/0/backend/vif/3/1"
GOOD_BACKEND = {"frontend": "/local/domain/3/device/vif/1", "frontend-id": "3",
                "mac": "00:16:3e:00:00:01", "online": "1"}


def test_parse_backend_dir_defaults_and_values():
    cfg = parse_backend_dir(BE, GOOD_BACKEND)
    assert (cfg.name, cfg.bridge, cfg.mtu, cfg.ips, cfg.rate, cfg.online) == \
        ("vif3.1", "xenbr0", 1500, (), None, True)
    cfg = parse_backend_dir(BE, {**GOOD_BACKEND, "ip": "10.0.0.1/24 10.0.0.2", "rate": "10Mb/s@20ms",
                                 "mtu": "9000", "vifname": "web0", "bridge": "br1"})
    assert cfg.ips == (IP, ipaddress.IPv4Address("10.0.0.2"))
    assert (cfg.rate.credit_bytes, cfg.rate.credit_usec) == (25_000, 20_000)
    assert (cfg.name, cfg.mtu, cfg.bridge) == ("web0", 9000, "br1")


@pytest.mark.parametrize("change", [
    {"frontend": None}, {"frontend-id": "x"}, {"frontend-id": "4"}, {"mac": None},
    {"mac": "zz"}, {"ip": "10.0.0.300"}, {"rate": "fast"}, {"mtu": "20"}, {"mtu": "abc"},
    {"frontend": "/local/domain/4/device/vif/1"},
])
def test_parse_backend_dir_refuses(change):
    with pytest.raises(XenError):
        parse_backend_dir(BE, {**GOOD_BACKEND, **change})


GOOD_FRONTEND = {"tx-ring-ref": "8", "rx-ring-ref": "9", "event-channel": "5",
                 "request-rx-copy": "1", "feature-rx-notify": "1", "feature-sg": "1"}


def test_parse_frontend_keys():
    assert parse_frontend_keys(GOOD_FRONTEND) == FrontendRings(8, 9, 5, True, True)
    assert parse_frontend_keys({**GOOD_FRONTEND, "feature-xenlab-persistent": "1"}).persistent


@pytest.mark.parametrize("change, message", [
    ({"tx-ring-ref": None}, "tx-ring-ref: missing"),
    ({"rx-ring-ref": "nine"}, "rx-ring-ref"),
    ({"event-channel": "-1"}, "event-channel"),
    ({"event-channel": "0"}, "port 0"),
    ({"tx-ring-ref": str(1 << 32)}, "0..4294967295"),
    ({"request-rx-copy": None}, "rx-copy"),
    ({"request-rx-copy": "0"}, "rx-copy"),
    ({"multi-queue-num-queues": "4"}, "queues"),
])
def test_parse_frontend_keys_refuses(change, message):
    with pytest.raises(XenError, match=message):
        parse_frontend_keys({**GOOD_FRONTEND, **change})


# What a hostile frontend may write into each key netback reads as a
# number: Python's int() and str.isdigit() take several of these ('²' is a
# digit to isdigit() and a ValueError to int(); int('٣') is 3).
NOT_NUMBERS = ["²", "٣", "１", "3²", "x", "0x10", "-1", "+1", "1_0", "1e3", "", " ", "\u2003",
               "9" * 3000, str(1 << 64), "4\x00", "\udcff"]


@pytest.mark.parametrize("key", ["tx-ring-ref", "rx-ring-ref", "event-channel", "request-rx-copy",
                                 "feature-rx-notify", "feature-sg", "feature-xenlab-persistent"])
@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_every_frontend_number_key_refuses_what_is_not_an_ascii_number(key, value):
    if value.strip(" ") == "" and key.startswith("feature-"):
        # empty is a feature not offered (xenbus_read_unsigned's default)
        assert parse_frontend_keys({**GOOD_FRONTEND, key: value}) is not None
        return
    with pytest.raises(XenError) as err:
        parse_frontend_keys({**GOOD_FRONTEND, key: value})
    assert err.value.errno == errno.EINVAL or key == "request-rx-copy"
    assert key in err.value.message or "rx-copy" in err.value.message


def test_an_arabic_indic_digit_is_not_a_ring_ref():
    # int('٣') == 3: netback would have mapped ref 3
    with pytest.raises(XenError, match="tx-ring-ref"):
        parse_frontend_keys({**GOOD_FRONTEND, "tx-ring-ref": "٣"})


@pytest.mark.parametrize("key", ["frontend-id", "mtu"])
@pytest.mark.parametrize("value", ["²", "٣", "-1", "x", "9" * 3000])
def test_backend_dir_numbers_are_ascii_only(key, value):
    with pytest.raises(XenError):
        parse_backend_dir(BE, {**GOOD_BACKEND, key: value})
