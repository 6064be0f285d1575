"""xl's per-domain monitor: what happens to a domain that shut down.

The hypervisor only stops a domain and records why (sched.h's SHUTDOWN_*
code); xenstored fires @releaseDomain. xl, which keeps each domain's
configuration, watches for that, finds which domain shut down and applies
its xl.cfg action (xl_vmcontrol.c's handle_domain_death). ``action_for``
and ``preserved_name`` are that decision on plain values; ``DomainMonitor``
is the watch.
"""
from __future__ import annotations

import asyncio
import errno
import logging
from datetime import datetime
from typing import Awaitable, Callable

from xenlab.hypervisor.caller import DOM0
from xenlab.hypervisor.domains import Domain, DomainTable, RunState
from xenlab.hypervisor.xenstore import RELEASE_DOMAIN, XenStore
from xenlab.toolstack.xlcfg import ACTIONS, ACTION_DEFAULTS, NOT_EMULATED_ACTIONS
from xenlab.xen.errors import DomainError

log = logging.getLogger(__name__)

MONITOR_TOKEN = "xl-monitor"
# The on_* key that holds the action for each SHUTDOWN_* reason; suspend has
# none: xl leaves a suspended domain to whoever suspended it (xl save).
POLICY_KEYS = {reason: f"on_{reason}" for reason in ACTION_DEFAULTS}


def check_policies(spec) -> None:
    """Each on_* of a DomainSpec is an xl.cfg action xenlab carries out."""
    for key in POLICY_KEYS.values():
        action = getattr(spec, key)
        if not action:
            continue
        if action not in ACTIONS:
            raise DomainError(errno.EINVAL, f"{key}={action!r}: expected one of {', '.join(ACTIONS)}")
        if action in NOT_EMULATED_ACTIONS:
            raise DomainError(errno.EINVAL, f"{key}={action}: {NOT_EMULATED_ACTIONS[action]}")


def action_for(spec, reason: str) -> str | None:
    """The action for a domain that shut down for ``reason``, as
    handle_domain_death picks it: None for suspend (left alone), destroy
    for a reason xl does not know."""
    if reason == "suspend":
        return None
    key = POLICY_KEYS.get(reason)
    if key is None:
        return "destroy"
    return (getattr(spec, key) if spec is not None else "") or ACTION_DEFAULTS[reason]


def preserved_name(name: str, now: datetime) -> str:
    """rename-restart keeps the old domain as NAME-YYYYMMDDTHHMMZ (UTC), as
    xl's preserve_domain names it."""
    return name + now.strftime("-%Y%m%dT%H%MZ")


class DomainMonitor:
    """Watches @releaseDomain as Domain-0 and hands each domain that shut
    down, once, to ``handle`` (a task per domain, as xl runs a monitor per
    domain)."""

    def __init__(self, xs: XenStore, domains: DomainTable,
                 handle: Callable[[Domain], Awaitable[None]]):
        self.xs = xs
        self.domains = domains
        self.handle = handle
        self._handling: dict[int, tuple[Domain, asyncio.Task]] = {}

    def start(self) -> None:
        self.xs.watch(DOM0, self, RELEASE_DOMAIN, MONITOR_TOKEN)

    def fire(self, path: str, token: str) -> None:
        """The XenStore core's watch event: @releaseDomain says only that
        some domain shut down or went, so look at them all, as libxl does."""
        for domid, (dom, _) in list(self._handling.items()):
            if self.domains.find(domid) is not dom:
                del self._handling[domid]
        for dom in self.domains:
            if dom.state not in (RunState.SHUTDOWN, RunState.CRASHED):
                continue
            seen = self._handling.get(dom.domid)
            if seen is not None and seen[0] is dom:
                continue
            task = asyncio.get_running_loop().create_task(self._run(dom))
            self._handling[dom.domid] = (dom, task)

    async def _run(self, dom: Domain) -> None:
        try:
            await self.handle(dom)
        except Exception:       # one domain's policy must not stop the monitor
            log.exception("d%d (%s): applying its on_%s action failed", dom.domid, dom.name,
                          dom.shutdown_reason)

    def forget(self, dom: Domain) -> None:
        """``dom`` runs again (resumed after a suspend): its next shutdown is
        a new one to act on."""
        seen = self._handling.get(dom.domid)
        if seen is not None and seen[0] is dom:
            del self._handling[dom.domid]

    async def settled(self, dom: Domain) -> None:
        """Wait until the action for ``dom``'s shutdown has been carried out."""
        seen = self._handling.get(dom.domid)
        if seen is not None and seen[0] is dom:
            await asyncio.shield(seen[1])

    async def close(self) -> None:
        self.xs.drop_connection(self)
        tasks = [task for _, task in self._handling.values()]
        self._handling.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
