"""XEN_DOMCTL_sendtrigger for a PV domain, and libxl's s3resume.

What Xen's x86 domctl does with each trigger (xen/arch/x86/domctl.c): a
vCPU past the domain's max_vcpus is ESRCH; ``nmi`` sets the vCPU's
nmi_pending and kicks it, for any domain; ``power`` and ``sleep`` press an
ACPI button, which only an HVM domain has (EINVAL for PV); ``init`` and
``reset`` reach the default case (ENOSYS). ``s3resume`` never reaches Xen:
libxl asks the device model to wake an HVM domain and fails a PV one with
ERROR_INVAL. Every refusal says what libxl logs ("Send trigger '%s'
failed").

Xen bounces a pending NMI to the PV guest's registered NMI callback. A
domain process has no trap table, so the hypervisor raises the NMI as an
event on VIRQ_NMI, a per-vCPU VIRQ in the range Xen leaves to the
architecture (VIRQ_ARCH_*), which x86 Xen does not use for anything else;
the guest kernel's handler does what Linux's does with an NMI it cannot
explain.
"""
from __future__ import annotations

import errno
import os

from xenlab.xen.errors import DomainError

TRIGGERS = ("nmi", "reset", "init", "power", "sleep", "s3resume")   # libxl_trigger's names
LIBXL_ERROR_INVAL = -6


def check_trigger(trigger: str, vcpu: int, max_vcpus: int) -> None:
    """Raise what Xen (or libxl) answers a PV domain's ``trigger`` with;
    return for one that is delivered (nmi)."""
    if trigger not in TRIGGERS:
        raise DomainError(errno.EINVAL, f"Invalid trigger \"{trigger}\"")
    if trigger == "s3resume":
        raise DomainError(errno.EINVAL, f"Send trigger '{trigger}' failed, rc={LIBXL_ERROR_INVAL} "
                                        f"(a PV domain has no device model to wake)")
    if vcpu >= max_vcpus:
        raise DomainError(errno.ESRCH, f"Send trigger '{trigger}' failed: "
                                       f"{os.strerror(errno.ESRCH)} (vcpu {vcpu}; the domain "
                                       f"has {max_vcpus})")
    if trigger in ("power", "sleep"):
        raise DomainError(errno.EINVAL, f"Send trigger '{trigger}' failed: "
                                        f"{os.strerror(errno.EINVAL)} (an ACPI button: HVM only)")
    if trigger in ("init", "reset"):
        raise DomainError(errno.ENOSYS, f"Send trigger '{trigger}' failed: "
                                        f"{os.strerror(errno.ENOSYS)}")
