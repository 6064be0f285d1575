"""Where events come from: adapters that watch a service from outside its
data path and hand messages to an EventSink (the MQTT publisher and the gRPC stream's
hub, neither of which ever blocks).

* ``HypervisorSource``: domain lifecycle, from the hypervisor's observer hook
  (``Hypervisor.observers``, called at every state change), and vif state
  and hotplug, from a xenstore watch on /local/domain held inside the
  hypervisor as the toolstack (the xenstore core fires it as any watch) and
  the toolstack's network-list.
* ``BridgeSource`` (xenlab.bridge.events): FDB and port events, and bridge
  and port counters, with the ``RateMeter`` and ``every`` of this module.
* ``Dom0Source``: per-vif counters as netback counts them, once an interval
  while they move (``Pacer``), and nothing while they stand still.

``DomainTracker``, ``VifTracker`` and ``RateMeter`` are the pure part: fed
snapshots, they say what changed since the last one.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable, Iterable, Mapping

from xenlab.events import topics as t
from xenlab.events.config import EventsConfig
from xenlab.events.publisher import EventPublisher
from xenlab.events.stream import EventHub, EventSink, Fanout
from xenlab.xen.digits import is_decimal
from xenlab.xen.errors import XenError

log = logging.getLogger(__name__)

WATCH_TOKEN = "xenlab-events"
# The fields of a vif whose change is worth a new vif.state message.
VIF_KEYS = ("state", "backend_state", "hotplug_status", "bridge", "mac", "ip", "vifname",
            "backend_id")
# Each side's link (drivers/link.py): a change is a vif.link message, not a vif.state.
LINK_KEYS = ("frontend_link", "backend_link")


# -- pure: what changed -------------------------------------------------------------
class DomainTracker:
    """Feed ``update`` the domains as they are now (Hypervisor.domain_info
    dicts plus ``run_state``, the RunState value); it returns the (info,
    state) pairs to publish: created on first sight, each state change, and
    destroyed when a domain is gone (or its id now names another domain).

    A domain is seen between its creation and the start of its process (the
    hypervisor writes its xenstore tree first, and a watch may look then):
    it is running only once it has a pid, unless it is never to have one."""

    def __init__(self) -> None:
        self._known: dict[int, dict] = {}

    @staticmethod
    def _state(info: dict) -> str | None:
        state = info["run_state"]
        if state == "running" and not info.get("pid") and info.get("launcher", "none") != "none":
            return None         # created; its process is being started
        return state

    def knows(self, domid: int) -> bool:
        return domid in self._known

    def update_one(self, domid: int, info: dict | None) -> list[tuple[dict, str]]:
        """As ``update``, for the one domain ``domid`` whose state changed
        (``info`` None: it is gone): the work does not grow with the others."""
        out = []
        last = self._known.get(domid)
        if last is not None and (info is None or info.get("uuid") != last.get("uuid")):
            out.append((last, "destroyed"))
            del self._known[domid]
            last = None
        if info is None:
            return out
        state = self._state(info)
        if last is None:
            if state == "dying":
                return out          # never seen alive: a create that failed
            out.append((info, "created"))
        elif self._state(last) == state:
            return out
        if state is not None:
            out.append((info, state))
        self._known[domid] = info
        return out

    def update(self, domains: Iterable[dict]) -> list[tuple[dict, str]]:
        current = {info["domid"]: info for info in domains}
        out = []
        for domid, last in list(self._known.items()):
            now = current.get(domid)
            if now is None or now.get("uuid") != last.get("uuid"):
                out.append((last, "destroyed"))
                del self._known[domid]
        for domid, info in sorted(current.items()):
            state = self._state(info)
            last = self._known.get(domid)
            if last is None:
                if state == "dying":
                    continue        # never seen alive: a create that failed
                out.append((info, "created"))
            elif self._state(last) == state:
                continue
            if state is not None:
                out.append((info, state))
            self._known[domid] = info
        return out


class VifTracker:
    """Feed ``update`` one domain's vifs as they are now (xl network-list
    dicts); it returns ("state", vif) for each new or changed vif,
    ("hotplug", vif) when hotplug-status takes a new value, and ("removed",
    vif) for each vif that is gone, with its states as Unknown."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int], dict] = {}
        self._published: dict[int, set[int]] = {}     # devids with a retained state, per domain
        self._linked: dict[int, set[int]] = {}        # and with a retained vif.link
        self._backends: dict[int, set[int]] = {}      # frontend domid -> its vifs' backend domids
        self._frontends: dict[int, set[int]] = {}     # and back: backend -> frontends it serves
        self._devids: dict[int, set[int]] = {}        # domid -> devids in _known

    def domids(self) -> set[int]:
        return {domid for domid, devids in self._devids.items() if devids}

    def _known_keys(self, domid: int) -> list[tuple[int, int]]:
        return [(domid, devid) for devid in self._devids.get(domid, ())]

    def forget(self, domid: int) -> set[int]:
        """The devids of ``domid`` that ever had a state, forgotten now (the
        domain is gone: their retained states are to be cleared)."""
        return self._published.pop(domid, set())

    def forget_links(self, domid: int) -> set[int]:
        """As ``forget``, for the vifs whose link was ever published."""
        return self._linked.pop(domid, set())

    def frontends_of(self, backend: int) -> set[int]:
        """The domains with a vif served by ``backend``, as last seen."""
        return set(self._frontends.get(backend, ()))

    def _index_backends(self, domid: int, vifs: list[dict]) -> None:
        now = {vif["backend_id"] for vif in vifs if vif.get("backend_id") is not None}
        before = self._backends.pop(domid, set())
        for backend in before - now:
            served = self._frontends.get(backend)
            if served is not None:
                served.discard(domid)
                if not served:
                    del self._frontends[backend]
        for backend in now - before:
            self._frontends.setdefault(backend, set()).add(domid)
        if now:
            self._backends[domid] = now

    def update(self, domid: int, vifs: Iterable[dict]) -> list[tuple[str, dict]]:
        out, seen = [], set()
        vifs = list(vifs)
        self._index_backends(domid, vifs)
        for vif in vifs:
            key = (domid, vif["devid"])
            seen.add(key)
            last = self._known.get(key)
            if last is not None and all(last.get(k) == vif.get(k) for k in VIF_KEYS + LINK_KEYS):
                continue
            if last is None or any(last.get(k) != vif.get(k) for k in VIF_KEYS):
                out.append(("state", vif))
            self._published.setdefault(domid, set()).add(vif["devid"])
            status = vif.get("hotplug_status", "")
            if status and (last is None or last.get("hotplug_status") != status):
                out.append(("hotplug", vif))
            if any((last or {}).get(k, "up") != vif.get(k, "up") for k in LINK_KEYS) \
                    or (last is None and any(vif.get(k, "up") != "up" for k in LINK_KEYS)):
                out.append(("link", vif))
                self._linked.setdefault(domid, set()).add(vif["devid"])
            self._known[key] = vif
            self._devids.setdefault(domid, set()).add(vif["devid"])
        for key in sorted(k for k in self._known_keys(domid) if k not in seen):
            last = self._known.pop(key)
            self._devids[domid].discard(key[1])
            out.append(("removed", {**last, "state": 0, "backend_state": 0, "hotplug_status": ""}))
        return out


