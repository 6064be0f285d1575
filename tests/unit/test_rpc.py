"""The one mapping between typed Xen errors and gRPC (xenlab.rpc), both
ways: what a core raises on the server is what the caller gets back, errno
and GNTST_* status included, with no gRPC error left to catch."""
from __future__ import annotations

import errno

import grpc
import pytest

from xenlab.client import HypervisorClient
from xenlab.proto import common_pb2, grants_pb2, xenstore_pb2
from xenlab.rpc import STATUS_ERRNO, call, xen_error
from xenlab.xen import abi
from xenlab.xen.errors import AuthError, DomainError, GrantError, XenStoreError


async def test_the_errno_crosses_exactly_where_the_status_is_ambiguous(hypervisor):
    # NOT_FOUND stands for ENOENT and ESRCH alike: the trailer says which.
    with pytest.raises(DomainError) as err:
        await call(hypervisor.dom0.domains.Info(common_pb2.DomainRef(domid=4242)), DomainError)
    assert err.value.errno == errno.ESRCH
    with pytest.raises(XenStoreError) as err:
        await call(hypervisor.dom0.xenstore.Read(xenstore_pb2.PathRequest(path="/nowhere")),
                   XenStoreError)
    assert err.value.errno == errno.ENOENT and "/nowhere" in err.value.message


async def test_a_grant_error_keeps_its_gntst_status(hypervisor):
    with pytest.raises(GrantError) as err:
        await call(hypervisor.dom0.grants.Map(grants_pb2.MapGrantRequest(domid=0, ref=99999)))
    assert err.value.status == abi.GNTST_bad_gntref and err.value.errno == errno.ENOENT


async def test_missing_credentials_are_an_auth_error(hypervisor):
    async with HypervisorClient.connect(hypervisor.address, 0, "not-the-secret") as client:
        with pytest.raises(AuthError):
            await call(client.xenstore.Read(xenstore_pb2.PathRequest(path="/local")))


async def test_no_server_at_all_is_enotconn(sock_dir):
    async with HypervisorClient.connect(f"unix:{sock_dir}/nobody.sock", 0, "x") as client:
        with pytest.raises(XenStoreError) as err:
            await call(client.xenstore.Read(xenstore_pb2.PathRequest(path="/local"), timeout=5),
                       XenStoreError)
    assert err.value.errno in (errno.ENOTCONN, errno.ETIMEDOUT)


def test_a_refusal_without_trailers_maps_by_its_status():
    bare = grpc.aio.AioRpcError(grpc.StatusCode.ABORTED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                details="conflict")
    err = xen_error(bare, XenStoreError)
    assert isinstance(err, XenStoreError) and err.errno == STATUS_ERRNO[grpc.StatusCode.ABORTED]
    assert err.message == "conflict"
