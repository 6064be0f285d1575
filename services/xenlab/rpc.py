"""gRPC plumbing shared by every xenlab server and client.

* credentials travel as metadata ``xen-domid`` / ``xen-secret``;
* the one mapping between a typed ``XenError`` and a gRPC status, both ways:
  on the server ``handles_xen_errors`` turns a core's error into a status,
  a message and the errno (and a grant error's GNTST_* status) as trailing
  metadata; on the client ``xen_error`` and ``call`` turn a failed call back
  into the same typed error, so that nothing above the hypercall layer sees
  a gRPC error;
* ``start_server`` adds health checking and server reflection to every
  server (as grpc.reflection.v1 and grpc.reflection.v1alpha), and makes its
  unix socket 0600;
* ``IdleClosingChannel``: a client channel that lets its connection, and
  grpc-core's threads with it, go while no call is in flight.
"""
from __future__ import annotations

import asyncio
import errno as _errno
import functools
import hmac
import inspect
import logging
import os
from typing import Callable, Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from xenlab.rundir import PRIVATE_FILE, private_umask
from xenlab.xen.errors import AuthError, GrantError, XenError, XenStoreError

log = logging.getLogger(__name__)
# One DEBUG line per refused call: the hypervisor keeps them in its console
# ring (xl dmesg: xenlab.hypervisor.conring).
_refused = logging.getLogger("xenlab.rpc.refused")

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


# -- XenError <-> gRPC status ------------------------------------------------------------
# A refused call's trailing metadata: the errno, exact where the status code
# is not (NOT_FOUND is ENOENT or ESRCH), and a grant error's GNTST_* status.
MD_ERRNO = "xen-errno"
MD_GNTST = "xen-gntst"

_ERRNO_STATUS = {
    _errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    _errno.ESRCH: grpc.StatusCode.NOT_FOUND,
    _errno.EEXIST: grpc.StatusCode.ALREADY_EXISTS,
    _errno.EPERM: grpc.StatusCode.PERMISSION_DENIED,
    _errno.EACCES: grpc.StatusCode.PERMISSION_DENIED,
    _errno.EINVAL: grpc.StatusCode.INVALID_ARGUMENT,
    _errno.E2BIG: grpc.StatusCode.INVALID_ARGUMENT,
    _errno.ENAMETOOLONG: grpc.StatusCode.INVALID_ARGUMENT,
    _errno.EFAULT: grpc.StatusCode.INVALID_ARGUMENT,
    _errno.EAGAIN: grpc.StatusCode.ABORTED,
    _errno.EBUSY: grpc.StatusCode.FAILED_PRECONDITION,
    _errno.ENOTEMPTY: grpc.StatusCode.FAILED_PRECONDITION,
    _errno.EISCONN: grpc.StatusCode.FAILED_PRECONDITION,
    _errno.ENOTCONN: grpc.StatusCode.FAILED_PRECONDITION,
    _errno.ENOSPC: grpc.StatusCode.RESOURCE_EXHAUSTED,
    _errno.ENOMEM: grpc.StatusCode.RESOURCE_EXHAUSTED,
    _errno.EDQUOT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    _errno.EMFILE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    _errno.ETIMEDOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    _errno.ENOSYS: grpc.StatusCode.UNIMPLEMENTED,
    _errno.EOPNOTSUPP: grpc.StatusCode.UNIMPLEMENTED,
    _errno.ERANGE: grpc.StatusCode.OUT_OF_RANGE,
}


def grpc_status(err: XenError) -> grpc.StatusCode:
    """The status a XenError is refused with."""
    if isinstance(err, AuthError):
        return grpc.StatusCode.UNAUTHENTICATED
    return _ERRNO_STATUS.get(err.errno, grpc.StatusCode.FAILED_PRECONDITION)


