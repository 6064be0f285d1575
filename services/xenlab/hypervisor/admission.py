"""Admission control for the hypervisor's gRPC API: a server interceptor
that decides about each call from its method name and metadata alone,
before any request body is read.

* **Who.** Every call to a hypervisor service must carry a domain's
  credentials (``xen-domid``/``xen-secret``); a call without valid ones is
  answered UNAUTHENTICATED at once, its body never taken from the transport.
  The health and reflection services need none.
* **How many.** A domain may have ``CallLimits.in_flight`` calls in flight
  (streams included, for as long as they last); past that a call gets
  RESOURCE_EXHAUSTED at once, and other domains are served as before.
  Domain-0 and the toolstack (privileged) have a higher limit, not none.
  Calls without credentials share one small budget.
* **How big.** Each method has a limit on its request's size (``limit_for``):
  a few KiB for most, more for the batched calls, whose item caps set them.
  A request past its method's limit gets RESOURCE_EXHAUSTED without being
  parsed; the server-wide ``grpc.max_receive_message_length`` is the largest
  of these limits, so grpc-core refuses anything bigger as it arrives.
  Client-streaming requests (WatchStream's controls) are held to the
  server-wide limit, and the xenstore core checks each field of them.

Refusals (``rpc.refusal``) are client-streaming handlers that end the call
at once: grpc reads a unary request before its handler runs, a stream's only
when asked. Admitted calls are released when their task ends, whatever ends
it (an answer, an error, the client going away before its body came).
"""
from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import Callable

import grpc

from xenlab.hypervisor.caller import Caller
from xenlab.rpc import MD_DOMID, MD_SECRET, refusal
from xenlab.xen.errors import XenError

log = logging.getLogger(__name__)

KiB = 1024

# Request size limits by method, in bytes. A limit names the largest
# request the method's own caps allow, with headroom: e.g. GrantTable.Copy
# takes 512 ops of at most 74 bytes each (tests/unit/hypervisor/
# test_admission.py builds each method's largest request and checks it fits).
DEFAULT_REQUEST_LIMIT = 8 * KiB       # a xenstore path (3072) and value (4096), a VifSpec...
REQUEST_LIMITS = {
    "/xenlab.proto.Domains/Create": 64 * KiB,               # the xl.cfg text comes along
    "/xenlab.proto.GrantTable/MapBatch": 40 * KiB,          # 1024 ops, each with a PTE
    "/xenlab.proto.GrantTable/UnmapBatch": 16 * KiB,        # 1024 handles
    "/xenlab.proto.GrantTable/Copy": 48 * KiB,              # 512 ops
    "/xenlab.proto.Memory/IncreaseReservation": 8 * KiB,    # 512 gfns
    "/xenlab.proto.Memory/DecreaseReservation": 8 * KiB,    # 512 gfns
    "/xenlab.proto.Memory/MmuUpdate": 32 * KiB,             # 1024 updates
    "/xenlab.proto.Memory/MachineToPhys": 8 * KiB,          # 512 mfns
}
MAX_REQUEST = max(DEFAULT_REQUEST_LIMIT, *REQUEST_LIMITS.values())

# Services that answer without credentials.
ANONYMOUS_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                      "/grpc.reflection.v1.ServerReflection/")


def limit_for(method: str) -> int:
    return REQUEST_LIMITS.get(method, DEFAULT_REQUEST_LIMIT)


@dataclass(frozen=True)
class CallLimits:
    """Calls in flight at once, per domain."""
    in_flight: int = 64               # an unprivileged domain
    privileged_in_flight: int = 512   # Domain-0 (its kernel, the toolstack, every xl command)
    anonymous_in_flight: int = 16     # health checks and reflection, all callers together

    def limit(self, caller: Caller | None) -> int:
        if caller is None:
            return self.anonymous_in_flight
        return self.privileged_in_flight if caller.privileged else self.in_flight


@dataclass
class _Oversized:
    """What the request deserializer hands on instead of a request too big
    for its method: the handler refuses it, unparsed."""
    method: str
    size: int
    limit: int

    @property
    def message(self) -> str:
        return (f"{self.method.strip('/').replace('xenlab.proto.', '')}: a request of "
                f"{self.size} bytes; this method takes {self.limit} at most")


@dataclass
class InFlight:
    """Calls in flight by domain (None: calls without credentials)."""
    calls: collections.Counter = field(default_factory=collections.Counter)
    peak: collections.Counter = field(default_factory=collections.Counter)
    refused: collections.Counter = field(default_factory=collections.Counter)

    def take(self, key) -> None:
        self.calls[key] += 1
        if self.calls[key] > self.peak[key]:
            self.peak[key] = self.calls[key]

    def give(self, key) -> None:
        self.calls[key] -= 1
        if not self.calls[key]:
            del self.calls[key]


class Admission(grpc.aio.ServerInterceptor):
    def __init__(self, check: Callable[[str | None, str | None], Caller],
                 limits: CallLimits = CallLimits(), ops: collections.Counter | None = None):
        """``check(domid_text, secret)`` is Identity.check: a Caller, or an
        AuthError. ``ops`` counts every call admitted, by "Service/Method"
        (Hypervisor.ops)."""
        self._check = check
        self.limits = limits
        self.in_flight = InFlight()
        self.ops = ops if ops is not None else collections.Counter()

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        method = details.method
        handler = await continuation(details)
        if handler is None:
            return None                 # UNIMPLEMENTED, from grpc
        if method.startswith(ANONYMOUS_SERVICES):
            caller, key = None, None
        else:
            md = {k: v for k, v in (details.invocation_metadata or ())}
            try:
                caller = self._check(_text(md.get(MD_DOMID)), _text(md.get(MD_SECRET)))
            except XenError as err:
                return refusal(handler, grpc.StatusCode.UNAUTHENTICATED, err.message)
            key = caller.domid
        most = self.limits.limit(caller)
        if self.in_flight.calls[key] >= most:
            self.in_flight.refused[key] += 1
            who = "calls without credentials have" if caller is None \
                else f"d{caller.domid} has"
            return refusal(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"{who} {most} calls in flight already, the most allowed; "
                           "wait for some to finish")
        self.in_flight.take(key)
        if key is not None:
            self.ops[method.rpartition(".")[2]] += 1
        # The call's own task: released however the call ends.
        asyncio.current_task().add_done_callback(lambda _task: self.in_flight.give(key))
        return _limited(handler, method, limit_for(method))


def _text(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _limited(handler: grpc.RpcMethodHandler, method: str, limit: int) -> grpc.RpcMethodHandler:
    """``handler`` with requests past ``limit`` refused before parsing."""
    if handler.request_streaming:
        return handler
    parse = handler.request_deserializer

    def deserialize(raw: bytes):
        if len(raw) > limit:
            return _Oversized(method, len(raw), limit)
        return parse(raw) if parse is not None else raw

    if handler.response_streaming:
        inner = handler.unary_stream

        async def unary_stream(request, context):
            if isinstance(request, _Oversized):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, request.message)
            async for response in inner(request, context):
                yield response
        return grpc.unary_stream_rpc_method_handler(
            unary_stream, request_deserializer=deserialize,
            response_serializer=handler.response_serializer)

    inner = handler.unary_unary

    async def unary_unary(request, context):
        if isinstance(request, _Oversized):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, request.message)
        return await inner(request, context)
    return grpc.unary_unary_rpc_method_handler(
        unary_unary, request_deserializer=deserialize,
        response_serializer=handler.response_serializer)
