"""gRPC adapter for the SaveRestore service: xl save and xl restore go to
the toolstack's SaveRestore (toolstack/save.py, handed in), the guest's
SCHEDOP_shutdown(suspend) to the hypervisor."""
from __future__ import annotations

import errno
import time

from xenlab.proto import save_pb2, save_pb2_grpc
from xenlab.rpc import handles_xen_errors
from xenlab.xen.errors import DomainError
from xenlab.xen.save_stream import StreamError


class SaveRestoreServicer(save_pb2_grpc.SaveRestoreServicer):
    def __init__(self, hv, saver):
        """``saver``: the toolstack's SaveRestore."""
        self.hv = hv
        self.saver = saver

    def _toolstack(self, context, what: str) -> None:
        self.hv.identity.authenticate(context).require_privileged(what)

    @handles_xen_errors
    async def Save(self, request_iterator, context):
        """Image chunks, then ``image_done``; the client answers with a
        commit once the image is safe, and only then is the domain destroyed
        (or resumed: -c, -p, or a commit that asks for it paused). No commit (the client went away, or said
        otherwise): the domain is resumed and runs on."""
        self._toolstack(context, "saving a domain")
        requests = request_iterator.__aiter__()
        first = await anext(requests, None)
        if first is None:
            return
        dom = self.hv.domains.lookup(first.domain.domid, first.domain.name)
        dom_saved = None
        try:
            async for dom_saved, data in self.saver.save(dom.domid, live=first.live):
                yield save_pb2.SaveChunk(data=data)
            pages = len(self.hv.memory.populated(dom.domid))
            suspended = time.monotonic() - self.saver.suspended_at.get(dom.domid, time.monotonic())
            yield save_pb2.SaveChunk(image_done=True, domid=dom.domid, pages=pages,
                                     suspended_s=suspended,
                                     round_pages=self.saver.rounds.get(dom.domid, []))
            commit = await anext(requests, None)
            if commit is None or not commit.commit:
                raise DomainError(errno.EIO, "the image was not committed: the domain is resumed")
            # A commit may ask for the domain paused rather than destroyed:
            # xl migrate's sender when the receiver went quiet after "go".
            await self.saver.finish(dom_saved, first.checkpoint, first.paused or commit.paused)
            dom_saved = None
            yield save_pb2.SaveChunk(finished=True, domid=dom.domid, pages=pages)
        finally:
            if dom_saved is not None:
                self.saver.abort(dom_saved)

    @handles_xen_errors
    async def Restore(self, request_iterator, context):
        """The whole image is read and checked before anything is built."""
        self._toolstack(context, "restoring a domain")
        requests = request_iterator.__aiter__()
        options = await anext(requests, None)
        if options is None:
            raise StreamError("no image came")

        async def data():
            yield options.data
            async for chunk in requests:
                yield chunk.data

        dom, pages = await self.saver.restore_stream(data(), paused=options.paused,
                                                     monitored=not options.unmonitored)
        return save_pb2.RestoreReply(domid=dom.domid, name=dom.name, pages=pages)

    @handles_xen_errors
    async def SchedSuspend(self, request, context):
        caller = self.hv.identity.authenticate(context)
        cancelled = await self.hv.sched_suspend(caller.domid, request.record_gfn)
        return save_pb2.SchedSuspendReply(cancelled=cancelled)
