"""XenbusDevice, the task around the pure state machine, on a xenstore of
plain dicts: what fails a device (and how it says so), and that the
removal of its directory tears it down whatever its task is doing."""
from __future__ import annotations

import asyncio
import errno
import itertools

import pytest

from xenlab.domain.xenbus import XenbusValueError
from xenlab.drivers import xenbus_state as xs
from xenlab.drivers.xenbus_device import XenbusDevice
from xenlab.xen.abi import XenbusState as S

HOME = "/local/domain/0"
NODE = f"{HOME}/backend/vif/3/0"
OTHER = "/local/domain/3/device/vif/0"
ERROR = f"{HOME}/error/backend/vif/3/0/error"


class DictXenbus:
    """The parts of XenbusClient a device uses, over a dict of bytes."""

    def __init__(self):
        self.home = HOME
        self.nodes: dict[str, bytes] = {}
        self.watches: dict[str, tuple[str, object]] = {}
        self._tokens = itertools.count(1)

    async def read_bytes(self, path: str, tx: int = 0) -> bytes | None:
        return self.nodes.get(path)

    async def read(self, path: str, default: str | None = None, tx: int = 0) -> str | None:
        raw = self.nodes.get(path)
        if raw is None:
            return default
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise XenbusValueError(path, raw) from None

    async def write(self, path: str, value: str, tx: int = 0) -> None:
        path = path if path.startswith("/") else f"{HOME}/{path}"
        self.nodes[path] = value.encode()
        for watched, callback in list(self.watches.values()):
            if path == watched or path.startswith(watched + "/"):
                callback(path)

    async def transaction(self, body) -> None:
        await body(1)

    async def watch(self, path: str, callback) -> str:
        token = f"t{next(self._tokens)}"
        self.watches[token] = (path, callback)
        callback(path)
        return token

    async def unwatch(self, token: str) -> None:
        self.watches.pop(token, None)


class Device(XenbusDevice):
    """A backend that records what it was asked to do; ``broken`` names
    the hooks that raise (a bug), ``hold`` makes connect wait."""

    otherend_kind = "frontend"

    def __init__(self, xenbus, broken=(), hold: asyncio.Event | None = None):
        super().__init__(xenbus, NODE, "vif3.0")
        self.log: list[str] = []
        self.broken = set(broken)
        self.hold = hold

    def _maybe_break(self, hook: str) -> None:
        self.log.append(hook)
        if hook in self.broken:
            raise RuntimeError(f"{hook} is broken")

    async def setup(self) -> None:
        self._maybe_break("setup")
        await self.switch_state(S.InitWait)
        await self.watch_otherend(OTHER)

    def on_otherend(self, other):
        self._maybe_break("on_otherend")
        return xs.backend_on_frontend_changed(self.state, other, True)

    def on_fatal(self):
        self._maybe_break("on_fatal")
        return xs.backend_on_fatal(self.state)

    async def connect(self) -> None:
        self._maybe_break("connect")
        if self.hold is not None:
            await self.hold.wait()

    async def disconnect(self) -> None:
        self._maybe_break("disconnect")

    async def teardown(self) -> None:
        self._maybe_break("teardown")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
def bus() -> DictXenbus:
    xenbus = DictXenbus()
    xenbus.nodes[f"{NODE}/state"] = b"1"
    return xenbus


async def started(bus, **kw) -> Device:
    dev = Device(bus, **kw)
    dev.start()
    await settle()
    return dev


async def test_a_value_that_is_not_utf8_fails_the_device_with_errno_and_message(bus):
    dev = await started(bus)
    await bus.write(f"{OTHER}/state", "4")
    await settle()
    assert dev.state == S.Connected
    bus.nodes[f"{OTHER}/state"] = b"\xff"
    dev._poke(f"{OTHER}/state")
    await settle()
    assert bus.nodes[ERROR] == f"22 reading {OTHER}/state: b'\\xff' is not UTF-8 text".encode()
    assert bus.nodes[f"{NODE}/state"] == b"5" and dev.log[-1] == "disconnect"
    assert not dev.finished.is_set()
    dev.removed()
    await asyncio.wait_for(dev.finished.wait(), 5)
    assert dev.log[-1] == "teardown"


async def test_a_bug_in_one_step_fails_the_device_with_eio_and_the_task_goes_on(bus):
    dev = await started(bus, broken={"connect"})
    await bus.write(f"{OTHER}/state", "4")
    await settle()
    assert bus.nodes[ERROR] == b"5 handling the frontend's state: RuntimeError: connect is broken"
    assert bus.nodes[f"{NODE}/state"] == b"5"
    await bus.write(f"{OTHER}/state", "6")          # the frontend closes: the task still reacts
    await settle()
    assert bus.nodes[f"{NODE}/state"] == b"6"
    assert dev.log.count("connect") == 1 and not dev.finished.is_set()


async def test_a_device_that_cannot_even_fail_is_still_torn_down_by_its_removal(bus):
    dev = await started(bus, broken={"on_otherend", "on_fatal"})
    await bus.write(f"{OTHER}/state", "4")
    await settle()
    assert bus.nodes[ERROR].startswith(b"5 handling the frontend's state")
    dev.removed()
    await asyncio.wait_for(dev.finished.wait(), 5)
    assert dev.log[-1] == "teardown"


async def test_a_failed_setup_leaves_a_device_its_removal_still_tears_down(bus):
    dev = await started(bus, broken={"setup"})
    assert bus.nodes[ERROR] == b"5 setting up: RuntimeError: setup is broken"
    assert bus.nodes[f"{NODE}/state"] == b"5"
    dev.removed()
    await asyncio.wait_for(dev.finished.wait(), 5)
    assert dev.log[-1] == "teardown"


async def test_removal_after_the_device_unregistered_itself_tears_down_once(bus):
    dev = await started(bus)
    await bus.write(f"{OTHER}/state", "4")
    await settle()
    del bus.nodes[f"{OTHER}/state"]                  # the frontend vanished: Closed, unregister
    dev._poke(f"{OTHER}/state")
    await asyncio.wait_for(dev.finished.wait(), 5)
    assert bus.nodes[f"{NODE}/state"] == b"6" and "teardown" not in dev.log
    dev.removed()
    dev.removed()
    await settle()
    assert dev.log.count("teardown") == 1


async def test_removal_while_a_step_is_running_is_handled_after_it(bus):
    hold = asyncio.Event()
    dev = await started(bus, hold=hold)
    await bus.write(f"{OTHER}/state", "4")
    await settle()
    assert dev.log[-1] == "connect"                   # waiting inside connect
    dev.removed()
    await settle()
    assert "teardown" not in dev.log
    hold.set()
    await asyncio.wait_for(dev.finished.wait(), 5)
    assert dev.log[-1] == "teardown"


async def test_the_error_node_is_cut_where_linux_cuts_it(bus):
    dev = await started(bus)
    await dev.dev_fatal(errno.EINVAL, "x" * 10_000)
    assert bus.nodes[ERROR] == b"22 " + b"x" * (4095 - 3)
