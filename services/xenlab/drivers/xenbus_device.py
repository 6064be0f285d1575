"""What netfront and netback share around the pure state machine: one end of
a split device on xenbus (Linux's struct xenbus_device and xenbus_client.c).

Each device runs one task that handles its events in order: the other
end's state changed, our directory went away, a fatal error. Watch
callbacks only post events: they run inside the xenbus reader, which must
never wait on anything that itself needs the reader (a watch ack).
Subclasses say what Connect, Disconnect, Release and Unregister mean and
which machine (frontend or backend) decides.

The task never dies of what it reads: a value that cannot be decoded or
is not what the protocol allows, and any other failure of one step, fails
that one device with xenbus_dev_fatal (an ``error`` node, then Closing),
and the task goes on handling events. Its directory's removal tears the
device down whatever state it is in, even once the task has ended.
"""
from __future__ import annotations

import asyncio
import errno
import logging

from xenlab import eventloop
from xenlab.domain.xenbus import XenbusClient, XenbusDriver, XenbusValueError
from xenlab.drivers import xenbus_state as xs
from xenlab.xen.abi import XenbusState
from xenlab.xen.errors import XenError

log = logging.getLogger(__name__)

UNWATCH_TIMEOUT = 2.0    # a dead xenstore connection never acks
# xenbus_va_dev_error formats "%i %s" into a buffer of PRINTF_BUFFER_SIZE
# (4096) bytes, its NUL included: longer messages are cut there.
ERROR_NODE_MAX = 4095

_OTHEREND = "otherend"
_REMOVED = "removed"
_FATAL = "fatal"


