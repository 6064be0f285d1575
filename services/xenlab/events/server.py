"""The gRPC ``Events`` service (protos/xenlab/proto/events.proto): a thin
adapter that streams an EventHub's messages to each subscriber."""
from __future__ import annotations

from typing import Callable

from xenlab.events.stream import EventHub
from xenlab.proto import events_pb2, events_pb2_grpc
from xenlab.rpc import handles_xen_errors

SERVICE_NAME = events_pb2.DESCRIPTOR.services_by_name["Events"].full_name


class EventsServicer(events_pb2_grpc.EventsServicer):
    """`authorize(context)` raises a XenError for a caller that may not
    watch (the hypervisor's: Domain-0 only); None lets everyone who reaches
    the socket in."""

    def __init__(self, hub: EventHub, authorize: Callable | None = None):
        self.hub = hub
        self.authorize = authorize

    @handles_xen_errors
    async def Subscribe(self, request, context):
        if self.authorize is not None:
            self.authorize(context)
        sub = self.hub.subscribe(list(request.topics), retained=not request.no_retained)
        try:
            # Headers now: the subscription is in place, so a client may act
            # and be sure to see what its action publishes.
            await context.send_initial_metadata(())
            while True:
                item = await sub.get()
                if item is None:
                    return
                message, retained = item
                yield events_pb2.Event(topic=message.topic, payload=message.payload,
                                       retained=retained)
        finally:
            self.hub.unsubscribe(sub)


def register(hub: EventHub, authorize: Callable | None = None):
    """A `register` callable for rpc.start_server."""
    return lambda server: events_pb2_grpc.add_EventsServicer_to_server(
        EventsServicer(hub, authorize), server)