class RateMeter:
    """Counters per second over the interval since the last sample of the
    same key (a topic): pure, fed the counters and the time of each message.
    A counter that went down (its device was re-created) counts from 0."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, dict]] = {}

    def sample(self, key: str, counters: Mapping[str, int], now: float) -> dict[str, float]:
        last = self._last.get(key)
        self._last[key] = (now, dict(counters))
        if last is None or now <= last[0]:
            return {}
        then, before = last
        rates = {}
        for name, value in counters.items():
            grown = value - before.get(name, 0)
            rates[name] = round((value if grown < 0 else grown) / (now - then), 3)
        return rates

    def restart(self, key: str, now: float) -> None:
        """The counters of ``key`` stood still from its last sample until
        ``now``: the next rates cover only the time since ``now``."""
        last = self._last.get(key)
        if last is not None:
            self._last[key] = (now, last[1])

    def forget(self, key: str) -> None:
        self._last.pop(key, None)

    def keep(self, keys) -> None:
        """Forget every key not in ``keys`` (a device gone)."""
        keys = set(keys)
        for key in [k for k in self._last if k not in keys]:
            del self._last[key]


def affected_domains(path: str, served_by: Callable[[int], set[int]] | None = None) -> set[int] | None:
    """The frontend domains whose vifs a change at `path` may concern;
    None for all of them, the empty set for none. ``served_by(B)``: the
    frontends whose vifs domain B serves (VifTracker.frontends_of), for a
    change to B's whole directory or backend directory; without it, such a
    change concerns every domain."""
    parts = path.rstrip("/").split("/")
    if len(parts) < 4:
        return None if "/local/domain".startswith(path.rstrip("/") or "/") else set()
    if parts[1:3] != ["local", "domain"] or not is_decimal(parts[3]):
        return set()
    domid, rest = int(parts[3]), parts[4:]
    if not rest:
        # A whole domain's directory (made at its creation, removed at its
        # destruction): its own vifs, and those it is the backend of.
        return None if served_by is None else {domid} | served_by(domid)
    if rest[0] == "device" and (len(rest) == 1 or rest[1] == "vif"):
        return {domid}
    if rest[0] == "backend" and (len(rest) == 1 or rest[1] == "vif"):
        if len(rest) >= 3 and is_decimal(rest[2]):
            return {int(rest[2])}
        return None if served_by is None else served_by(domid)
    return set()


# -- the hypervisor ---------------------------------------------------------------------
class HypervisorSource:
    """Domain lifecycle and vif state from inside the hypervisor process:
    ``hv`` is its Hypervisor, ``toolstack`` its Toolstack, whose identity
    (``caller``) the xenstore watch and reads are made as."""

    def __init__(self, hv, toolstack, publisher: EventSink,
                 clock: Callable[[], float] = time.time):
        self.hv = hv
        self.toolstack = toolstack
        self.publisher = publisher
        self.topics = publisher.topics
        self.clock = clock
        self.domains = DomainTracker()
        self.vifs = VifTracker()
        self._conn = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.hv.observers.append(self._on_change)
        self._open_watch()
        self._on_change()
        self._task = asyncio.create_task(self._watch_loop(), name="events-xenstore")

    async def close(self) -> None:
        if self._on_change in self.hv.observers:
            self.hv.observers.remove(self._on_change)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._close_watch()

    def _open_watch(self) -> None:
        caller = self.toolstack.caller
        self._conn = self.hv.xs_connections.open(caller)
        self.hv.xenstore.watch(caller, self._conn, "/local/domain", WATCH_TOKEN)

    def _close_watch(self) -> None:
        if self._conn is not None:
            self.hv.xenstore.drop_connection(self._conn)
            self.hv.xs_connections.close(self._conn)
            self._conn = None

    def _on_change(self, dom=None) -> None:
        """The hypervisor's observer hook, told which domain changed (None:
        look at them all): runs inside its state changes, so it only reads
        the domain table and queues messages."""
        try:
            now = self.clock()
            if dom is None:
                changes = self.domains.update(self._domain_infos())
            else:
                live = self.hv.domains.find(dom.domid) is dom
                changes = self.domains.update_one(dom.domid, self._domain_info(dom) if live else None)
            for info, state in changes:
                if state == "destroyed":
                    self._destroyed(info, now)
                else:
                    self.publisher.publish(t.domain_state(self.topics, info, state, now))
        except Exception:
            log.exception("domain events")

    def _destroyed(self, info: dict, now: float) -> None:
        """A domain's last messages: its vifs gone (if the xenstore watch has
        not said so yet), then destroyed, then its state topics cleared."""
        domid = info["domid"]
        gone = self.vifs.update(domid, [])
        for _, vif in gone:
            self.publisher.publish(t.vif_state(self.topics, vif, False, now))
        self.publisher.publish(t.domain_state(self.topics, info, "destroyed", now))
        for devid in sorted(self.vifs.forget(domid) | {vif["devid"] for _, vif in gone}):
            self.publisher.publish(t.cleared(self.topics.vif(domid, devid, "state")))
        for devid in sorted(self.vifs.forget_links(domid)):
            self.publisher.publish(t.cleared(self.topics.vif(domid, devid, "link")))
        self.publisher.publish(t.cleared(self.topics.domain_state(domid)))

    def _domain_infos(self) -> list[dict]:
        return [self._domain_info(dom) for dom in self.hv.domains]

    def _domain_info(self, dom) -> dict:
        return {**self.hv.domain_info(dom), "run_state": dom.state.value}

    async def _watch_loop(self) -> None:
        while True:
            event = await self._conn.queue.get()
            if self._conn.overflowed:
                # Events were lost: start over with a fresh watch and a full scan.
                log.warning("xenstore watch fell behind: rescanning every vif")
                self._close_watch()
                self._open_watch()
                self._rescan(None)
                continue
            served_by = self.vifs.frontends_of
            targets = affected_domains(event.path, served_by)
            # Everything already queued is one batch: one scan per domain.
            while targets is not None and not self._conn.queue.empty():
                more = affected_domains(self._conn.queue.get_nowait().path, served_by)
                targets = None if more is None else targets | more
            if targets is None:
                while not self._conn.queue.empty():
                    self._conn.queue.get_nowait()
            if targets is None or targets:
                self._rescan(targets)

    def _rescan(self, domids: set[int] | None) -> None:
        if domids is None:
            # Lifecycle changes come through the observer hook; a full rescan
            # (events were lost) checks them too. A targeted one must not:
            # it would rebuild every domain's info on every vif key, O(N^2).
            self._on_change()
            domids = {dom.domid for dom in self.hv.domains} | self.vifs.domids()
        now = self.clock()
        for domid in sorted(domids):
            dom = self.hv.domains.find(domid)
            if dom is not None and not self.domains.knows(domid):
                self._on_change(dom)        # its created comes before its vifs
            try:
                vifs = self.toolstack.network_list(domid)
            except XenError:
                vifs = []           # the domain is gone: so are its vifs
            for kind, vif in self.vifs.update(domid, vifs):
                if kind == "hotplug":
                    message = t.vif_hotplug(self.topics, vif, self._hotplug_error(vif), now)
                elif kind == "link":
                    message = t.vif_link(self.topics, vif, now)
                else:
                    message = t.vif_state(self.topics, vif, kind != "removed", now)
                self.publisher.publish(message)

    def _hotplug_error(self, vif: dict) -> str:
        if vif.get("hotplug_status") != "error" or not vif.get("backend_path"):
            return ""
        path = f"{vif['backend_path']}/hotplug-error"
        try:
            return self.hv.xenstore.read(self.toolstack.caller, path).decode(errors="replace")
        except XenError:
            return ""


# -- counters: published while they move ----------------------------------------------------
class Pacer:
    """When counters moved, publish them once an interval; while nothing
    moves, nothing runs: no timer, no look at any device (an idle lab costs
    no CPU, however many vifs and ports it has).

    ``moved(key)`` (from the data path, once per batch) marks ``key`` and
    arms the one timer if it is not armed. When it fires, ``publish(keys)``
    gets the keys that moved during the interval, and those that moved in
    the interval before but not in this one: their last message, whose rates
    say they stopped. The timer is armed again only while something moved."""

    def __init__(self, interval: float, publish: Callable[[list], None],
                 call_later: Callable[[float, Callable[[], None]], asyncio.TimerHandle]):
        self.interval = interval
        self._publish = publish
        self._call_later = call_later
        self._moved: set = set()
        self._active: set = set()       # moved during the interval last published
        self._new: set = set()          # to publish once (a device that appeared)
        self._timer: asyncio.TimerHandle | None = None
        self.ticks = 0

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def moving(self, key) -> bool:
        """Whether ``key`` moved since its last message, or in the interval
        that message covered (its counters did not stand still since)."""
        return key in self._moved or key in self._active

    def moved(self, key) -> None:
        self._moved.add(key)
        if self._timer is None:
            self._timer = self._call_later(self.interval, self.tick)

    def announce(self, key) -> None:
        """Publish ``key`` once at the next tick (it appeared), without the
        message that says it stopped moving."""
        self._new.add(key)
        if self._timer is None:
            self._timer = self._call_later(self.interval, self.tick)

    def forget(self, key) -> None:
        self._moved.discard(key)
        self._active.discard(key)
        self._new.discard(key)

    def tick(self) -> None:
        """The interval is over (or a caller wants the messages now)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        keys = self._moved | self._active | self._new
        self._active, self._moved, self._new = self._moved, set(), set()
        self.ticks += 1
        if keys:
            try:
                self._publish(sorted(keys))
            except Exception:
                log.exception("periodic events")
        if self._active and self._timer is None:
            self._timer = self._call_later(self.interval, self.tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# -- dom0 (any driver domain) -------------------------------------------------------------
class Dom0Source:
    """Every vif netback serves in this domain: its counters once an
    interval while they move, once more when they stop (rates at 0), and
    once when the vif appears; nothing while they stand still."""

    def __init__(self, kernel, publisher: EventSink, interval: float,
                 clock: Callable[[], float] = time.time):
        self.kernel = kernel
        self.publisher = publisher
        self.topics = publisher.topics
        self.interval = interval
        self.clock = clock
        self.rates = RateMeter()
        self.pacer: Pacer | None = None
        self._attached: dict[str, object] = {}      # vif name -> the device we follow

    def start(self) -> None:
        self.pacer = Pacer(self.interval, self._publish,
                           asyncio.get_running_loop().call_later)
        now = self.clock()
        for name, vif in list(self.kernel.vifs.items()):
            self._attach(name, vif, now)
        followers = getattr(self.kernel, "on_netif_change", None)
        if followers is not None:
            followers.append(self._netif_changed)

    def _topic(self, vif) -> str:
        return self.topics.vif(vif.frontend_id, vif.devid, "stats")

    def _attach(self, name: str, vif, now: float) -> None:
        self._attached[name] = vif
        self.rates.sample(self._topic(vif), _counters(vif.stats()), now)  # so the first message has rates
        vif.on_count = self._counted
        self.pacer.announce(name)           # its first message, at the next tick

    def _detach(self, name: str) -> None:
        vif = self._attached.pop(name, None)
        if vif is None:
            return
        if vif.on_count == self._counted:
            vif.on_count = None
        self.rates.forget(self._topic(vif))
        self.pacer.forget(name)

    def _netif_changed(self, name: str, device) -> None:
        if name in self._attached and self._attached[name] is not device:
            self._detach(name)
        if device is not None and self.kernel.vifs.get(name) is device and name not in self._attached:
            self._attach(name, device, self.clock())

    def _counted(self, vif) -> None:
        """A vif's counters moved (its data path, once per batch)."""
        name = vif.name
        if not self.pacer.moving(name):
            # They stood still since its last message: the rates start now.
            self.rates.restart(self._topic(vif), self.clock())
        self.pacer.moved(name)

    async def close(self) -> None:
        followers = getattr(self.kernel, "on_netif_change", None)
        if followers is not None and self._netif_changed in followers:
            followers.remove(self._netif_changed)
        for name in list(self._attached):
            self._detach(name)
        if self.pacer is not None:
            self.pacer.close()

    def publish_stats(self) -> None:
        """Publish what is due now rather than at the end of the interval."""
        self.pacer.tick()

    def _publish(self, names: list[str]) -> None:
        now = self.clock()
        for name in names:
            vif = self._attached.get(name)
            if vif is None:
                continue
            stats = vif.stats()
            topic = self._topic(vif)
            self.publisher.publish(t.vif_stats(self.topics, vif.frontend_id, vif.devid, name,
                                               self.kernel.domid, vif.state, stats, now,
                                               self.rates.sample(topic, _counters(stats), now)))


def _counters(stats: Mapping[str, int]) -> dict[str, int]:
    """NetDevice.stats() without its drop_REASON keys."""
    return {k: v for k, v in stats.items() if not k.startswith("drop_")}


# -- a service's events, started and stopped together ---------------------------------------
class ServiceEvents:
    """One service's events and their sources: ``async with`` starts the
    MQTT publisher (when there is a broker); ``add`` starts a source;
    leaving closes the sources, ends the gRPC streams, then flushes and
    closes the publisher. The sources publish to ``publisher``, a Fanout of
    the MQTT publisher and ``hub`` (the gRPC Events stream), so that both
    carry the same messages."""

    def __init__(self, config: EventsConfig, service: str):
        self.config = config
        self.mqtt = None if config.broker is None else EventPublisher(
            config.broker, config.topics, service, status_interval=config.interval)
        self.hub = EventHub(config.topics)
        self.publisher = Fanout(config.topics, [s for s in (self.mqtt, self.hub) if s is not None])
        self.sources: list = []

    def add(self, source):
        source.start()
        self.sources.append(source)
        return source

    async def __aenter__(self) -> "ServiceEvents":
        if self.mqtt is not None:
            self.mqtt.start()
        return self

    async def __aexit__(self, *exc) -> None:
        for source in reversed(self.sources):
            await source.close()
        self.sources.clear()
        self.hub.close()
        if self.mqtt is not None:
            await self.mqtt.close()


@contextlib.asynccontextmanager
async def service_events(config: EventsConfig | None, service: str):
    """ServiceEvents for `config`, or None when events are off."""
    if config is None:
        yield None
        return
    async with ServiceEvents(config, service) as events:
        yield events
