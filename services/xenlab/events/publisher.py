"""EventPublisher: a service's one MQTT client, off every frame path.

``publish(message)`` only appends to a bounded queue and returns: it never
waits, never raises, and works whether the broker is there or not. A
separate task connects (aiomqtt), drains the queue, and when the broker goes
away reconnects with exponential backoff (with jitter, so that the services
of a lab do not all knock at once). When the queue is full the oldest
message is dropped and counted (``dropped``): fresh events are worth more
than stale ones.

Retained messages are states (a domain's, a vif's, the service's own): the
latest one per topic is kept, and every (re)connection publishes them all
again, so that a broker that restarted empty learns the current state back.
A queued retained message is then superseded by that copy and not sent
twice. An empty retained message clears its topic and drops it from the
states sent again. Everything goes at QoS 0: a message in flight when the connection
breaks may be lost; states come back with the next connection, events and
counters do not (each carries its time).

The service announces itself retained on ``PREFIX/HOST/service/NAME/status``:
online at each connection, and again ``status_interval`` after it next
publishes anything (so at most once an interval, and never while it is
idle); offline when it closes, and as its MQTT will, which the broker
publishes if the connection dies without a DISCONNECT.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import secrets
import time
from typing import Callable

import aiomqtt

from xenlab import eventloop
from xenlab.events import topics as t
from xenlab.events.config import BrokerAddress

log = logging.getLogger(__name__)

DEFAULT_QUEUE = 4096            # messages waiting for the broker, at most
DEFAULT_RETAINED = t.DEFAULT_RETAINED     # retained topics remembered for republishing
MIN_BACKOFF = 0.1
MAX_BACKOFF = 3.0
KEEPALIVE = 10                  # seconds; a silent broker is noticed within 1.5x this
PUBLISH_TIMEOUT = 5.0           # a publish the socket cannot take for this long drops the link


class EventPublisher:
    def __init__(self, broker: BrokerAddress, topics: t.Topics, service: str,
                 queue_size: int = DEFAULT_QUEUE, retained_max: int = DEFAULT_RETAINED,
                 min_backoff: float = MIN_BACKOFF, max_backoff: float = MAX_BACKOFF,
                 status_interval: float = 10.0, clock: Callable[[], float] = time.time):
        if queue_size < 1:
            raise ValueError("the queue holds at least one message")
        self.broker = broker
        self.topics = topics
        self.service = service
        self.queue_size = queue_size
        self.retained_max = retained_max
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.status_interval = status_interval
        self.clock = clock
        self.client_id = f"xenlab-{service[:12]}-{secrets.token_hex(4)}"
        self.counters = collections.Counter({"published": 0, "dropped": 0, "reconnects": 0,
                                             "connects": 0, "connect_failures": 0})
        self.connected = False
        self.last_error = ""
        self._queue: collections.deque[t.Message] = collections.deque()
        self._retained = t.RetainedStates(retained_max)
        self._wake = asyncio.Event()
        self._connected_event = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._stopping = asyncio.Event()

    # -- the producers' side: never blocks ----------------------------------------
    def publish(self, message: t.Message) -> None:
        if self._closing:
            return
        # A cleared topic (topics.cleared) is forgotten: nothing to send again on reconnection.
        self._retained.remember(message)
        if len(self._queue) >= self.queue_size:
            self._queue.popleft()
            self.counters["dropped"] += 1
        self._queue.append(message)
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def stats(self) -> dict[str, int]:
        return {**self.counters, "queued": len(self._queue)}

    def status(self, online: bool = True) -> t.Message:
        return t.service_status(self.topics, self.service, online, os.getpid(), self.stats(),
                                self.clock())

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mqtt-{self.service}")

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await eventloop.wait_for(self._connected_event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self, flush_timeout: float = 2.0) -> None:
        """Send what is queued (for `flush_timeout` at most, if connected),
        say offline, disconnect."""
        if self._task is None:
            return
        if self.connected:
            deadline = time.monotonic() + flush_timeout
            while self._queue and self.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self._closing = True
        self._stopping.set()
        self._wake.set()
        try:
            await eventloop.wait_for(asyncio.shield(self._task), flush_timeout)
        except (asyncio.TimeoutError, Exception):
            pass
        if not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def __aenter__(self) -> "EventPublisher":
        self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- the client task ----------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.min_backoff
        while not self._closing:
            try:
                await self._session()
                delay = self.min_backoff
            except Exception as err:        # aiomqtt.MqttError, or a bug: never stop trying
                self.last_error = str(err)
                if not isinstance(err, aiomqtt.MqttError):
                    log.exception("MQTT %s: publisher failed", self.broker)
                if self.connected:
                    log.warning("MQTT %s: connection lost: %s", self.broker, err)
                    delay = self.min_backoff
                else:
                    self.counters["connect_failures"] += 1
                    log.debug("MQTT %s: cannot connect: %s", self.broker, err)
            finally:
                self.connected = False
                self._connected_event.clear()
            if self._closing:
                break
            try:
                await eventloop.wait_for(self._stopping.wait(), delay * random.uniform(0.5, 1.0))
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, self.max_backoff)

    async def _session(self) -> None:
        will = aiomqtt.Will(self.topics.service_status(self.service),
                            self.status(online=False).payload, qos=0, retain=True)
        async with aiomqtt.Client(self.broker.host, self.broker.port, identifier=self.client_id,
                                  will=will, keepalive=KEEPALIVE, timeout=PUBLISH_TIMEOUT,
                                  clean_session=True) as client:
            if self.counters["connects"]:
                self.counters["reconnects"] += 1
            self.counters["connects"] += 1
            self.connected = True
            self._connected_event.set()
            log.info("MQTT %s: connected as %s", self.broker, self.client_id)
            # Fail fast when the broker goes: the message iterator ends on disconnect.
            lost = asyncio.create_task(self._watch(client))
            drain = asyncio.create_task(self._drain(client))
            try:
                done, _ = await asyncio.wait({lost, drain}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()       # MqttError: reconnect
            finally:
                for task in (lost, drain):
                    task.cancel()
                await asyncio.gather(lost, drain, return_exceptions=True)
            # Closing with the link up: say so, then DISCONNECT (no will).
            await self._send(client, self.status(online=False))

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        async for _ in client.messages:     # nothing is subscribed: this only ends
            pass

    async def _drain(self, client: aiomqtt.Client) -> None:
        await self._send(client, self.status())
        self._supersede_retained()
        for message in list(self._retained.values()):
            await self._send(client, message)
        # The status says the publisher's counters: it is refreshed an
        # interval after the first message since the last one, and never
        # while nothing is published (an idle service sleeps; the broker's
        # keepalive and the will say whether it is alive).
        status_due: float | None = None
        while not self._closing:
            if not self._queue:
                self._wake.clear()
                wait = None if status_due is None else max(0.0, status_due - time.monotonic())
                try:
                    await eventloop.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            if status_due is not None and time.monotonic() >= status_due:
                status_due = None
                await self._send(client, self.status())
            while self._queue:
                message = self._queue.popleft()
                if status_due is None:
                    status_due = time.monotonic() + self.status_interval
                try:
                    await self._send(client, message)
                except aiomqtt.MqttError:
                    # Not sent: it goes first after the reconnection, if there is room.
                    if len(self._queue) < self.queue_size:
                        self._queue.appendleft(message)
                    else:
                        self.counters["dropped"] += 1
                    raise

    async def _send(self, client: aiomqtt.Client, message: t.Message) -> None:
        await client.publish(message.topic, message.payload, qos=0, retain=message.retain)
        self.counters["published"] += 1

    def _supersede_retained(self) -> None:
        """Queued retained messages are older copies of what the
        reconnection republishes from the cache: drop them."""
        if any(m.retain for m in self._queue):
            self._queue = collections.deque(
                m for m in self._queue if not (m.retain and m.topic in self._retained))

