"""Who a request is made as: the domain, and whether it is privileged. The
hypercall cores take a Caller and check it themselves, as Xen's handlers
check current->domain; how a call proves who it is is identity.py's."""
from __future__ import annotations

from dataclasses import dataclass

from xenlab.xen.errors import PermissionError_


@dataclass(frozen=True)
class Caller:
    """The authenticated domain a request is made as."""
    domid: int
    privileged: bool = False
    target: int | None = None    # xenstore: XS_SET_TARGET's domain this one acts for

    def require_privileged(self, what: str) -> None:
        if not self.privileged:
            raise PermissionError_(f"{what} needs a privileged domain; d{self.domid} is not")

    def require_self_or_privileged(self, domid: int, what: str) -> None:
        if domid != self.domid and not self.privileged:
            raise PermissionError_(f"d{self.domid} may not {what} d{domid}")


DOM0 = Caller(0, privileged=True)       # the control domain, as the toolstack acts
