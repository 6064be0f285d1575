"""free_port: a port a service can bind, never one a connect could be
given as its own source port."""
import socket

from xenlab.osutil import _ephemeral_low, free_port


def test_the_port_is_free_and_below_the_ephemeral_range():
    low = _ephemeral_low()
    for _ in range(20):
        port = free_port()
        assert 1024 < port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))       # nobody holds it
            s.listen()

