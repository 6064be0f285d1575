"""The fork server's control protocol (xenlab.launchers.forkserver): what
each side accepts, the opt-out, and the fallback to spawning."""
import asyncio

import pytest

from xenlab.launchers import LocalLauncher, forkserver, make_launcher
from xenlab.launchers.base import DomainHandles
from xenlab.launchers.forkserver import ForkServerLauncher, ProtocolError, decode, encode
from xenlab.xen.start_info import StartInfo


def test_each_message_round_trips():
    for op, fields in (("launch", {"req": 1, "fds": list(forkserver.LAUNCH_FDS), "log_level": "INFO"}),
                       ("ready", {"pid": 7, "mergeable": True}), ("started", {"req": 1, "pid": 8}),
                       ("failed", {"req": 1, "error": "EAGAIN"}), ("exit", {"pid": 8, "status": -9})):
        assert decode(encode(op, **fields)) == {"op": op, **fields}


@pytest.mark.parametrize("data", [b"", b"\xff", b"[]", b'{"op": "fork"}', b'{"op": "exit", "pid": 1}',
                                  b'{"op": "exit", "pid": "1", "status": 0}',
                                  b'{"op": "exit", "pid": true, "status": 0}',
                                  b'{"op": "ready", "pid": 7}',
                                  b'{"op": "ready", "pid": 7, "mergeable": 1}',
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


async def test_a_fork_server_that_does_not_start_leaves_domains_spawned(monkeypatch):
    """A fork server that exits before it is ready (say, a thread after its
    imports): each domain is started as its own interpreter instead, and no
    new fork server is tried for every create."""
    tries = []

    async def not_ready(cls, python, log_level, timeout=0, page_sharing=False):
        tries.append(python)
        raise forkserver.ForkServerGone("it exited with 1 before it was ready")

    async def spawn(self, info, handles=None):
        return f"spawned d{info.domid}"

    monkeypatch.setattr(forkserver.ForkServer, "start", classmethod(not_ready))
    monkeypatch.setattr(forkserver, "become_subreaper", lambda: True)
    monkeypatch.setattr(LocalLauncher, "start", spawn)
    launcher = ForkServerLauncher()
    try:
        for domid in (1, 2):
            info = StartInfo(domid=domid, name=f"d{domid}", secret="s", hypervisor="unix:/x",
                             doorbell="", vcpus=1, console_log="/dev/null")
            assert await launcher.start(info, DomainHandles(memory_fd=5, doorbell_fd=6)) == f"spawned d{domid}"
    finally:
        await launcher.close()
    assert len(tries) == 1 and "before it was ready" in launcher.broken
