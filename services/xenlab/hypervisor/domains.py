"""The domain table: ids, names, lifecycle state, the pause count and the
shutdown code. What to do with a domain that shut down (xl.cfg's on_*) is
the toolstack's, not the hypervisor's, as in Xen.

Pure bookkeeping (no processes, no I/O): the glue in core.py asks it what to
do and carries that out.
"""
from __future__ import annotations

import errno
import enum
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Callable

from xenlab.xen import abi
from xenlab.xen.digits import U32_MAX, is_decimal, quoted
from xenlab.xen.errors import DomainError, PermissionError_
from xenlab.xen.names import check_domain_name
from xenlab.xen.paging import PagingMode

MAX_VCPUS = abi.XEN_LEGACY_MAX_VCPUS
# domain_pause_by_systemcontroller's limit on the toolstack's pause count.
MAX_PAUSE_COUNT = 255


class RunState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"   # shut down (SHUTDOWN_poweroff, reboot, suspend, watchdog)
    CRASHED = "crashed"     # shut down with SHUTDOWN_crash
    DYING = "dying"         # being torn down; its id is not reused yet


@dataclass
class Domain:
    domid: int
    name: str
    uuid: str
    max_pages: int
    vcpus: int
    privileged: bool = False
    state: RunState = RunState.RUNNING
    shutdown_reason: str = ""     # the SHUTDOWN_* code's name, once it has shut down
    pause_count: int = 0          # controller_pause_count: xl pause adds one, unpause takes one
    launcher: str = "none"
    online_vcpus: int = 0     # xl vcpu-set; vcpus is the maximum (maxvcpus)
    created: float = field(default_factory=time.monotonic)
    spec: object = None      # the DomainSpec it was created from (restart re-uses it)
    agent: str = ""          # where its guest agent listens (the launcher's choice)
    agent_token: str = ""    # what the agent's callers must present
    memory_handed: bool = False   # its memory object went to its process (once, at boot)
    suspend_gfn: int = -1    # SCHEDOP_shutdown(suspend)'s record gfn, while suspended
    monitored: bool = True   # the toolstack applies its on_* actions (xl restore -e: not)
    paging_mode: PagingMode = PagingMode.DIRECT   # xl.cfg type= and hap=
    paging_pool_pages: int = 0    # its paging pool (shadow_memory=); none in direct mode

    def state_letters(self, proc_state: str = "") -> str:
        """xl list's State column: r b p s c d, one position each.

        `proc_state` is the process state letter from /proc/PID/stat: a
        runnable process shows as running, a sleeping one as blocked, as a
        vCPU waiting in SCHEDOP_block does.
        """
        cols = ["-"] * 6
        if self.state is RunState.RUNNING:
            if proc_state == "R":
                cols[0] = "r"
            else:
                cols[1] = "b"
        elif self.state is RunState.PAUSED:
            cols[2] = "p"
        elif self.state is RunState.SHUTDOWN:
            cols[3] = "s"
        elif self.state is RunState.CRASHED:
            cols[3] = "s"
            cols[4] = "c"
        elif self.state is RunState.DYING:
            cols[5] = "d"
        return "".join(cols)




class DomainTable:
    """Domain ids are handed out round-robin from 1, as xl does, and never
    reused while a domain with that id still exists (dying included)."""

    def __init__(self, max_domains: int = 1024, clock: Callable[[], float] = time.monotonic):
        self._domains: dict[int, Domain] = {}
        self._next = 1
        self.max_domains = max_domains
        self.clock = clock

    def __iter__(self):
        return iter(sorted(self._domains.values(), key=lambda d: d.domid))

    def __len__(self) -> int:
        return len(self._domains)

    def __contains__(self, domid: int) -> bool:
        return domid in self._domains

    def add_dom0(self, max_pages: int, vcpus: int) -> Domain:
        dom = Domain(0, abi.DOM0_NAME, "00000000-0000-0000-0000-000000000000",
                     max_pages, vcpus, privileged=True, online_vcpus=vcpus, created=self.clock())
        self._domains[0] = dom
        return dom

    def allocate(self, name: str, max_pages: int, vcpus: int, uuid: str = "") -> Domain:
        check_domain_name(name)
        if any(d.name == name and d.state is not RunState.DYING for d in self._domains.values()):
            raise DomainError(errno.EEXIST, f"domain {name!r} already exists")
        if not 1 <= vcpus <= MAX_VCPUS:
            raise DomainError(errno.EINVAL, f"vcpus={vcpus}: must be 1..{MAX_VCPUS}")
        if len(self._domains) >= self.max_domains:
            raise DomainError(errno.ENOSPC, f"the host already runs {self.max_domains} domains")
        if uuid:
            try:
                uuid = str(uuidlib.UUID(uuid))
            except ValueError:
                raise DomainError(errno.EINVAL, f"uuid {uuid!r} is not a UUID") from None
        domid = self._free_domid()
        dom = Domain(domid, name, uuid or str(uuidlib.uuid4()), max_pages, vcpus,
                     online_vcpus=vcpus, created=self.clock())
        self._domains[domid] = dom
        return dom

    def _free_domid(self) -> int:
        for _ in range(abi.DOMID_FIRST_RESERVED):
            domid = self._next
            self._next = self._next + 1 if self._next + 1 < abi.DOMID_FIRST_RESERVED else 1
            if domid not in self._domains:
                return domid
        raise DomainError(errno.ENOSPC, "no free domain id")  # pragma: no cover

    def get(self, domid: int) -> Domain:
        try:
            return self._domains[domid]
        except KeyError:
            raise DomainError(errno.ESRCH, f"no domain with id {domid}") from None

    def find(self, domid: int) -> Domain | None:
        return self._domains.get(domid)

    def lookup(self, domid: int = 0, name: str = "") -> Domain:
        """A DomainRef: by name when given (or when it is all ASCII digits,
        by id, as libxl_domain_qualifier_to_domid reads it)."""
        if name:
            if is_decimal(name):
                if len(name.lstrip("0")) > len(str(U32_MAX)):     # no int() of 4,000 digits
                    raise DomainError(errno.ESRCH, f"no domain with id {quoted(name)}")
                return self.get(int(name))
            for dom in self._domains.values():
                if dom.name == name and dom.state is not RunState.DYING:
                    return dom
            raise DomainError(errno.ESRCH, f"no domain named {quoted(name)}")
        return self.get(domid)

    def lookup_as(self, caller: int, privileged: bool, what: str, domid: int = 0,
                  name: str = "") -> Domain:
        """A DomainRef as domain ``caller`` may use it. A privileged caller
        may name any domain. Any other may name only itself: in Xen,
        getdomaininfo (and every domctl) on another domain is for the
        control domain. It gets the same refusal whether the domain it named
        exists or not, so that it learns no other domain's id or name."""
        if privileged:
            return self.lookup(domid, name)
        own = self._domains.get(caller)
        if own is not None and self._refers_to(own, domid, name):
            return own
        target = f"domain {quoted(name)}" if name else f"d{domid}"
        raise PermissionError_(f"d{caller} may not {what} {target}")

    @staticmethod
    def _refers_to(dom: Domain, domid: int, name: str) -> bool:
        if not name:
            return domid == dom.domid
        if is_decimal(name):
            return name.lstrip("0") == str(dom.domid).lstrip("0")
        return name == dom.name

    def remove(self, domid: int) -> None:
        self._domains.pop(domid, None)

    def uptime(self, dom: Domain) -> float:
        return self.clock() - dom.created
