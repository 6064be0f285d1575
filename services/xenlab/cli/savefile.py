"""The client's side of xl save and xl restore: the image between a file
and the SaveRestore service. The file is written to a temporary name next
to FILE, flushed to disk and renamed before the toolstack is told to go on
(destroying the domain): a save that fails leaves no partial FILE and the
domain running."""
from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
