"""The fork server's control protocol (xenlab.launchers.forkserver): what
each side accepts, and the opt-out."""
import asyncio

import pytest

from xenlab.launchers import LocalLauncher, forkserver, make_launcher
from xenlab.launchers.forkserver import ForkServerLauncher, ProtocolError, decode, encode


def test_each_message_round_trips():
    for op, fields in (("launch", {"req": 1, "fds": list(forkserver.LAUNCH_FDS), "log_level": "INFO"}),
                       ("ready", {"pid": 7}), ("started", {"req": 1, "pid": 8}),
                       ("failed", {"req": 1, "error": "EAGAIN"}), ("exit", {"pid": 8, "status": -9})):
        assert decode(encode(op, **fields)) == {"op": op, **fields}


@pytest.mark.parametrize("data", [b"", b"\xff", b"[]", b'{"op": "fork"}', b'{"op": "exit", "pid": 1}',
                                  b'{"op": "exit", "pid": "1", "status": 0}',
                                  b'{"op": "exit", "pid": true, "status": 0}',
                                  b'{"op": "launch", "req": 1, "fds": "memory", "log_level": "INFO"}'])
def test_a_malformed_message_is_a_protocol_error(data):
    with pytest.raises(ProtocolError):
        decode(data)


def test_a_message_over_the_datagram_size_is_refused_when_encoded():
    with pytest.raises(ProtocolError, match="at most"):
        encode("failed", req=1, error="x" * forkserver.MAX_MESSAGE)


@pytest.mark.parametrize("value, forked", [(None, True), ("on", True), ("off", False), ("0", False),
                                           ("no", False), ("OFF ", False)])
def test_local_domains_are_forked_unless_the_environment_says_off(value, forked):
    environ = {} if value is None else {forkserver.ENV: value}
    launcher = make_launcher("local", environ=environ)
    try:
        assert isinstance(launcher, ForkServerLauncher) is forked
        assert isinstance(launcher, LocalLauncher) and launcher.name == "local"
    finally:
        asyncio.run(launcher.close())       # its CPU cgroup
