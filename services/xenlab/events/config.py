"""Where a service publishes its events: the broker address, the topic
prefix, the host name and the counters' interval, read once from the
command line (``--mqtt``, ``--events``, ``--mqtt-prefix``, ``--host-name``,
``--mqtt-interval``) into a frozen ``EventsConfig``. A service with events
serves them on its gRPC ``Events`` stream, and publishes them on MQTT when
it has a broker."""
from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from xenlab.events.topics import DEFAULT_PREFIX, Topics
from xenlab.xen.errors import ConfigError

DEFAULT_PORT = 1883             # IANA's MQTT port
DEFAULT_INTERVAL = 5.0          # seconds between counter messages


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int = DEFAULT_PORT

    @classmethod
    def parse(cls, text: str) -> "BrokerAddress":
        """``mqtt://HOST[:PORT]`` (``[v6]`` for an IPv6 literal)."""
        parts = urlsplit(text)
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            port = -1
        if parts.scheme != "mqtt" or not parts.hostname or port <= 0 or parts.path not in ("", "/") \
                or parts.query or parts.username:
            raise ConfigError(f"MQTT broker {text!r}: expected mqtt://HOST:PORT")
        return cls(parts.hostname, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"


def default_host_name() -> str:
    """The machine's short hostname, as a topic level."""
    name = socket.gethostname().split(".")[0]
    return "".join("_" if c in "/+#\0" else c for c in name) or "localhost"


@dataclass(frozen=True)
class EventsConfig:
    broker: BrokerAddress | None        # None: the gRPC stream only
    topics: Topics
    interval: float = DEFAULT_INTERVAL

    def args(self) -> list[str]:
        """The command-line options that give a service this configuration."""
        broker = ["--mqtt", str(self.broker)] if self.broker is not None else ["--events"]
        return [*broker, "--mqtt-prefix", self.topics.prefix,
                "--host-name", self.topics.host, "--mqtt-interval", f"{self.interval:g}"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MQTT events (docs/EVENTS.md)")
    group.add_argument("--mqtt", metavar="mqtt://HOST:PORT", default=None,
                       help="publish events to this MQTT broker, and serve them on the gRPC "
                            "Events stream (default: none)")
    group.add_argument("--events", action="store_true",
                       help="serve events on the gRPC Events stream, without a broker")
    group.add_argument("--mqtt-prefix", default=DEFAULT_PREFIX, metavar="PREFIX",
                       help=f"topics are PREFIX/HOST/... (default {DEFAULT_PREFIX})")
    group.add_argument("--host-name", default=None, metavar="HOST",
                       help="the HOST level of the topics (default: this machine's hostname)")
    group.add_argument("--mqtt-interval", type=float, default=DEFAULT_INTERVAL, metavar="SECONDS",
                       help=f"seconds between counter messages (default {DEFAULT_INTERVAL:g})")


def config_from_args(args) -> EventsConfig | None:
    """None when neither --mqtt (other than "none") nor --events is given;
    ConfigError if malformed."""
    address = getattr(args, "mqtt", None)
    if address == "none":
        address = None
    if not address and not getattr(args, "events", False):
        return None
    if not args.mqtt_interval > 0:
        raise ConfigError(f"--mqtt-interval must be positive, got {args.mqtt_interval}")
    return EventsConfig(BrokerAddress.parse(address) if address else None,
                        Topics(args.host_name or default_host_name(), args.mqtt_prefix),
                        args.mqtt_interval)