class XenbusDevice:
    # How our messages name the other end ("saw state %d at frontend").
    otherend_kind = "other end"

    def __init__(self, xenbus: XenbusClient, nodename: str, label: str):
        self.xenbus = xenbus
        self.nodename = nodename          # absolute path of our own directory
        self.label = label                # for log lines: "vif1.0", "eth0"
        self.state = XenbusState.Initialising
        self.otherend: str | None = None
        self.otherend_state = XenbusState.Unknown
        self.error: str | None = None     # the last xenbus_dev_fatal message
        self.finished = asyncio.Event()   # the task has ended (unregistered or removed)
        self._events: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._watch: str | None = None
        self._removed = False             # our directory went away
        self._torn_down = False

    # -- what subclasses provide ----------------------------------------------------
    async def setup(self) -> None:
        """Read our directory, publish what we offer, then watch_otherend()."""

    def on_otherend(self, other: XenbusState) -> list[xs.Action]:
        raise NotImplementedError

    def on_fatal(self) -> list[xs.Action]:
        raise NotImplementedError

    async def connect(self) -> None:
        """Raise XenError(message) to fail the device (xenbus_dev_fatal)."""

    async def disconnect(self) -> None:
        pass

    async def release(self) -> None:
        pass

    async def teardown(self) -> None:
        """Our directory is gone: undo everything, write nothing."""

    def shutdown_local(self) -> None:
        """The domain is going away: let go of everything, without hypercalls."""

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"xenbus {self.nodename}")

    def removed(self) -> None:
        """Our directory went away: tear the device down, whatever its task is doing."""
        self._removed = True
        if self._task is not None and not self._task.done():
            self._events.put_nowait((_REMOVED, None))
            return
        # The task has ended (the device unregistered itself, or never
        # started): nobody reads the queue any more, so tear down here.
        self._task = asyncio.get_running_loop().create_task(
            self._teardown_once(), name=f"xenbus {self.nodename} removed")

    def fatal(self, message: str, err: int = errno.EINVAL) -> None:
        """Report a fatal error from outside the device task (a data path worker)."""
        self._events.put_nowait((_FATAL, (err, message)))

    async def stop(self) -> None:
        """Cancel the device task (the domain is shutting down)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        stopped = False
        try:
            await self._guarded("setting up", self.setup)
            while True:
                kind, arg = await self._events.get()
                if kind == _REMOVED:
                    return
                if kind == _FATAL:
                    await self._fatal_guarded(*arg)
                elif kind == _OTHEREND and await self._guarded(
                        f"handling the {self.otherend_kind}'s state", self._otherend_changed):
                    return
        except asyncio.CancelledError:
            stopped = True      # the domain is going away: shutdown_local() follows
            raise
        finally:
            await self._unwatch()
            if self._removed and not stopped:
                # Also when removal came while an Unregister was ending the task.
                await self._teardown_once()
            self.finished.set()

    async def _guarded(self, what: str, step) -> bool:
        """One step of the device's work. Its failure fails this device
        (xenbus_dev_fatal), not the task: a typed error with its errno, a bug
        as EIO, logged with its traceback. Returns what the step returns,
        False if it failed."""
        try:
            return bool(await step())
        except asyncio.CancelledError:
            raise
        except XenError as err:
            await self._fatal_guarded(err.errno, err.message)
        except Exception as err:
            log.exception("%s: %s failed", self.nodename, what)
            await self._fatal_guarded(errno.EIO, f"{what}: {type(err).__name__}: {err}")
        return False

    async def _fatal_guarded(self, err: int, message: str) -> None:
        try:
            await self.dev_fatal(err, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: failing the device after %r failed too", self.nodename, message)

    async def _teardown_once(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        try:
            await self.teardown()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: tearing the device down failed", self.nodename)

    # -- the other end -------------------------------------------------------------------
    async def watch_otherend(self, otherend: str) -> None:
        self.otherend = otherend
        self._watch = await self.xenbus.watch(f"{otherend}/state", self._poke)

    def _poke(self, _path: str) -> None:
        self._events.put_nowait((_OTHEREND, None))

    async def _unwatch(self) -> None:
        token, self._watch = self._watch, None
        if token is not None:
            try:
                await eventloop.wait_for(self.xenbus.unwatch(token), UNWATCH_TIMEOUT)
            except Exception as err:
                log.debug("%s: unwatch failed: %s", self.nodename, err)

    async def _otherend_changed(self) -> bool:
        """Returns True when the device unregistered itself. A value that is
        not a state (or not text) raises XenError: a fatal error."""
        other = xs.parse_state(await self._read(f"{self.otherend}/state"), self.otherend_kind)
        if other == self.otherend_state:
            # Queued pokes that saw the same state: Linux's watch fires once per
            # change, and a second reaction to one change would undo ours
            # (a fatal Closing walked back to Connected).
            return False
        self.otherend_state = other
        return await self.run_actions(self.on_otherend(other))

    # -- doing things ---------------------------------------------------------------------
    async def run_actions(self, actions: list[xs.Action]) -> bool:
        """Carry out the machine's actions in order; True on Unregister."""
        for action in actions:
            if isinstance(action, xs.SwitchState):
                await self.switch_state(action.state)
            elif isinstance(action, xs.Connect):
                try:
                    await self.connect()
                except XenError as err:
                    await self.dev_fatal(err.errno, err.message)
                    return False
            elif isinstance(action, xs.Fatal):
                await self.dev_fatal(action.errno, action.message)
                return False
            elif isinstance(action, xs.Disconnect):
                await self.disconnect()
            elif isinstance(action, xs.Release):
                await self.release()
            elif isinstance(action, xs.Unregister):
                await self.unregister()
                return True
        return False

    async def unregister(self) -> None:
        """device_unregister: our side of the device is gone; the directory stays."""
        await self.release()

    async def switch_state(self, state: XenbusState) -> None:
        """xenbus_switch_state: write our state, unless our directory is gone."""
        if state == self.state:
            return
        xs.check_transition(self.state, state)
        self.state = state
        path = f"{self.nodename}/state"

        async def body(tx: int) -> None:
            if await self.xenbus.read_bytes(path, tx=tx) is None:
                return      # removed under us: do not recreate the node
            await self.xenbus.write(path, str(int(state)), tx=tx)

        try:
            await self.xenbus.transaction(body)
        except XenError as err:
            log.warning("%s: writing state %s failed: %s", self.nodename, state.name, err.message)
        self.state_changed(state)

    def state_changed(self, state: XenbusState) -> None:
        """Hook: our own state moved."""

    async def dev_fatal(self, err: int, message: str) -> None:
        """xenbus_dev_fatal (drivers/xen/xenbus/xenbus_client.c): as
        xenbus_va_dev_error, "%i %s" of the errno and the message into
        ``error`` under error/<our nodename> in our own domain's directory,
        then Closing (xenbus_switch_state), with what on_fatal takes down."""
        log.error("%s: %s", self.label, message)
        self.error = message
        relative = self.nodename[len(self.xenbus.home) + 1:]
        text = f"{err} {message}".encode()[:ERROR_NODE_MAX].decode(errors="ignore")
        try:
            await self.xenbus.write(f"error/{relative}/error", text)
        except XenError as write_err:
            log.warning("%s: writing the error node failed: %s", self.nodename, write_err.message)
        await self.run_actions(self.on_fatal())

    async def _read(self, path: str) -> str | None:
        try:
            return await self.xenbus.read(path)
        except XenbusValueError:
            raise
        except XenError as err:
            log.debug("%s: reading %s: %s", self.nodename, path, err.message)
            return None

    async def read_keys(self, directory: str, keys) -> dict[str, str | None]:
        values = await asyncio.gather(*(self._read(f"{directory}/{k}") for k in keys))
        return dict(zip(keys, values))


class XenbusDeviceDriver(XenbusDriver):
    """A driver of split devices: one XenbusDevice per device directory.
    probe starts the device's task and waits for nothing (it runs inside
    the xenbus reader); remove tears the device down, whatever it is
    doing; close, when the domain is going, stops every device and lets
    go of what it holds without hypercalls."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.devices: dict[str, XenbusDevice] = {}

    def new_device(self, path: str) -> XenbusDevice:
        raise NotImplementedError

    async def probe(self, path: str) -> None:
        dev = self.new_device(path)
        self.devices[path] = dev
        dev.start()

    async def remove(self, path: str) -> None:
        dev = self.devices.pop(path, None)
        if dev is not None:
            dev.removed()

    def stale(self, path: str) -> bool:
        dev = self.devices.get(path)
        return dev is not None and (dev.state == XenbusState.Closed or dev.finished.is_set())

    async def close(self) -> None:
        for dev in list(self.devices.values()):
            await dev.stop()
            dev.shutdown_local()
        self.devices.clear()
