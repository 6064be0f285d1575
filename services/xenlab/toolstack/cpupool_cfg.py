"""A cpupool's configuration (xlcpupool.cfg(5)), as `xl cpupool-create`
reads it from a file and key=value arguments: ``name``, ``sched``
(credit, credit2) and ``cpus`` (a CPU list string, or a list of them).
NUMA ``nodes=`` is refused: the lab reports one node. Pure."""
from __future__ import annotations

from dataclasses import dataclass

from xenlab.toolstack.xlcfg import Atom, ListValue, parse_settings
from xenlab.xen.errors import ConfigError

KEYS = ("name", "sched", "cpus")


@dataclass(frozen=True)
class CpupoolConfig:
    name: str
    sched: str = ""
    cpus: str = ""          # xl's CPU list; empty: one free CPU


def parse_cpupool_config(text: str, overrides=(), path: str | None = None) -> CpupoolConfig:
    settings = parse_settings(text, path) if text else []
    for n, item in enumerate(overrides, 1):
        settings += parse_settings(item, "command line", n)
    values: dict[str, str] = {}
    for s in settings:
        if s.key == "nodes":
            raise ConfigError("nodes= is not supported: the lab reports one NUMA node; "
                                            "use cpus=")
        if s.key not in KEYS:
            raise ConfigError(f"unknown cpupool key {s.key!r}: expected "
                                            f"{', '.join(KEYS)}")
        values[s.key] = _text(s.key, s.value)
    if not values.get("name"):
        raise ConfigError("a cpupool needs a name (name=\"...\")")
    return CpupoolConfig(values["name"], values.get("sched", ""), values.get("cpus", ""))


def _text(key: str, value) -> str:
    if isinstance(value, Atom):
        return str(value.value)
    if key == "cpus" and isinstance(value, ListValue):
        items = [str(v.value) for v in value.items if isinstance(v, Atom)]
        if len(items) != len(value.items):
            raise ConfigError("cpus= holds CPU numbers or ranges, not lists")
        return ",".join(items)
    raise ConfigError(f"{key}= takes a single value")
