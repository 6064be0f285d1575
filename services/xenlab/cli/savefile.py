"""The client's side of xl save and xl restore: the image between a file
and the SaveRestore service. The file is written to a temporary name next
to FILE, flushed to disk and renamed before the toolstack is told to go on
(destroying the domain): a save that fails leaves no partial FILE and the
domain running."""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from xenlab.proto import common_pb2, save_pb2

READ_CHUNK = 32 * 1024       # under the hypervisor's per-message limit on a stream


class SaveFileError(Exception):
    """One line for the user."""


@dataclass(frozen=True)
class Saved:
    domid: int
    pages: int
    size: int
    suspended_s: float


async def save_domain(hv, ref: common_pb2.DomainRef, path: str, checkpoint: bool = False,
                      paused: bool = False) -> Saved:
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    except OSError as err:
        raise SaveFileError(f"cannot write {path}: {err.strerror}") from None
    done = False
    try:
        with os.fdopen(fd, "wb") as out:
            controls = _Controls(save_pb2.SaveControl(domain=ref, checkpoint=checkpoint,
                                                      paused=paused))
            call = hv.save.Save(controls)
            size, info = 0, None
            async for chunk in call:
                if chunk.data:
                    out.write(chunk.data)
                    size += len(chunk.data)
                if chunk.image_done:
                    info = chunk
                    out.flush()
                    os.fsync(out.fileno())
                    os.replace(tmp, target)
                    done = True
                    controls.send(save_pb2.SaveControl(commit=True))
                if chunk.finished:
                    controls.close()
                    return Saved(chunk.domid, chunk.pages, size, info.suspended_s if info else 0.0)
            raise SaveFileError("the hypervisor ended the save before it finished")
    except OSError as err:
        raise SaveFileError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if not done:
            try:
                os.unlink(tmp)
            except OSError:
                pass


class _Controls:
    """The client's half of the Save stream: the request now, the commit later."""

    def __init__(self, first):
        self._queue: asyncio.Queue = asyncio.Queue()
        self._queue.put_nowait(first)

    def send(self, message) -> None:
        self._queue.put_nowait(message)

    def close(self) -> None:
        self._queue.put_nowait(None)

    def __aiter__(self):
        return self

    async def __anext__(self):
        message = await self._queue.get()
        if message is None:
            raise StopAsyncIteration
        return message


def open_image(path: str):
    try:
        return open(path, "rb")
    except OSError as err:
        raise SaveFileError(f"cannot read {path}: {err.strerror}") from None


async def restore_domain(hv, path: str, paused: bool = False,
                         unmonitored: bool = False) -> save_pb2.RestoreReply:
    with open_image(path) as f:
        async def chunks():
            first = True
            while True:
                data = f.read(READ_CHUNK)
                if not data and not first:
                    return
                yield save_pb2.RestoreChunk(paused=paused, unmonitored=unmonitored, data=data)
                first = False
                if not data:
                    return
        return await hv.save.Restore(chunks())


# -- xl migrate: the image from one toolstack's Save straight into another's Restore ----------
@dataclass(frozen=True)
class Migrated:
    domid: int              # on the source
    new_domid: int          # on the target
    pages: int
    size: int
    suspended_s: float      # the guest's suspend to the image complete, on the source
    downtime_s: float       # the guest's suspend to its start on the target
    round_pages: tuple[int, ...] = ()   # pages sent in each round (the last while suspended)
    started_at: float = 0.0             # time.monotonic() when the target's copy was unpaused


class MigrationError(Exception):
    """One line for the user; the domain still runs on the source."""


async def migrate_domain(source, ref: common_pb2.DomainRef, target, say=lambda line: None) -> Migrated:
    """Move a domain from ``source``'s toolstack to ``target``'s, as xl
    migrate's sender and receiver do between them: the source streams its
    image live (pre-copy rounds while it runs, then its suspend and the
    rest: the save stream, no file) into the target's restore, which builds
    it paused; only then is the source told to go on (it destroys its
    copy), and the target's is unpaused ("permission to start"). Any
    failure before that leaves the domain running on the source, and what
    the target built is destroyed."""
    controls = _Controls(save_pb2.SaveControl(domain=ref, live=True))
    call = source.save.Save(controls)
    seen: dict = {"size": 0}

    async def image():
        # The source's failure ends this stream (the target then refuses a
        # truncated image) and is reported as the source's: an exception
        # raised here would only cancel the target's call.
        first = True
        try:
            async for chunk in call:
                data = chunk.data
                seen["size"] += len(data)
                for i in range(0, len(data), READ_CHUNK):
                    yield save_pb2.RestoreChunk(paused=True, data=data[i:i + READ_CHUNK])
                    first = False
                if chunk.image_done:
                    seen["done"], seen["at"] = chunk, time.monotonic()
                    say("migration target: Transfer complete, requesting permission to start domain.")
                    return
            seen["source"] = "it ended the save before the image was complete"
        except grpc.aio.AioRpcError as err:
            seen["source"] = err.details()
        if first:
            yield save_pb2.RestoreChunk(paused=True)

    say("migration target: Ready to receive domain.")
    try:
        try:
            reply = await target.save.Restore(image())
        except grpc.aio.AioRpcError as err:
            if "source" in seen:
                raise MigrationError(f"the source did not send the domain: {seen['source']}") from None
            raise MigrationError(f"the target did not take the domain: {err.details()}") from None
        if "done" not in seen:
            await _destroy_quietly(target, reply.domid)
            raise MigrationError("the target restored an image the source had not finished "
                                 f"({seen.get('source', 'no reason given')}); destroyed there")
    except BaseException:
        controls.close()            # before the commit: the source resumes the domain
        call.cancel()
        raise
    say("migration sender: Target has acknowledged transfer.")
    say("migration sender: Giving target permission to start.")
    controls.send(save_pb2.SaveControl(commit=True))
    try:
        finished = False
        async for chunk in call:
            if chunk.finished:
                finished = True
                break
    except grpc.aio.AioRpcError as err:
        finished, why = False, err.details()
    else:
        why = "the source ended the save without finishing it"
    controls.close()
    if not finished:
        await _destroy_quietly(target, reply.domid)
        raise MigrationError(f"the source did not let go of the domain ({why}); its copy on the "
                             f"target is destroyed")
    try:
        await target.domains.Unpause(common_pb2.DomainRef(domid=reply.domid))
    except grpc.aio.AioRpcError as err:
        raise MigrationError(f"the domain is on the target (d{reply.domid}) but did not start: "
                             f"{err.details()}: xl unpause it there") from None
    started = time.monotonic()
    say("migration target: Domain started successsfully.")
    done = seen["done"]
    return Migrated(done.domid, reply.domid, done.pages, seen["size"], done.suspended_s,
                    done.suspended_s + started - seen["at"], tuple(done.round_pages), started)


async def vifs_connected(hv, domid: int, timeout: float = 10.0) -> float | None:
    """When (time.monotonic()) every vif of ``domid`` is Connected on both
    ends and hotplugged; None if not within ``timeout``."""
    deadline = time.monotonic() + timeout
    ref = common_pb2.DomainRef(domid=domid)
    while time.monotonic() < deadline:
        vifs = (await hv.domains.NetworkList(ref)).vifs
        if all(v.state == 4 == v.backend_state and v.hotplug_status == "connected" for v in vifs):
            return time.monotonic()
        await asyncio.sleep(0.005)
    return None


async def _destroy_quietly(hv, domid: int) -> None:
    try:
        await hv.domains.Destroy(common_pb2.DomainRef(domid=domid))
    except grpc.aio.AioRpcError:
        pass
