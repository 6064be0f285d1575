"""GNTTABOP_copy from inside a domain: the doorbell when there is one, else gRPC.

``GrantCopier.submit`` starts one batch and returns a future of its GNTST_*
statuses at once, so that a driver may keep several batches in flight
(netback's tx and rx paths do). A batch goes out as COPY datagrams of at most
``MAX_COPY_BATCH`` ops over the event-channel doorbell (xenlab.domain.evtchn);
the hypervisor runs the same validated copy as for GrantTable.Copy, so the
statuses are the same either way. Without a doorbell, or if it is lost before
answering, the batch goes through GrantTable.Copy; a call that fails outright
fails every op in it with GNTST_general_error, as a failed hypercall would.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Sequence

import grpc

from xenlab.proto import grants_pb2
from xenlab.xen import abi
from xenlab.xen.doorbell import MAX_COPY_BATCH, GnttabCopy

log = logging.getLogger(__name__)


class GrantCopier:
    def __init__(self, client, evtchn, label: str = ""):
        """``client``: a HypervisorClient; ``evtchn``: the domain's
        GuestEventChannels, whose doorbell carries the COPYs."""
        self._client = client
        self._evtchn = evtchn
        self._label = label or f"d{client.domid}"
        self._tasks: set[asyncio.Task] = set()

    def submit(self, ops: Sequence[GnttabCopy]) -> asyncio.Future:
        """Start copying ``ops``; the future is one GNTST_* per op."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        if not ops:
            answer.set_result([])
        elif len(ops) > MAX_COPY_BATCH:
            self._spawn(self._chunked(ops), answer)
        elif not self._evtchn.copy(ops, answer, lambda: self._spawn(self._grpc(ops), answer)):
            self._spawn(self._grpc(ops), answer)
        return answer

    async def copy(self, ops: Sequence[GnttabCopy]) -> list[int]:
        return await self.submit(ops)

    async def _chunked(self, ops: Sequence[GnttabCopy]) -> list[int]:
        parts = [self.submit(ops[i:i + MAX_COPY_BATCH]) for i in range(0, len(ops), MAX_COPY_BATCH)]
        return [status for part in parts for status in await part]

    async def _grpc(self, ops: Sequence[GnttabCopy]) -> list[int]:
        request = grants_pb2.GrantCopyRequest(ops=[_pb_op(op) for op in ops])
        try:
            reply = await self._client.grants.Copy(request)
        except grpc.aio.AioRpcError as err:
            log.warning("%s: grant copy failed: %s", self._label, err.details())
            return [abi.GNTST_general_error] * len(ops)
        return list(reply.status)

    def _spawn(self, coro, answer: asyncio.Future) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        pass_on(task, answer)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _pb_op(op: GnttabCopy) -> grants_pb2.GrantCopyOp:
    sptr, sdom, soff, dptr, ddom, doff, length, flags = op
    src_gref = bool(flags & abi.GNTCOPY_source_gref)
    dst_gref = bool(flags & abi.GNTCOPY_dest_gref)
    return grants_pb2.GrantCopyOp(
        source=grants_pb2.CopyPtr(domid=sdom, ref=sptr if src_gref else 0,
                                  gfn=0 if src_gref else sptr, use_gref=src_gref, offset=soff),
        dest=grants_pb2.CopyPtr(domid=ddom, ref=dptr if dst_gref else 0,
                                gfn=0 if dst_gref else dptr, use_gref=dst_gref, offset=doff),
        len=length)


def pass_on(source: asyncio.Future, answer: asyncio.Future,
            result: Callable[[Any], Any] = lambda r: r) -> None:
    """When ``source`` is done, ``answer`` is done the same way (its result
    through ``result``), unless something settled ``answer`` first."""
    def done(f: asyncio.Future) -> None:
        if answer.done():
            return
        if f.cancelled():
            answer.cancel()
        elif f.exception() is not None:
            answer.set_exception(f.exception())
        else:
            answer.set_result(result(f.result()))
    source.add_done_callback(done)
