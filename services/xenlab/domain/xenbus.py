"""The xenbus client of a domain: xenstore access and watches for the
domain's kernel and drivers, over one xenstore connection (a
XenStoreTransport: the store ring, or the hypervisor's XenStore service).

Drivers register for a device type (``vif``); the client watches
``device/<type>`` (frontends) or ``backend/<type>`` (backends) and calls the
driver when a device directory appears or disappears, as Linux's xenbus
probe does.

Watch callbacks run one at a time, in the order xenstored fired their
events, in the client's own reader task (Linux's xenwatch thread): a
callback that waits on something that needs another event first would wait
for ever, so device code only posts work from them.
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import logging
from typing import Awaitable, Callable

from xenlab.domain.hypercall.xenstore import XenStoreTransport
from xenlab.xen.errors import XenError, XenStoreError

log = logging.getLogger(__name__)

WatchCallback = Callable[[str], Awaitable[None] | None]


class XenbusError(XenStoreError):
    """A watch refused, or a transaction that kept conflicting."""


class XenbusValueError(XenError):
    """A node's value is not UTF-8 text. xenstore values are bytes and any
    domain that may write a node may write any bytes into it: the reader
    gets this (EINVAL), a failure of what it was reading for (a device
    fails with xenbus_dev_fatal), not a UnicodeDecodeError."""

    def __init__(self, path: str, raw: bytes):
        shown = repr(raw[:40]) + (f"... ({len(raw)} bytes)" if len(raw) > 40 else "")
        super().__init__(errno.EINVAL, f"reading {path}: {shown} is not UTF-8 text")
        self.path = path


_LOST = object()


class XenbusClient:
    def __init__(self, store: XenStoreTransport, domid: int):
        self.store = store
        self.domid = domid
        self.home = f"/local/domain/{domid}"
        self._events: asyncio.Queue = asyncio.Queue()
        self._callbacks: dict[str, tuple[str, WatchCallback]] = {}
        self._tokens = itertools.count(1)
        self._reader: asyncio.Task | None = None
        self.closed = asyncio.Event()

    # -- plain xenstore -------------------------------------------------------
    def abspath(self, path: str) -> str:
        return path if path.startswith("/") or path.startswith("@") else f"{self.home}/{path}"

    async def read(self, path: str, default: str | None = None, tx: int = 0) -> str | None:
        """The node's value as text; raises XenbusValueError if it is not UTF-8."""
        raw = await self.read_bytes(path, tx=tx)
        if raw is None:
            return default
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise XenbusValueError(self.abspath(path), raw) from None

    async def read_bytes(self, path: str, tx: int = 0) -> bytes | None:
        """The node's value as stored, or None if there is no such node."""
        try:
            return await self.store.read(self.abspath(path), tx)
        except XenStoreError as err:
            if err.errno == errno.ENOENT:
                return None
            raise

    async def write(self, path: str, value: str, tx: int = 0) -> None:
        await self.store.write(self.abspath(path), value.encode(), tx)

    async def rm(self, path: str, tx: int = 0) -> None:
        try:
            await self.store.rm(self.abspath(path), tx)
        except XenStoreError as err:
            if err.errno != errno.ENOENT:
                raise

    async def directory(self, path: str, tx: int = 0) -> list[str]:
        try:
            return await self.store.directory(self.abspath(path), tx)
        except XenStoreError as err:
            if err.errno == errno.ENOENT:
                return []
            raise

    async def transaction(self, body: Callable[[int], Awaitable[None]], attempts: int = 16) -> None:
        """Run body(tx) in a transaction, retrying on EAGAIN as libxenstore users do."""
        for _ in range(attempts):
            tx = await self.store.transaction_start()
            try:
                await body(tx)
            except BaseException as err:
                await self._abort(tx, err)
                raise
            try:
                await self.store.transaction_end(tx, commit=True)
                return
            except XenStoreError as err:
                if err.errno != errno.EAGAIN:
                    raise
        raise XenbusError(errno.EAGAIN, f"transaction still conflicting after {attempts} attempts")

    async def _abort(self, tx: int, cause: BaseException) -> None:
        """End a transaction whose body failed, without committing. The
        body's failure is what the caller sees: the abort failing too (the
        connection lost with the domain) must not replace it, above all not
        a cancellation, which the cancelled task would then never see."""
        try:
            await self.store.transaction_end(tx, commit=False)
        except XenError as err:
            log.debug("aborting transaction %d after %r: %s", tx, cause, err.message)

    # -- watches -----------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open_watches(self._event, self._lost)
        self._reader = asyncio.get_running_loop().create_task(self._read_events(),
                                                              name="xenbus watches")

    def _event(self, path: str, token: str) -> None:
        self._events.put_nowait((path, token))

    def _lost(self, err: XenError) -> None:
        if err.errno != errno.ECANCELED:
            log.warning("xenstore connection ended: %s", err.message)
        self._events.put_nowait(_LOST)

    async def _read_events(self) -> None:
        try:
            while (item := await self._events.get()) is not _LOST:
                path, token = item
                entry = self._callbacks.get(token)
                if entry is None:
                    continue
                try:
                    result = entry[1](path)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("watch callback for %s failed", path)
        finally:
            self.closed.set()

    async def watch(self, path: str, callback: WatchCallback) -> str:
        """Watch a path; the callback gets the changed path. Fires once at once."""
        token = f"t{next(self._tokens)}"
        self._callbacks[token] = (path, callback)
        try:
            await self.store.watch(self.abspath(path), token)
        except XenError as err:
            self._callbacks.pop(token, None)
            raise XenbusError(err.errno, f"watch {path}: {err.message}") from None
        return token

    async def unwatch(self, token: str) -> None:
        entry = self._callbacks.pop(token, None)
        if entry is not None:
            await self.store.unwatch(self.abspath(entry[0]), token)

    async def close(self) -> None:
        await self.store.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class XenbusDriver:
    """A device driver as xenbus sees it (Linux's struct xenbus_driver)."""

    devicetype = ""
    side = "frontend"     # frontend: device/<type>/<devid>; backend: backend/<type>/<dom>/<devid>

    async def probe(self, path: str) -> None:
        """A device directory appeared."""

    async def remove(self, path: str) -> None:
        """A device directory went away."""

    def stale(self, path: str) -> bool:
        """The device at `path` has closed down for good (its end reached
        Closed, or it was torn down): if its directory is there when an
        event for the directory itself comes, it is a new device of the
        same name, made again after a removal the bus had not handled yet."""
        return False


