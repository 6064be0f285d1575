"""xl trigger D nmi [VCPU] reaches the guest kernel's NMI handler on that
vCPU; the triggers a PV domain does not take are refused through the API
with Xen's errno, and only Domain-0 may send any."""
from __future__ import annotations

import grpc
import pytest

from xenlab.proto import common_pb2, console_pb2, console_pb2_grpc
from xenlab.testing import eventually


async def test_an_nmi_reaches_the_vcpu_it_is_sent_to(hypervisor, caplog):
    kernel = await hypervisor.boot_domain("web", vcpus=2)
    stub = console_pb2_grpc.TriggersStub(hypervisor.dom0.channel)
    ref = common_pb2.DomainRef(domid=kernel.domid)
    await stub.Send(console_pb2.TriggerRequest(domain=ref, trigger="nmi", vcpu=1))
    await eventually(lambda: kernel.nmis == 1, "the NMI handled")
    assert "Uhhuh. NMI received for unknown reason 00 on CPU 1." in caplog.text
    for trigger, code in (("power", grpc.StatusCode.INVALID_ARGUMENT),
                          ("init", grpc.StatusCode.UNIMPLEMENTED),
                          ("s3resume", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Send(console_pb2.TriggerRequest(domain=ref, trigger=trigger))
        assert err.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Send(console_pb2.TriggerRequest(domain=ref, trigger="nmi", vcpu=2))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND         # ESRCH: no such vCPU
    assert kernel.nmis == 1


async def test_only_domain_0_sends_triggers(hypervisor):
    kernel = await hypervisor.boot_domain("web")
    _, other = await hypervisor.create_domain("other")
    stub = console_pb2_grpc.TriggersStub(other.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Send(console_pb2.TriggerRequest(
            domain=common_pb2.DomainRef(domid=kernel.domid), trigger="nmi"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert kernel.nmis == 0
