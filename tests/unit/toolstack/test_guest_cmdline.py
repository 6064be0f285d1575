"""The guest's kernel command line (xl.cfg's extra=, root=, cmdline=): the
toolstack checks its network settings before it creates anything, and the
domain boots with it in its start_info."""
from __future__ import annotations

import grpc
import pytest

from xenlab.hypervisor.caller import DOM0
from xenlab.proto import common_pb2, domains_pb2


async def test_a_gateway_off_the_guests_subnet_is_refused_and_nothing_is_left(hypervisor):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hypervisor.create_domain(
            "web", vif=[domains_pb2.VifSpec(mac="00:16:3e:00:00:07", ip="10.0.1.2/24")],
            extra={"extra": "ip=10.0.1.2::10.0.9.1:255.255.255.0::eth0:off"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gateway 10.0.9.1 is not a neighbour on eth0's network 10.0.1.0/24" in err.value.details()
    listed = await hypervisor.dom0.domains.List(common_pb2.Empty())
    assert [d.name for d in listed.domains] == ["Domain-0"]


async def test_the_command_line_goes_to_the_domain_in_its_start_info(hypervisor, monkeypatch):
    """xl's composition (root=ROOT EXTRA) reaches the launcher's StartInfo."""
    hv = hypervisor.hv
    started = []
    original = hv._start_info

    def record(*args, **kwargs):
        info = original(*args, **kwargs)
        started.append(info)
        return info
    monkeypatch.setattr(hv, "_start_info", record)
    monkeypatch.setattr(hv.launcher_for("none"), "start", _no_process, raising=False)
    await hypervisor.create_domain(
        "web", vif=[domains_pb2.VifSpec(mac="00:16:3e:00:00:07", ip="10.0.1.2/24")],
        extra={"root": "/dev/xvda1", "extra": "ip=10.0.1.2::10.0.1.1:255.255.255.0"})
    assert [info.cmd_line for info in started] == ["root=/dev/xvda1 ip=10.0.1.2::10.0.1.1:255.255.255.0"]


async def test_the_vif_ip_does_not_address_the_guest_so_a_gateway_needs_an_ip_of_its_own(hypervisor):
    # xl create is Xen's: a vif's ip= is Domain-0's (antispoofing, vif-route),
    # and the guest's command line gives it no address for the gateway.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hypervisor.create_domain(
            "web", vif=[domains_pb2.VifSpec(mac="00:16:3e:00:00:07", ip="10.0.1.2/24")],
            extra={"extra": "ip=::10.0.1.1"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("ip=: gateway 10.0.1.1 but eth0 has no address (give one in ip=: a vif's ip= is "
            "Domain-0's)") in err.value.details()


async def _no_process(info, handles=None):
    return None


async def test_the_command_line_is_in_the_vm_directory_as_libxl_writes_it(hypervisor):
    xs = hypervisor.hv.xenstore
    web, _ = await hypervisor.create_domain(
        "web", extra={"root": "/dev/xvda1", "extra": "console=hvc0"})
    bare, _ = await hypervisor.create_domain("bare")
    vm = xs.read(DOM0, f"/local/domain/{web}/vm").decode()
    assert xs.read(DOM0, f"{vm}/image/cmdline") == b"root=/dev/xvda1 console=hvc0"
    assert xs.read(DOM0, f"{vm}/image/ostype") == b"linux"
    # No command line, no node (libxl writes it only when there is one).
    vm = xs.read(DOM0, f"/local/domain/{bare}/vm").decode()
    assert not xs.exists(f"{vm}/image/cmdline") and xs.read(DOM0, f"{vm}/image/ostype") == b"linux"
