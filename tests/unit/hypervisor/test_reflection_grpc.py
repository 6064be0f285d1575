"""Server reflection as a third-party client asks for it: grpc.reflection.v1
(what grpcurl tries first, and all that newer tools speak) as well as
v1alpha (issue 19: only v1alpha was served)."""
from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from xenlab.rpc import CHANNEL_OPTIONS

V1 = "grpc.reflection.v1"


def v1_messages():
    pool = descriptor_pool.Default()
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{V1}.{name}"))
                 for name in ("ServerReflectionRequest", "ServerReflectionResponse"))


async def ask(address: str, package: str, **request) -> object:
    Request, Response = v1_messages()
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        call = channel.stream_stream(f"/{package}.ServerReflection/ServerReflectionInfo",
                                     request_serializer=Request.SerializeToString,
                                     response_deserializer=Response.FromString)
        async for reply in call(iter([Request(**request)])):
            return reply


@pytest.mark.parametrize("package", [V1, "grpc.reflection.v1alpha"])
async def test_reflection_lists_and_describes_the_services_in_both_versions(hypervisor, package):
    listed = await ask(hypervisor.address, package, list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert {"xenlab.proto.Domains", "xenlab.proto.XenStore", f"{V1}.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection", "grpc.health.v1.Health"} <= names
    found = await ask(hypervisor.address, package, file_containing_symbol="xenlab.proto.Domains")
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in found.file_descriptor_response.file_descriptor_proto]
    assert any(f.package == "xenlab.proto" and "Domains" in [s.name for s in f.service] for f in files)


async def test_the_v1_service_describes_itself(hypervisor):
    found = await ask(hypervisor.address, V1, file_containing_symbol=f"{V1}.ServerReflection")
    (raw,) = found.file_descriptor_response.file_descriptor_proto
    proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert proto.package == V1
    (method,) = proto.service[0].method
    assert method.input_type == f".{V1}.ServerReflectionRequest" and method.client_streaming
