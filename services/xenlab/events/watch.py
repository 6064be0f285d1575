"""`xenlab events`: print a lab's MQTT events as they arrive.

One line per message, ``TOPIC PAYLOAD`` as ``mosquitto_sub -v`` prints
them (``--json``: one JSON object per line with topic, retained and the
decoded payload). Retained states come first: a subscriber gets the current
state of every domain and vif, then what happens.

The broker is the running lab's (RUNDIR/lab.json) unless --broker names one.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

import aiomqtt

from xenlab import eventloop
from xenlab.events.config import DEFAULT_PORT, BrokerAddress
from xenlab.events.topics import DEFAULT_PREFIX, decode
from xenlab.rundir import Rundir
from xenlab.osutil import on_stop_signal
from xenlab.xen.errors import ConfigError


async def subscribe(broker: BrokerAddress, topics: Sequence[str],
                    subscribed: Callable[[], None] | None = None,
                    ) -> AsyncIterator[aiomqtt.Message]:
    """Messages on `topics` (MQTT filters) until the caller stops or the
    connection breaks (aiomqtt.MqttError); `subscribed` is called once the
    broker has acknowledged the filters. Messages outside the filters,
    which some brokers send (amqtt's retained quirk), are left out."""
    async with aiomqtt.Client(broker.host, broker.port, keepalive=10) as client:
        for topic in topics:
            await client.subscribe(topic)
        if subscribed is not None:
            subscribed()
        async for message in client.messages:
            if any(message.topic.matches(f) for f in topics):
                yield message


@dataclass(frozen=True)
class Event:
    topic: str
    payload: dict
    retained: bool


class EventCollector:
    """Every xenlab event on `topics`, collected in the background, across
    broker restarts (it resubscribes): for tests and scripts.

        async with EventCollector(broker, ["xenlab/#"]) as events:
            learn = await events.wait_for(lambda e: e.payload["type"] == "fdb.event")
    """

    def __init__(self, broker: BrokerAddress, topics: Sequence[str] = (f"{DEFAULT_PREFIX}/#",)):
        self.broker = broker
        self.topics = list(topics)
        self.events: list[Event] = []
        self.subscriptions = 0
        self._subscribed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "EventCollector":
        self._task = asyncio.create_task(self._run())
        await self.wait_subscribed()
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Until the (re)subscription is in place."""
        await eventloop.wait_for(self._subscribed.wait(), timeout)

    def _on_subscribed(self) -> None:
        self.subscriptions += 1
        self._subscribed.set()

    async def _run(self) -> None:
        while True:
            try:
                async for message in subscribe(self.broker, self.topics, self._on_subscribed):
                    try:
                        payload = decode(message.payload)
                    except ValueError:
                        continue
                    self.events.append(Event(str(message.topic), payload, bool(message.retain)))
                    self._arrived.set()
            except aiomqtt.MqttError:
                pass
            self._subscribed.clear()
            await asyncio.sleep(0.2)

    def since(self, index: int = 0) -> list[Event]:
        return self.events[index:]

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 10.0,
                       since: int = 0) -> Event:
        """The first event from index `since` on that satisfies `predicate`;
        TimeoutError if none comes within `timeout` seconds."""
        async def find() -> Event:
            seen = since
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = max(seen, len(self.events))
                self._arrived.clear()
                await self._arrived.wait()
        return await eventloop.wait_for(find(), timeout)


def lab_broker(rundir: Path | None) -> BrokerAddress | None:
    """The broker a running lab in `rundir` publishes to, if any."""
    if rundir is None:
        return None
    try:
        state = Rundir(rundir).read_state()
    except OSError:
        return None
    address = state.get("mqtt") if state else None
    return BrokerAddress.parse(address) if address else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", metavar="mqtt://HOST:PORT",
                        help=f"the broker (default: the running lab's, else "
                             f"mqtt://127.0.0.1:{DEFAULT_PORT})")
    parser.add_argument("--topic", "-t", action="append", metavar="FILTER",
                        help="an MQTT topic filter; repeat for several "
                             "(default PREFIX/#: everything)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help=f"the topic prefix of the default filter (default {DEFAULT_PREFIX})")
    parser.add_argument("-n", "--count", type=int, default=0, metavar="N",
                        help="exit after N messages")
    parser.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                        help="exit after this long (with -n: exit 1 if fewer than N came)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line: topic, retained, payload")
    parser.add_argument("--rundir", type=Path, default=None,
                        help="the lab's rundir, to find its broker "
                             "(default $XENLAB_RUNDIR, else $XDG_RUNTIME_DIR/xenlab, "
                             "else /tmp/xenlab-UID)")


def format_line(topic: str, payload: bytes, retained: bool, as_json: bool) -> str:
    """`TOPIC PAYLOAD`, as mosquitto_sub -v prints it; or one JSON object."""
    if not as_json:
        return f"{topic} {payload.decode(errors='replace')}"
    try:
        decoded = json.loads(payload)
    except ValueError:
        decoded = payload.decode(errors="replace")
    return json.dumps({"topic": topic, "retained": retained, "payload": decoded},
                      separators=(",", ":"))


def _no_broker(broker: BrokerAddress, err: aiomqtt.MqttError, args, guessed: bool) -> str:
    """One line: which broker could not be reached, why, and where the
    address came from when the user did not give it."""
    text = str(err)
    m = re.search(r"\[Errno (\d+)\]", text)
    reason = os.strerror(int(m.group(1))).lower() if m else text
    line = f"xenlab events: cannot reach the MQTT broker at {broker}: {reason}"
    if guessed:
        line += (f" (no lab in {args.rundir} says where its broker is: start one with `xenlab up`, "
                 f"or name a broker with --broker mqtt://HOST:PORT)")
    return line


async def run(args) -> int:
    try:
        broker = BrokerAddress.parse(args.broker) if args.broker else lab_broker(args.rundir)
    except ConfigError as err:
        print(f"xenlab events: {err.message}", file=sys.stderr)
        return 2
    guessed = broker is None
    broker = broker or BrokerAddress("127.0.0.1")
    topics = args.topic or [f"{args.prefix}/#"]

    async def messages():
        async for message in subscribe(broker, topics):
            payload = message.payload if isinstance(message.payload, (bytes, bytearray)) else \
                str(message.payload).encode()
            yield str(message.topic), bytes(payload), bool(message.retain)

    try:
        return await relay(args, messages())
    except aiomqtt.MqttError as err:
        print(_no_broker(broker, err, args, guessed), file=sys.stderr)
        return 1


async def relay(args, messages: AsyncIterator[tuple[str, bytes, bool]]) -> int:
    """Print (topic, payload, retained) messages until -n, --timeout or
    Ctrl-C, and return the exit status; an error that ends `messages` is
    raised."""
    seen = 0

    async def consume() -> None:
        nonlocal seen
        async for topic, payload, retained in messages:
            print(format_line(topic, payload, retained, args.json), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                return

    stopped = asyncio.Event()
    on_stop_signal(stopped.set)                 # Ctrl-C ends it, as mosquitto_sub's, with exit 0
    consumer = asyncio.create_task(consume())
    stop = asyncio.create_task(stopped.wait())
    try:
        done, _ = await asyncio.wait({consumer, stop}, timeout=args.timeout if args.timeout > 0 else None,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (consumer, stop):
            task.cancel()
        await asyncio.gather(consumer, stop, return_exceptions=True)
    if consumer in done:
        try:
            consumer.result()
        except BrokenPipeError:
            return 0
        return 0
    if stop in done:
        return 0
    return 1 if args.count and seen < args.count else 0      # --timeout
