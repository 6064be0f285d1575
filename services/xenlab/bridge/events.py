"""The bridge service's events: FDB and port events as they happen (as
`bridge monitor fdb link` shows them, each with the line it prints), and
bridge and port counters every interval, published through the service's
EventPublisher (xenlab.events)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from xenlab.bridge import output
from xenlab.bridge.core import PortEvent
from xenlab.bridge.server import bridge_id_text, fdb_event, port_info
from xenlab.events import topics as t
from xenlab.events.publisher import EventPublisher
from xenlab.events.sources import RateMeter, every
from xenlab.proto import bridge_pb2
from xenlab.xen.errors import XenError

log = logging.getLogger(__name__)


class BridgeSource:
    """FDB and port events as they happen (as `bridge monitor fdb link`
    shows them); bridge and port counters every interval."""

    def __init__(self, service, publisher: EventPublisher, interval: float,
                 clock: Callable[[], float] = time.time):
        self.service = service
        self.publisher = publisher
        self.topics = publisher.topics
        self.interval = interval
        self.clock = clock
        self.overflows = 0
        self.rates = RateMeter()
        self._sub = None
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        now = self.clock()
        for br in self.service.bridges.values():       # so that the first message has rates
            self.rates.sample(self.topics.bridge_stats(br.name), br.counters, now)
            for port in list(br.ports.values()):
                self.rates.sample(self.topics.port_stats(br.name, port.name), port.stats(), now)
        self._sub = self.service.subscribe(link=True)
        self._tasks = [asyncio.create_task(self._fdb_loop(), name="events-fdb"),
                       asyncio.create_task(every(self.interval, self.publish_stats),
                                           name="events-bridge-stats")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._sub is not None:
            self.service.unsubscribe(self._sub)
            self._sub = None

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
        now = self.clock()
        seen = []
        for br in self.service.bridges.values():
            fdb = {**br.fdb.counters, "entries": len(br.fdb)}
            topic = self.topics.bridge_stats(br.name)
            seen.append(topic)
            self.publisher.publish(t.bridge_stats(self.topics, br.name, br.counters, br.drops,
                                                  fdb, len(br.ports), now,
                                                  rates=self.rates.sample(topic, br.counters, now),
                                                  stp=_stp_stats(br)))
            for port in list(br.ports.values()):
                dev = self.service.links.get((br.name, port.name))
                counters = port.stats()
                topic = self.topics.port_stats(br.name, port.name)
                seen.append(topic)
                transitions = {k[len("state_"):]: v for k, v in port.counters.items()
                               if k.startswith("state_")}
                self.publisher.publish(t.port_stats(
                    self.topics, br.name, port.name, port.port_no, port.state, counters,
                    port.drops, dev.stats() if dev is not None else {}, now,
                    rates=self.rates.sample(topic, counters, now), transitions=transitions))
        self.rates.keep(seen)


def _stp_stats(br) -> dict:
    if br.stp is None:
        return {}
    return {"root_id": bridge_id_text(br.stp.designated_root), "root_port": br.stp.root_port,
            "topology_change": br.stp.topology_change, **br.stp.counters}