def error_trailers(err: XenError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata a XenError is refused with (xen_error reads it)."""
    trailers = ((MD_ERRNO, str(err.errno)),)
    if isinstance(err, GrantError):
        trailers += ((MD_GNTST, str(err.status)),)
    return trailers


# gRPC status -> errno, for a refusal that carries no xen-errno (a server
# that is not ours): the Xen view of a failure.
STATUS_ERRNO = {
    grpc.StatusCode.NOT_FOUND: _errno.ENOENT,
    grpc.StatusCode.ALREADY_EXISTS: _errno.EEXIST,
    grpc.StatusCode.PERMISSION_DENIED: _errno.EACCES,
    grpc.StatusCode.UNAUTHENTICATED: _errno.EACCES,
    grpc.StatusCode.INVALID_ARGUMENT: _errno.EINVAL,
    grpc.StatusCode.ABORTED: _errno.EAGAIN,
    grpc.StatusCode.FAILED_PRECONDITION: _errno.EBUSY,
    grpc.StatusCode.RESOURCE_EXHAUSTED: _errno.ENOSPC,
    grpc.StatusCode.UNIMPLEMENTED: _errno.ENOSYS,
    grpc.StatusCode.OUT_OF_RANGE: _errno.ERANGE,
}
# The transport's own failures: no server answered.
TRANSPORT_ERRNO = {
    grpc.StatusCode.UNAVAILABLE: _errno.ENOTCONN,
    grpc.StatusCode.CANCELLED: _errno.ECANCELED,
    grpc.StatusCode.DEADLINE_EXCEEDED: _errno.ETIMEDOUT,
}


def _trailer(err: grpc.aio.AioRpcError, key: str) -> int | None:
    for item in err.trailing_metadata() or ():
        if isinstance(item, tuple) and len(item) == 2 and item[0] == key:
            try:
                return int(item[1])
            except (TypeError, ValueError):
                return None
    return None


def xen_error(err: grpc.aio.AioRpcError, kind: type[XenError] = XenError) -> XenError:
    """A failed call as the typed error the server raised: ``kind`` (a
    XenError subclass taking errno and message) with the errno it sent,
    GrantError for a grant error, AuthError for missing credentials; a
    failure of the transport itself is ENOTCONN, ECANCELED or ETIMEDOUT."""
    code = err.code()
    message = err.details() or code.name
    status = _trailer(err, MD_GNTST)
    if status is not None:
        return GrantError(status, message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthError(message)
    number = _trailer(err, MD_ERRNO)
    if number is None:
        number = STATUS_ERRNO.get(code) or TRANSPORT_ERRNO.get(code, _errno.EIO)
    return kind(number, message)


async def call(awaitable, kind: type[XenError] = XenError):
    """Await one gRPC call; a failure raises the typed error (xen_error)."""
    try:
        return await awaitable
    except grpc.aio.AioRpcError as err:
        raise xen_error(err, kind) from None


def handles_xen_errors(method):
    """Decorate a servicer method (unary or streaming) so that a XenError
    from the core aborts the call with the mapped status, message and
    trailers."""
    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream_wrapper(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except XenError as err:
                _log_refusal(method, err)
                await context.abort(grpc_status(err), err.message, error_trailers(err))
        return stream_wrapper

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except XenError as err:
            _log_refusal(method, err)
            await context.abort(grpc_status(err), err.message, error_trailers(err))
    return wrapper


def _log_refusal(method, err: XenError) -> None:
    # A xenstore ENOENT is an answer ("is it there?"), not a refusal: the
    # ring would be nothing but those.
    if not (isinstance(err, XenStoreError) and err.errno == _errno.ENOENT):
        _refused.debug("%s refused: %s", method.__name__, err)


def refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
            details: str) -> grpc.RpcMethodHandler:
    """A handler that ends the call with ``code`` without reading its request:
    whatever the method's shape, it is served as a client-streaming one
    whose request iterator is never touched, so a refused caller's body is
    neither received nor deserialized (the wire does not tell the shapes
    apart)."""
    if handler.response_streaming:
        async def refuse_stream(request_iterator, context):
            await context.abort(code, details)
            yield           # pragma: no cover - makes this an async generator
        return grpc.stream_stream_rpc_method_handler(refuse_stream)

    async def refuse(request_iterator, context):
        await context.abort(code, details)
    return grpc.stream_unary_rpc_method_handler(refuse)


class TokenGate(grpc.aio.ServerInterceptor):
    """Calls to ``services`` must carry metadata ``key`` equal to ``token``
    (compared in constant time); any other is refused UNAUTHENTICATED before
    its request is read. Health checks and reflection stay open."""

    def __init__(self, key: str, token: str, services: Iterable[str]):
        self._key = key
        self._token = token.encode()
        self._prefixes = tuple(f"/{name}/" for name in services)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefixes):
            return handler
        given = next((v for k, v in details.invocation_metadata or () if k == self._key), "")
        if isinstance(given, str):
            given = given.encode()
        if self._token and hmac.compare_digest(given, self._token):
            return handler
        return refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                       f"{details.method}: send the toolstack's {self._key} metadata")


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


def _bind(server: grpc.aio.Server, address: str) -> int:
    """add_insecure_port, failing as OSError naming the address (grpcio
    raises a RuntimeError for a TCP address, and for a unix socket returns
    0 whether or not it bound)."""
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:
        raise OSError(f"cannot listen on {address}: {err}") from None
    if port == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    return port


async def start_server(address: str, register: Iterable, service_names: Iterable[str],
                       interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
                       also: Iterable[str] = (), *,
                       options: Iterable[tuple[str, object]] = CHANNEL_OPTIONS
                       ) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server on `address` with health and reflection.

    `register` holds callables ``f(server)`` that add the servicers;
    `service_names` the full names of those services (for reflection and
    health); `also`, unix-socket addresses it listens on as well;
    `options`, grpc-core's channel arguments. Returns the server and the
    port `address` bound (0 for unix sockets).
    """
    server = grpc.aio.server(options=list(options), interceptors=list(interceptors))
    for add in register:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    _add_reflection(server, names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    if address.startswith("unix:"):
        # gRPC binds the socket itself, here: under umask 077 it is never
        # connectable by another user, and the chmod says so whatever the
        # umask was (SECURITY.md: the rundir's sockets are 0600).
        path = address[len("unix:"):]
        with private_umask():
            port = _bind(server, address)
        if os.path.exists(path):
            os.chmod(path, PRIVATE_FILE)
    else:
        port = _bind(server, address)
    for extra in also:
        # A unix socket is opened to whom it is for by the caller, after the bind.
        with private_umask():
            _bind(server, extra)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


# -- a channel that costs nothing while idle -----------------------------------------
class IdleClosingChannel(grpc.aio.Channel):
    """A grpc.aio channel that closes the channel under it once ``idle``
    seconds have passed with no call in flight, and opens a new one with
    ``factory()`` (the same address, options and interceptors) for the
    next call.

    For as long as any channel lives, grpc-core keeps threads of its own
    (its EventEngine's workers and lifeguard) that wake the process several
    times a second; a client whose calls are rare should not pay for them
    between calls. Stubs are built on this channel once: each multicallable
    takes the current channel when it is called. A call is in flight from
    its start until its call object is done (a stream: until its status is
    in), and is never cut: only a channel with no call in flight is closed,
    and it is taken away before its close begins, so that a call made
    meanwhile gets a fresh one. Anything waiting on the connectivity state
    (``channel_ready``, ``wait_for_state_change``) counts as a call. While
    no channel is open the state is IDLE, as a channel's before its first
    call. ``close()`` closes for good: a call after it raises
    grpc.aio.UsageError. ``opened`` counts the channels it opened.
    """

    def __init__(self, factory: Callable[[], grpc.aio.Channel], idle: float):
        if not idle > 0:
            raise ValueError(f"the idle period must be positive, not {idle!r}")
        self._factory = factory
        self._idle = idle
        self._channel: grpc.aio.Channel | None = None
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None     # its calls' loop
        self._closing: set[asyncio.Task] = set()    # idle channels being closed
        self._closed = False
        self.opened = 0         # channels opened so far
        # The open channel's multicallables, by ours: gone with it.
        self._callables: dict[_IdleMultiCallable, object] = {}

    # -- the channel under it ---------------------------------------------------------
    def _begin(self) -> grpc.aio.Channel:
        """A call starts: the open channel (one is opened if none is)."""
        if self._closed:
            raise grpc.aio.UsageError("the channel is closed")
        self._loop = asyncio.get_running_loop()
        if self._channel is None:
            self._channel = self._factory()
            # Not logged (nor is the close): a domU's log is its console, and
            # a line there is a message to xenconsoled an idle domU must not
            # send. ``opened`` counts them.
            self.opened += 1
        self._in_flight += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return self._channel

    def _end(self) -> None:
        """A call is done; the last one arms the idle timer."""
        self._in_flight -= 1
        if self._in_flight == 0 and self._channel is not None and not self._closed \
                and not self._loop.is_closed():
            self._timer = self._loop.call_later(self._idle, self._expire)

    def _track(self, call) -> None:
        """Count ``call`` as in flight until it is done, once."""
        ended = False

        def done(_call) -> None:
            nonlocal ended
            if not ended:
                ended = True
                self._end()
        call.add_done_callback(done)

    def _expire(self) -> None:
        self._timer = None
        if self._in_flight or self._channel is None or self._closed:
            return
        channel, self._channel = self._channel, None
        self._callables.clear()
        task = self._loop.create_task(channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- grpc.aio.Channel -------------------------------------------------------------
    def unary_unary(self, method, request_serializer=None, response_deserializer=None,
                    _registered_method=False):
        return _IdleUnaryUnary(self, "unary_unary", method, request_serializer,
                               response_deserializer, _registered_method)

    def unary_stream(self, method, request_serializer=None, response_deserializer=None,
                     _registered_method=False):
        return _IdleUnaryStream(self, "unary_stream", method, request_serializer,
                                response_deserializer, _registered_method)

    def stream_unary(self, method, request_serializer=None, response_deserializer=None,
                     _registered_method=False):
        return _IdleStreamUnary(self, "stream_unary", method, request_serializer,
                                response_deserializer, _registered_method)

    def stream_stream(self, method, request_serializer=None, response_deserializer=None,
                      _registered_method=False):
        return _IdleStreamStream(self, "stream_stream", method, request_serializer,
                                 response_deserializer, _registered_method)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        if not try_to_connect:
            # Looking is not using: the idle timer runs on.
            if self._channel is None:
                return grpc.ChannelConnectivity.IDLE
            return self._channel.get_state()
        channel = self._begin()
        try:
            return channel.get_state(True)
        finally:
            self._end()         # a connection nobody calls on goes after ``idle`` too

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        if self._channel is None and not self._closed \
                and last_observed_state is not grpc.ChannelConnectivity.IDLE:
            return
        channel = self._begin()
        try:
            await channel.wait_for_state_change(last_observed_state)
        finally:
            self._end()

    async def channel_ready(self) -> None:
        channel = self._begin()
        try:
            await channel.channel_ready()
        finally:
            self._end()

    async def close(self, grace: float | None = None) -> None:
        """Close for good; as grpc.aio's, calls in flight are cancelled
        (after ``grace`` seconds, if given)."""
        if not self._closed:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            channel, self._channel = self._channel, None
            self._callables.clear()
            if channel is not None:
                await channel.close(grace)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> "IdleClosingChannel":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class _IdleMultiCallable:
    """One method on an IdleClosingChannel: the current channel's
    multicallable, made again when the channel was."""

    def __init__(self, owner: IdleClosingChannel, kind: str, method: str, request_serializer,
                 response_deserializer, registered: bool):
        self._owner = owner
        self._kind = kind
        self._method = method
        self._serializer = request_serializer
        self._deserializer = response_deserializer
        self._registered = registered

    def __call__(self, request=None, **kwargs):
        owner = self._owner
        channel = owner._begin()
        try:
            real = owner._callables.get(self)
            if real is None:
                real = owner._callables[self] = getattr(channel, self._kind)(
                    self._method, self._serializer, self._deserializer,
                    _registered_method=self._registered)
            call = real(request, **kwargs)
        except BaseException:
            owner._end()
            raise
        owner._track(call)
        return call


class _IdleUnaryUnary(_IdleMultiCallable, grpc.aio.UnaryUnaryMultiCallable):
    pass


class _IdleUnaryStream(_IdleMultiCallable, grpc.aio.UnaryStreamMultiCallable):
    pass


class _IdleStreamUnary(_IdleMultiCallable, grpc.aio.StreamUnaryMultiCallable):
    pass


class _IdleStreamStream(_IdleMultiCallable, grpc.aio.StreamStreamMultiCallable):
    pass
