"""Typed errors raised by the protocol cores and the hypercall layer.

Cores raise ``XenError`` subclasses carrying an errno (as Xen's hypercalls
return -errno) or a GNTST_* code. Which transport carries them is not this
module's business: xenlab.rpc maps them to gRPC statuses and back, in one
place; no adapter invents its own.
"""
from __future__ import annotations

import errno as _errno

from xenlab.xen import abi


class XenError(Exception):
    """A hypercall failed with -errno."""

    def __init__(self, err: int, message: str = ""):
        self.errno = err
        self.message = message or _errno.errorcode.get(err, str(err))
        super().__init__(f"{_errno.errorcode.get(err, err)}: {self.message}")


class DomainError(XenError):
    """XEN_DOMCTL_* failures: unknown domain, bad state, duplicate name."""


class MemoryError_(XenError):
    """XENMEM_* and mmu_update failures."""


class EvtchnError(XenError):
    """EVTCHNOP_* failures."""


class XenStoreError(XenError):
    """A xenstore request failed; errno as xenstored answers (ENOENT, EACCES, EAGAIN...)."""


class ConfigError(XenError):
    """A malformed xl.cfg or lab file; message names the line."""

    def __init__(self, message: str, line: int | None = None, path: str | None = None):
        where = ""
        if path:
            where = f"{path}:"
        if line is not None:
            where += f"{line}:"
        super().__init__(_errno.EINVAL, f"{where} {message}".strip() if where else message)
        self.line = line


class GrantError(XenError):
    """A grant-table operation failed with a GNTST_* status."""

    def __init__(self, status: int, message: str = ""):
        self.status = status
        super().__init__(_GNTST_ERRNO.get(status, _errno.EINVAL),
                         message or abi.GNTST_NAMES.get(status, str(status)))


class AuthError(XenError):
    """Missing or wrong domain credentials."""

    def __init__(self, message: str):
        super().__init__(_errno.EACCES, message)


class PermissionError_(XenError):
    """A valid caller asked for something it may not do (EPERM)."""

    def __init__(self, message: str):
        super().__init__(_errno.EPERM, message)


_GNTST_ERRNO = {
    abi.GNTST_general_error: _errno.EINVAL,
    abi.GNTST_bad_domain: _errno.ESRCH,
    abi.GNTST_bad_gntref: _errno.ENOENT,
    abi.GNTST_bad_handle: _errno.ENOENT,
    abi.GNTST_bad_virt_addr: _errno.EFAULT,
    abi.GNTST_bad_dev_addr: _errno.EFAULT,
    abi.GNTST_no_device_space: _errno.ENOSPC,
    abi.GNTST_permission_denied: _errno.EPERM,
    abi.GNTST_bad_page: _errno.EINVAL,
    abi.GNTST_bad_copy_arg: _errno.EINVAL,
    abi.GNTST_address_too_big: _errno.EINVAL,
    abi.GNTST_eagain: _errno.EAGAIN,
}
