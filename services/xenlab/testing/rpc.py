"""Many calls to a gRPC server at once, within what it will queue."""
from __future__ import annotations

import asyncio

# grpc-core's grpc.server.max_pending_requests is 1000: past it, a loaded
# server cancels the calls it has not picked up yet (CANCELLED). A test
# that fills a table by RPC keeps fewer than that in flight.
IN_FLIGHT = 100


async def call_each(call, items, in_flight: int = IN_FLIGHT) -> list:
    """The results of ``call(item)`` (an awaitable) for every item, in
    order, with at most ``in_flight`` of them outstanding at once."""
    items = list(items)
    results: list = []
    for start in range(0, len(items), in_flight):
        results += await asyncio.gather(*(call(item) for item in items[start:start + in_flight]))
    return results
