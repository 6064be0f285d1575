"""`xenlab mqtt-broker`: the MQTT broker of a local lab.

Two engines, both MQTT 3.1.1 brokers with retained messages and wills,
anonymous, in memory (a restart forgets everything; the publishers send
their states again when they reconnect):

* ``mosquitto``: Eclipse Mosquitto (Debian package ``mosquitto``), the C
  broker docker-compose uses. This process becomes ``mosquitto`` with a
  generated configuration.
* ``amqtt``: the amqtt package, a pure-Python asyncio broker that installs
  with xenlab (pip), so a lab needs nothing else. It runs in this process;
  ``EmbeddedBroker`` also runs it inside a test. Known quirk (amqtt 0.12):
  a client that connects is also sent the retained messages matching other
  clients' subscriptions, so a subscriber may get a retained state twice, or
  one outside its filters (``xenlab events`` filters those out).

``auto`` (the default) picks mosquitto when it is installed, as the more
robust of the two, else amqtt.

Either listens on loopback by default: there is no authentication.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys

from xenlab.osutil import free_port, wait_for_stop_signal
from xenlab.events.config import BrokerAddress
from xenlab.osutil import die_with_parent
from xenlab.xen.digits import is_decimal
import aiomqtt
import pwd

log = logging.getLogger(__name__)

ENGINES = ("auto", "mosquitto", "amqtt")
DEFAULT_LISTEN = "127.0.0.1:1883"


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not is_decimal(port) or len(port) > 5 or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def pick_engine(engine: str) -> str:
    if engine == "auto":
        return "mosquitto" if mosquitto_binary() else "amqtt"
    return engine


async def broker_ready(address: BrokerAddress) -> bool:
    """Whether an MQTT broker answers a CONNECT at `address`."""
    try:
        async with aiomqtt.Client(address.host, address.port, timeout=2):
            return True
    except aiomqtt.MqttError:
        return False


def amqtt_config(host: str, port: int) -> dict:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        # Only anonymous auth: no $SYS topics, no other default plugins.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def mosquitto_config(host: str, port: int, user: str | None = None) -> str:
    """`user`: the account to run as; mosquitto started as root otherwise
    switches to its own user, and changing credentials clears the
    parent-death signal (prctl(2)), so the broker would outlive its lab."""
    lines = [f"user {user}"] if user else []
    return "\n".join(lines + [
        f"listener {port} {host}",
        "allow_anonymous true",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "",
    ])


class EmbeddedBroker:
    """amqtt in this event loop: ``async with EmbeddedBroker() as b:``
    (port 0 picks a free one); ``b.address`` is its mqtt:// address."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port or free_port(host)
        self._broker = None

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._broker is not None

    async def start(self) -> None:
        from amqtt.broker import Broker  # lazy: optional, the embedded broker
        quiet_amqtt()
        broker = Broker(amqtt_config(self.host, self.port))
        await broker.start()
        self._broker = broker

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> "EmbeddedBroker":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


def quiet_amqtt(level: int = logging.WARNING) -> None:
    # amqtt logs every connection at INFO.
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(level)


# -- the command --------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"where to listen (default {DEFAULT_LISTEN}; port 0 picks one); "
                             f"there is no authentication, so keep it on loopback")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="mosquitto (if installed), amqtt (built in), or auto (the default): "
                             "mosquitto if installed, else amqtt")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="how much the broker logs (default INFO)")
    parser.add_argument("--die-with-parent", action="store_true",
                        help="exit when the process that started it exits (used by `xenlab up`)")


def run(args) -> int:
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s mqtt-broker %(levelname)s %(name)s: %(message)s")
    try:
        host, port = parse_listen(args.listen)
    except ValueError as err:
        print(f"xenlab mqtt-broker: {err}", file=sys.stderr)
        return 2
    port = port or free_port(host)
    if args.die_with_parent:
        die_with_parent()
    if pick_engine(args.engine) == "mosquitto":
        return _exec_mosquitto(host, port)
    try:
        asyncio.run(_serve_amqtt(host, port, args.log_level))
    except OSError as err:
        print(f"xenlab mqtt-broker: cannot listen on {host}:{port}: {err}", file=sys.stderr)
        return 1
    return 0


async def _serve_amqtt(host: str, port: int, log_level: str) -> None:
    broker = EmbeddedBroker(host, port)
    await broker.start()
    quiet_amqtt(logging.DEBUG if log_level == "DEBUG" else logging.WARNING)
    print(f"xenlab mqtt-broker (amqtt) listening on {broker.address}", flush=True)
    try:
        await wait_for_stop_signal()
    finally:
        await broker.stop()


def _exec_mosquitto(host: str, port: int) -> int:
    binary = mosquitto_binary()
    if binary is None:
        print("xenlab mqtt-broker: mosquitto is not installed (Debian: apt-get install mosquitto); "
              "use --engine amqtt", file=sys.stderr)
        return 1
    # The configuration lives in a memfd: nothing to clean up, and mosquitto
    # can open it by path (it re-reads it on SIGHUP).
    fd = os.memfd_create("mosquitto.conf", 0)
    os.write(fd, mosquitto_config(host, port, pwd.getpwuid(os.geteuid()).pw_name).encode())
    os.set_inheritable(fd, True)
    print(f"xenlab mqtt-broker (mosquitto) listening on {BrokerAddress(host, port)}", flush=True)
    os.execv(binary, [binary, "-c", f"/proc/self/fd/{fd}"])
    return 1    # not reached
