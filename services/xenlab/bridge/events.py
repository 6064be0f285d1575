"""The bridge service's events: FDB and port events as they happen (as
`bridge monitor fdb link` shows them, each with the line it prints), and
bridge and port counters once an interval while they move, published
through the service's event sink (xenlab.events: MQTT and the gRPC Events
stream)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from xenlab.bridge import output
from xenlab.bridge.core import PortEvent
from xenlab.bridge.server import bridge_id_text, fdb_event, port_info
from xenlab.events import topics as t
from xenlab.events.stream import EventSink
from xenlab.events.sources import Pacer, RateMeter
from xenlab.proto import bridge_pb2
from xenlab.xen.errors import XenError

log = logging.getLogger(__name__)


class BridgeSource:
    """FDB and port events as they happen (as `bridge monitor fdb link`
    shows them); a bridge's counters, and those of each of its ports that
    moved, once an interval while frames flow, once more when they stop
    (rates at 0), and nothing while the bridge is idle."""

    def __init__(self, service, publisher: EventSink, interval: float,
                 clock: Callable[[], float] = time.time):
        self.service = service
        self.publisher = publisher
        self.topics = publisher.topics
        self.interval = interval
        self.clock = clock
        self.overflows = 0
        self.rates = RateMeter()
        self.pacer: Pacer | None = None
        # Per bridge: port -> what its last message said; the ports that moved
        # in the last interval.
        self._ports_seen: dict[str, dict[str, tuple]] = {}
        self._ports_moving: dict[str, set[str]] = {}
        self._sub = None
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.pacer = Pacer(self.interval, self._publish, asyncio.get_running_loop().call_later)
        now = self.clock()
        for br in self.service.bridges.values():       # so that the first message has rates
            self.rates.sample(self.topics.bridge_stats(br.name), br.counters, now)
            for port in list(br.ports.values()):
                self.rates.sample(self.topics.port_stats(br.name, port.name), port.stats(), now)
            self.pacer.announce(br.name)                # the first messages, at the next tick
        self.service.on_traffic.append(self._moved)
        self._sub = self.service.subscribe(link=True)
        self._tasks = [asyncio.create_task(self._fdb_loop(), name="events-fdb")]

    async def close(self) -> None:
        if self._moved in self.service.on_traffic:
            self.service.on_traffic.remove(self._moved)
        if self.pacer is not None:
            self.pacer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._sub is not None:
            self.service.unsubscribe(self._sub)
            self._sub = None

    def _moved(self, br) -> None:
        """The bridge forwarded, dropped or sent frames (once per batch)."""
        if not self.pacer.moving(br.name):
            # Its counters stood still since its last message: the rates start now.
            now = self.clock()
            self.rates.restart(self.topics.bridge_stats(br.name), now)
            for port in br.ports.values():
                self.rates.restart(self.topics.port_stats(br.name, port.name), now)
        self.pacer.moved(br.name)

    async def _fdb_loop(self) -> None:
        while True:
            try:
                item = await self._sub.get()
            except XenError as err:
                # Cut off for falling behind: some events are lost; go on from now.
                self.overflows += 1
                log.warning("FDB events: %s", err.message)
                self.service.unsubscribe(self._sub)
                self._sub = self.service.subscribe(link=True)
                continue
            if item is None:
                return              # the service stopped
            event, wall = item
            self.publisher.publish(self._message(event, wall))
            if isinstance(event, PortEvent) and event.bridge in self.service.bridges:
                self._moved(self.service.bridges[event.bridge])     # its port counters change too

    def _message(self, event, wall: float) -> t.Message:
        if not isinstance(event, PortEvent):
            proto = fdb_event(event, wall)
            return t.fdb_event(self.topics, {**event.to_dict(),
                                             "monitor": output.fdb_event_fields(proto).line()}, wall)
        br = self.service.bridges.get(event.bridge)
        # The role is the port's as STP sees it now (events are published as they come).
        live = br is not None and event.kind != "deleted" and event.port.name in br.ports
        info = port_info(event.port, self.service.links.get((event.bridge, event.port.name)),
                         br if live else None)
        line = output.link_event_fields(bridge_pb2.PortEvent(kind=event.kind, bridge=event.bridge,
                                                             port=info)).line()
        fields = {"name": info.name, "port_no": info.port_no, "state": info.state, "role": info.role,
                  "carrier": info.carrier, "priority": info.priority, "cost": info.cost,
                  **{flag: getattr(info, flag) for flag in t.PORT_FLAGS}}
        return t.port_state(self.topics, event.bridge, fields, event.kind != "deleted", line, wall)

    def publish_stats(self) -> None:
        """Publish what is due now rather than at the end of the interval."""
        self.pacer.tick()

    def _publish(self, names: list[str]) -> None:
        now = self.clock()
        for name in names:
            br = self.service.bridges.get(name)
            if br is not None:
                self._publish_bridge(br, now)

    def _publish_bridge(self, br, now: float) -> None:
        fdb = {**br.fdb.counters, "entries": len(br.fdb)}
        topic = self.topics.bridge_stats(br.name)
        self.publisher.publish(t.bridge_stats(self.topics, br.name, br.counters, br.drops,
                                              fdb, len(br.ports), now,
                                              rates=self.rates.sample(topic, br.counters, now),
                                              stp=_stp_stats(br)))
        # The ports whose counters moved, and those that moved last time and
        # now stood still (their rates at 0): O(ports) per interval, only
        # while the bridge carries frames.
        seen = self._ports_seen.setdefault(br.name, {})
        was_moving = self._ports_moving.get(br.name, set())
        moving = set()
        for port in list(br.ports.values()):
            dev = self.service.links.get((br.name, port.name))
            counters = port.stats()
            link = dev.stats() if dev is not None else {}
            transitions = {k[len("state_"):]: v for k, v in port.counters.items()
                           if k.startswith("state_")}
            said = (port.port_no, port.state, counters, dict(port.drops), link, transitions)
            topic = self.topics.port_stats(br.name, port.name)
            if seen.get(port.name) == said:
                if port.name not in was_moving:
                    self.rates.restart(topic, now)      # still: its next rates start now
                    continue
            else:
                moving.add(port.name)
            seen[port.name] = said
            self.publisher.publish(t.port_stats(
                self.topics, br.name, port.name, port.port_no, port.state, counters,
                port.drops, link, now, rates=self.rates.sample(topic, counters, now),
                transitions=transitions))
        for name in [n for n in seen if n not in br.ports]:     # a port removed: forget it
            del seen[name]
            self.rates.forget(self.topics.port_stats(br.name, name))
        # Only frames make a port "moving" (its next message says when they
        # stop); the bridge's first messages are an announcement.
        self._ports_moving[br.name] = moving if self.pacer.moving(br.name) else set()


def _stp_stats(br) -> dict:
    if br.stp is None:
        return {}
    return {"root_id": bridge_id_text(br.stp.designated_root), "root_port": br.stp.root_port,
            "topology_change": br.stp.topology_change, **br.stp.counters}
