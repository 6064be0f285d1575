"""gRPC plumbing shared by every xenlab server and client.

* credentials travel as metadata ``xen-domid`` / ``xen-secret``;
* ``handles_xen_errors`` is the one place a core's typed ``XenError`` becomes
  a gRPC status and message;
* ``start_server`` adds health checking and server reflection to every server,
  as grpc.reflection.v1 and grpc.reflection.v1alpha.
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from xenlab.xen.errors import XenError, grpc_status

log = logging.getLogger(__name__)

MD_DOMID = "xen-domid"
MD_SECRET = "xen-secret"

# Frames and pages travel in messages of a few MiB at most; keep headroom.
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]


def credentials_metadata(domid: int, secret: str) -> tuple[tuple[str, str], ...]:
    return ((MD_DOMID, str(domid)), (MD_SECRET, secret))


def handles_xen_errors(method):
    """Decorate a servicer method (unary or streaming) so that a XenError
    from the core aborts the call with the mapped status and message."""
    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream_wrapper(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except XenError as err:
                await context.abort(grpc_status(err), err.message)
        return stream_wrapper

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except XenError as err:
            await context.abort(grpc_status(err), err.message)
    return wrapper


# grpcio-reflection (1.81) serves only v1alpha. v1 is the same protocol under
# another package (grpc/reflection/v1/reflection.proto: the same messages,
# fields and numbers), so the same servicer answers both on the wire; clients
# that ask v1 first (grpcurl) or only (newer tools) find it.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_V1ALPHA, _V1 = "grpc.reflection.v1alpha", "grpc.reflection.v1"


def _register_reflection_v1_descriptor() -> None:
    """Put the v1 service's descriptor in the default pool (renamed from the
    v1alpha one), so that reflection can describe the v1 service too."""
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(REFLECTION_V1)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = _V1
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(f".{_V1ALPHA}.", f".{_V1}.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{_V1ALPHA}.", f".{_V1}.")
            method.output_type = method.output_type.replace(f".{_V1ALPHA}.", f".{_V1}.")
    pool.AddSerializedFile(proto.SerializeToString())


def _add_reflection(server: grpc.aio.Server, names: list[str]) -> None:
    _register_reflection_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer(names + [reflection.SERVICE_NAME, REFLECTION_V1])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        REFLECTION_V1, {"ServerReflectionInfo": v1}),))


async def start_server(address: str, register: Iterable, service_names: Iterable[str]) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server on `address` with health and reflection.

    `register` holds callables ``f(server)`` that add the servicers;
    `service_names` the full names of those services (for reflection and
    health). Returns the server and the bound port (0 for unix sockets).
    """
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    for add in register:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    _add_reflection(server, names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    port = server.add_insecure_port(address)
    if port == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port
