"""gRPC plumbing shared by every xenlab server and client.

* credentials travel as metadata ``xen-domid`` / ``xen-secret``;
* ``handles_xen_errors`` is the one place a core's typed ``XenError`` becomes
  a gRPC status and message;
* ``start_server`` adds health checking and server reflection to every server.
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

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


async def start_server(address: str, register: Iterable, service_names: Iterable[str], *,
                       options: Iterable[tuple[str, object]] = CHANNEL_OPTIONS,
                       interceptors: Iterable[grpc.aio.ServerInterceptor] = ()
                       ) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server on `address` with health and reflection.

    `register` holds callables ``f(server)`` that add the servicers;
    `service_names` the full names of those services (for reflection and
    health); `options` are grpc-core's channel arguments, `interceptors`
    see every call first. Returns the server and the bound port (0 for unix
    sockets).
    """
    server = grpc.aio.server(options=list(options), interceptors=list(interceptors))
    for add in register:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection(
        names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(address)
    if port == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port
