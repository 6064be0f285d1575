"""Who is calling: per-domain secrets issued at creation, checked on every call."""
from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from xenlab.rpc import MD_DOMID, MD_SECRET
from xenlab.xen.digits import U32_MAX, parse_decimal, quoted
from xenlab.xen.errors import AuthError, PermissionError_, XenError


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


class Identity:
    """The secret table. Secrets are compared in constant time."""

    def __init__(self) -> None:
        self._secrets: dict[int, str] = {}
        self._privileged: set[int] = set()

    def issue(self, domid: int, privileged: bool = False) -> str:
        secret = secrets.token_urlsafe(32)
        self._secrets[domid] = secret
        if privileged:
            self._privileged.add(domid)
        return secret

    def revoke(self, domid: int) -> None:
        self._secrets.pop(domid, None)
        self._privileged.discard(domid)

    def check(self, domid_text: str | None, secret: str | None) -> Caller:
        if domid_text is None or secret is None:
            raise AuthError(f"missing credentials: send {MD_DOMID} and {MD_SECRET} metadata")
        try:
            domid = parse_decimal(domid_text, MD_DOMID, maximum=U32_MAX)
        except XenError:
            raise AuthError(f"{MD_DOMID} must be a domain id, not {quoted(domid_text)}") from None
        expected = self._secrets.get(domid)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            raise AuthError(f"bad credentials for d{domid}")
        return Caller(domid, domid in self._privileged)

    def authenticate(self, context) -> Caller:
        md = {k: v for k, v in (context.invocation_metadata() or ())}
        return self.check(md.get(MD_DOMID), md.get(MD_SECRET))
