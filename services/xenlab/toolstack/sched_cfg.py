"""xl.cfg's scheduling keys, as libxl applies them at create: ``cpus``
(hard affinity: one CPU list for every vCPU, or a list of them, one per
vCPU in order), ``cpu_weight`` and ``cap`` (the credit scheduler's), and
``pool`` (the cpupool the domain is created in). Pure: the toolstack
reads them from the DomainSpec's extra and applies them through the
hypervisor's scheduler once the domain has a process."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from xenlab.toolstack.xlcfg import Atom, ListValue, parse_settings
from xenlab.xen.digits import is_decimal
from xenlab.xen.errors import ConfigError, XenError
from xenlab.xen.sched import check_cap, check_weight


@dataclass(frozen=True)
class SchedConfig:
    hard: tuple[str, ...] = ()    # one CPU list for all vCPUs, or one per vCPU
    weight: int | None = None
    cap: int | None = None
    pool: str = ""

    @property
    def empty(self) -> bool:
        return not (self.hard or self.pool) and self.weight is None and self.cap is None


def sched_config(extra: Mapping[str, str]) -> SchedConfig:
    """Checked before anything is made: a bad value refuses the create."""
    hard: tuple[str, ...] = ()
    if extra.get("cpus"):
        hard = _cpus(extra["cpus"])
    weight = _number(extra, "cpu_weight")
    cap = _number(extra, "cap")
    try:
        if weight is not None:
            check_weight(weight)
        if cap is not None:
            check_cap(cap)
    except XenError as err:             # the config's fault: said as a config error
        raise ConfigError(f"cpu_weight/cap: {err.message}") from None
    return SchedConfig(hard, weight, cap, extra.get("pool", ""))


def _number(extra: Mapping[str, str], key: str) -> int | None:
    text = extra.get(key, "")
    if not text:
        return None
    if not is_decimal(text) or len(text) > 6:
        raise ConfigError(f"{key}={text}: expected a number")
    return int(text)


def _cpus(text: str) -> tuple[str, ...]:
    if not text.startswith("["):
        return (text,)
    (setting,) = parse_settings(f"cpus = {text}", "cpus=")
    value = setting.value
    items = value.items if isinstance(value, ListValue) else ()
    out = []
    for item in items:
        if not isinstance(item, Atom):
            raise ConfigError("cpus= holds CPU lists, not lists of lists")
        out.append(str(item.value))
    if not out:
        raise ConfigError("cpus=[] names no CPU")
    return tuple(out)
