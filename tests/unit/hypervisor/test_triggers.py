"""xl trigger on a PV domain, as Xen's x86 domctl and libxl answer it."""
from __future__ import annotations

import errno

import pytest

from xenlab.hypervisor.triggers import check_trigger
from xenlab.xen.errors import DomainError


def test_nmi_is_delivered():
    check_trigger("nmi", 0, 1)
    check_trigger("nmi", 3, 4)


@pytest.mark.parametrize("trigger, vcpu, code, words", [
    ("power", 0, errno.EINVAL, "Send trigger 'power' failed: Invalid argument"),
    ("sleep", 0, errno.EINVAL, "Send trigger 'sleep' failed: Invalid argument"),
    ("init", 0, errno.ENOSYS, "Send trigger 'init' failed: Function not implemented"),
    ("reset", 0, errno.ENOSYS, "Send trigger 'reset' failed: Function not implemented"),
    ("s3resume", 0, errno.EINVAL, "Send trigger 's3resume' failed, rc=-6"),
    ("nmi", 1, errno.ESRCH, "Send trigger 'nmi' failed: No such process"),
    ("power", 5, errno.ESRCH, "Send trigger 'power' failed: No such process"),
    ("kick", 0, errno.EINVAL, 'Invalid trigger "kick"'),
])
def test_the_others_are_refused_as_xen_and_libxl_refuse_them(trigger, vcpu, code, words):
    with pytest.raises(DomainError) as err:
        check_trigger(trigger, vcpu, 1)
    assert err.value.errno == code
    assert err.value.message.startswith(words)
