"""The events of one service, for the gRPC ``Events`` stream (protos/
xenlab/proto/events.proto): the same ``topics.Message`` objects the MQTT
publisher sends, handed to each subscriber whose topic filters match.

The sources publish to a ``Fanout`` of the MQTT publisher (when there is a
broker) and the ``EventHub``, so that a gRPC subscriber and an MQTT
subscriber see the same topics and the same payload bytes, whether or not
the lab has a broker.

The hub behaves as a broker would towards its subscribers:
- retained states are kept, the latest per topic, and a new subscriber gets
  those its filters match first, flagged retained (MQTT 3.1.1, 3.3.1.3:
  the retain flag is set only on messages sent from the retained store when
  a subscription is made); live messages follow, unflagged;
- an empty retained message forgets the topic's state (``topics.cleared``)
  and is passed on to the subscribers listening then, as a broker does;
- topic filters are MQTT's (``+`` one level, ``#`` the rest).

A subscriber that falls ``backlog`` messages behind is cut off rather than
left to miss events unawares: its ``get`` raises ENOSPC (RESOURCE_EXHAUSTED
on the stream), as the bridge's own event watchers are. Publishing never
waits and never fails, so the hub is never on anyone's data path.
"""
from __future__ import annotations

import asyncio
import errno
from typing import Iterable, Protocol, Sequence

import aiomqtt

from xenlab.events import topics as t
from xenlab.xen.errors import XenError

DEFAULT_BACKLOG = 4096          # messages one subscriber may fall behind
DEFAULT_RETAINED = t.DEFAULT_RETAINED     # retained topics kept, as the MQTT publisher keeps
MAX_FILTERS = 64                # topic filters in one subscription


def parse_filters(filters: Sequence[str]) -> tuple[aiomqtt.Wildcard, ...]:
    """MQTT topic filters (none: everything); EINVAL naming a bad one."""
    if len(filters) > MAX_FILTERS:
        raise XenError(errno.EINVAL, f"{len(filters)} topic filters: at most {MAX_FILTERS}")
    parsed = []
    for text in filters or ["#"]:
        try:
            parsed.append(aiomqtt.Wildcard(text))
        except (ValueError, TypeError) as err:
            raise XenError(errno.EINVAL, f"topic filter {text!r}: {err}") from None
    return tuple(parsed)


class Subscription:
    """One subscriber's messages, as (message, retained) pairs."""

    def __init__(self, filters: tuple[aiomqtt.Wildcard, ...], backlog: int):
        self.filters = filters
        self.backlog = backlog
        self.queue: asyncio.Queue[tuple[t.Message, bool] | None] = asyncio.Queue()
        self.overflowed = False
        self.closed = False

    def wants(self, topic: str) -> bool:
        return any(aiomqtt.Topic(topic).matches(f) for f in self.filters)

    def offer(self, message: t.Message, retained: bool = False) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= self.backlog:
            self.overflowed = True
            self.close()
            return
        self.queue.put_nowait((message, retained))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)

    async def get(self) -> tuple[t.Message, bool] | None:
        """The next (message, retained); None once the hub closed."""
        item = await self.queue.get()
        if item is None and self.overflowed:
            raise XenError(errno.ENOSPC, f"the event subscriber fell more than {self.backlog} "
                                         f"messages behind")
        return item


class EventHub:
    def __init__(self, topics: t.Topics, backlog: int = DEFAULT_BACKLOG,
                 retained_max: int = DEFAULT_RETAINED):
        self.topics = topics
        self.backlog = backlog
        self.retained_max = retained_max
        self.published = 0
        self._retained = t.RetainedStates(retained_max)
        self._subscriptions: set[Subscription] = set()

    def publish(self, message: t.Message) -> None:
        self.published += 1
        self._retained.remember(message)
        for sub in list(self._subscriptions):
            if sub.closed:
                self._subscriptions.discard(sub)
            elif sub.wants(message.topic):
                sub.offer(message)

    def subscribe(self, filters: Sequence[str] = (), retained: bool = True,
                  backlog: int | None = None) -> Subscription:
        """From now on; with `retained`, the current states first."""
        sub = Subscription(parse_filters(filters), backlog or self.backlog)
        if retained:
            for message in self._retained.values():
                if sub.wants(message.topic):
                    # The states are a snapshot, not a backlog: never cut off for them.
                    sub.queue.put_nowait((message, True))
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)
        sub.close()

    @property
    def subscribers(self) -> int:
        return sum(1 for sub in self._subscriptions if not sub.closed)

    def close(self) -> None:
        """End every subscriber's stream (the service stops)."""
        for sub in list(self._subscriptions):
            sub.close()
        self._subscriptions.clear()


class Fanout:
    """What the sources publish to: every sink (the MQTT publisher, the
    hub) gets each message, the same object."""

    def __init__(self, topics: t.Topics, sinks: Iterable):
        self.topics = topics
        self.sinks = tuple(sinks)

    def publish(self, message: t.Message) -> None:
        for sink in self.sinks:
            sink.publish(message)


class EventSink(Protocol):
    """What a source publishes to: a Fanout, an EventPublisher, an EventHub."""
    topics: t.Topics

    def publish(self, message: t.Message) -> None: ...