class XenbusBus:
    """Watches the device directories of registered drivers and probes or
    removes devices as their directories come and go."""

    def __init__(self, xenbus: XenbusClient):
        self.xenbus = xenbus
        self.drivers: list[XenbusDriver] = []
        self.devices: dict[str, XenbusDriver] = {}
        self._scan_lock = asyncio.Lock()

    async def register(self, driver: XenbusDriver) -> None:
        self.drivers.append(driver)
        root = self._root(driver)
        await self.xenbus.watch(root, lambda path, d=driver: self._on_watch(d, path))

    def _root(self, driver: XenbusDriver) -> str:
        kind = "device" if driver.side == "frontend" else "backend"
        return f"{self.xenbus.home}/{kind}/{driver.devicetype}"

    @staticmethod
    def _depth(driver: XenbusDriver) -> int:
        """Path components from the root to a device directory."""
        return 1 if driver.side == "frontend" else 2

    async def _on_watch(self, driver: XenbusDriver, path: str) -> None:
        """Probe or remove only the devices the event's path can concern, as
        Linux's xenbus_probe_{frontend,backend} take the device from the
        path: every key any device writes fires this watch, so a full rescan
        per event would cost O(devices) calls each, O(N^2) for N domains."""
        root = self._root(driver)
        async with self._scan_lock:
            if path == root or not path.startswith(root + "/"):
                await self._reconcile(driver, await self._device_paths(driver), lambda p: True)
                return
            rel = path[len(root) + 1:].split("/")
            depth = self._depth(driver)
            if len(rel) >= depth:
                device = "/".join([root, *rel[:depth]])
                if len(rel) > depth and device in self.devices:
                    return      # a key of a device that is known: not ours to act on
                present = {device} if await self._exists(device) else set()
                if present and self.devices.get(device) is driver and driver.stale(device):
                    # Removed and made again (a detach and re-attach of the
                    # same devid) before this event of the removal came:
                    # the device there is not the one we know.
                    await self._reconcile(driver, set(), device)
                await self._reconcile(driver, present, device)
                return
            # A directory between the root and the devices (backend/vif/D).
            prefix = "/".join([root, *rel])
            present = {f"{prefix}/{d}" for d in await self.xenbus.directory(prefix)}
            await self._reconcile(driver, present, lambda p: p.startswith(prefix + "/"))

    async def _exists(self, path: str) -> bool:
        # The device node's own value is whatever its owner wrote: not read as text.
        return await self.xenbus.read_bytes(path) is not None

    async def _device_paths(self, driver: XenbusDriver) -> set[str]:
        root = self._root(driver)
        if driver.side == "frontend":
            return {f"{root}/{d}" for d in await self.xenbus.directory(root)}
        paths = set()
        for dom in await self.xenbus.directory(root):
            paths |= {f"{root}/{dom}/{d}" for d in await self.xenbus.directory(f"{root}/{dom}")}
        return paths

    async def _reconcile(self, driver: XenbusDriver, present: set[str],
                         in_scope: Callable[[str], bool] | str) -> None:
        """Bring the driver's devices whose paths are `in_scope` (or the
        one device at that path) in line with `present`: probe the new
        ones, remove the gone ones."""
        if isinstance(in_scope, str):
            # One device: a look-up, not a pass over every device (dom0
            # serves one per domain, and each handshake fires several).
            known = {in_scope} if self.devices.get(in_scope) is driver else set()
        else:
            known = {p for p, d in self.devices.items() if d is driver and in_scope(p)}
        for path in sorted(present - known):
            self.devices[path] = driver
            try:
                await driver.probe(path)
            except Exception:
                log.exception("%s: probe failed", path)
        for path in sorted(known - present):
            del self.devices[path]
            try:
                await driver.remove(path)
            except Exception:
                log.exception("%s: remove failed", path)
