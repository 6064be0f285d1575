"""The client's side of xl save, xl restore and xl migrate (as bridge/ holds
the bridge service's client, this holds the SaveRestore service's): the
image between a file and the SaveRestore service, or from one toolstack's
Save straight into another's Restore, or through a pipe to `xl
migrate-receive`. The file is written to a temporary name next to FILE,
flushed to disk and renamed before the toolstack is told to go on
(destroying the domain): a save that fails leaves no partial FILE and the
domain running."""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import grpc

from xenlab import eventloop
from xenlab.proto import common_pb2, save_pb2
from xenlab.xen import save_stream as stream

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


async def migrate_domain(source, ref: common_pb2.DomainRef, target, say=lambda line: None,
                         live: bool = True) -> Migrated:
    """Move a domain from ``source``'s toolstack to ``target``'s, as xl
    migrate's sender and receiver do between them: the source streams its
    image live (pre-copy rounds while it runs, then its suspend and the
    rest: the save stream, no file) into the target's restore, which builds
    it paused; only then is the source told to go on (it destroys its
    copy), and the target's is unpaused ("permission to start"). Any
    failure before that leaves the domain running on the source, and what
    the target built is destroyed. ``live=False``: stop-and-copy (suspend
    first, then every page once), the baseline pre-copy is measured against."""
    controls = _Controls(save_pb2.SaveControl(domain=ref, live=live))
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


# -- xl migrate over a pipe: xl's sender and `xl migrate-receive` --------------------------
# `xl migrate -s SSHCOMMAND DOMAIN HOST` runs `SSHCOMMAND HOST xenlab xl migrate-receive`
# and talks to it over its standard input and output, with xl's own messages
# (tools/xl/xl.h): the receiver's banner, the image, its "ready", the sender's
# "go", the receiver's report and a status byte; on a failure at the target,
# its permission for the sender to resume. The receiver's stderr lines reach
# the sender's terminal, as through ssh.
BANNER = b"xl migration receiver ready, send binary domain data.\n"
READY = b"domain received, ready to unpause\0"
GO = b"domain is yours, you are cleared to unpause\0"
REPORT = b"my copy unpause results are as follows\0"
HANDSHAKE_TIMEOUT = 60.0      # seconds for each message of the receiver (the banner, ready, report)


class HandshakeLost(MigrationError):
    """The receiver was told to start and said nothing after: the domain
    may run there. It is left paused here, for the user to decide."""


async def read_fixed(reader: asyncio.StreamReader, message: bytes, what: str,
                     timeout: float | None = None) -> None:
    """One of xl's fixed messages, whole; MigrationError if the stream ends,
    says something else, or (with ``timeout``) says nothing for that long."""
    try:
        async with asyncio.timeout(timeout):
            got = await reader.readexactly(len(message))
    except TimeoutError:
        raise MigrationError(f"no {what} from the receiver within {timeout:g} s") from None
    except asyncio.IncompleteReadError as err:
        raise MigrationError(f"the migration stream ended before the {what} "
                             f"({len(err.partial)} of {len(message)} bytes)") from None
    if got != message:
        raise MigrationError(f"the migration stream contained unexpected data instead of "
                             f"the {what}: {got[:60]!r}")


async def read_image(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """One save image from ``reader``, to its END record and not a byte
    more, in pieces the hypervisor takes (its checks are the Restore's)."""
    async def exactly(n: int) -> bytes:
        try:
            return await reader.readexactly(n)
        except asyncio.IncompleteReadError as err:
            raise MigrationError(f"the migration stream ended inside the image "
                                 f"({len(err.partial)} of {n} bytes of a piece)") from None

    yield await exactly(stream.HEADERS_SIZE)
    while True:
        head = await exactly(stream.RHDR_SIZE)
        try:
            rtype, rest = stream.record_extent(head)
        except stream.StreamError as err:
            raise MigrationError(f"the migration stream is not an image: {err.message}") from None
        body = await exactly(rest)
        yield head
        for i in range(0, len(body), READ_CHUNK):
            yield body[i:i + READ_CHUNK]
        if rtype == stream.REC_END:
            return


async def receive_migration(hv, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            say=lambda line: None, paused: bool = False) -> int:
    """`xl migrate-receive`: the domain from ``reader`` restored paused, and
    started once the sender says go (left paused with ``paused``: -p). The
    new domid; MigrationError when it did not start here (the sender then
    resumes its own)."""
    say("migration target: Ready to receive domain.")
    writer.write(BANNER)
    await writer.drain()

    broken: list[str] = []

    async def chunks():
        # What is wrong with the stream ends it (the hypervisor then refuses
        # a truncated image) and is reported as the stream's: an exception
        # raised here would only cancel the call.
        first = True
        try:
            async for piece in read_image(reader):
                yield save_pb2.RestoreChunk(paused=True, data=piece) if first else \
                    save_pb2.RestoreChunk(data=piece)
                first = False
        except MigrationError as err:
            broken.append(str(err))
        if first:
            yield save_pb2.RestoreChunk(paused=True)
    try:
        reply = await hv.save.Restore(chunks())
    except grpc.aio.AioRpcError as err:
        why = broken[0] if broken else err.details()
        raise MigrationError(f"migration target: Domain creation failed: {why}") from None
    if broken:               # cannot be: a restore takes only a whole image
        await _destroy_quietly(hv, reply.domid)
        raise MigrationError(f"migration target: {broken[0]}")
    say("migration target: Transfer complete, requesting permission to start domain.")
    writer.write(READY)
    await writer.drain()
    status = 0
    try:
        await read_fixed(reader, GO, "GO message")
        say("migration target: Got permission, starting domain.")
        if not paused:
            await hv.domains.Unpause(common_pb2.DomainRef(domid=reply.domid))
        say("migration target: Domain started successsfully.")
    except (MigrationError, grpc.aio.AioRpcError) as err:
        say(f"migration target: {err.details() if isinstance(err, grpc.aio.AioRpcError) else err}")
        status = 1
    try:
        writer.write(REPORT + bytes([status]))
        await writer.drain()
    except (ConnectionError, OSError):
        if status == 0:
            return reply.domid         # started: the sender will learn it or give up on the pipe
    if status:
        say("migration target: Failure, destroying our copy.")
        await _destroy_quietly(hv, reply.domid)
        say("migration target: Cleanup OK, granting sender permission to resume.")
        try:
            writer.write(GO)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        raise MigrationError(f"d{reply.domid} did not start here and is destroyed")
    return reply.domid


async def migrate_through(source, ref: common_pb2.DomainRef, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter, say=lambda line: None,
                          live: bool = True) -> Migrated:
    """xl migrate's sender over a pipe to `xl migrate-receive`: the image
    (live), then the handshake. Until the receiver's report of a start the
    domain is the source's: any failure before resumes it here."""
    await read_fixed(reader, BANNER, "banner", HANDSHAKE_TIMEOUT)
    controls = _Controls(save_pb2.SaveControl(domain=ref, live=live))
    call = source.save.Save(controls)
    size, done = 0, None
    try:
        async for chunk in call:
            if chunk.data:
                writer.write(chunk.data)
                size += len(chunk.data)
                await writer.drain()
            if chunk.image_done:
                done, at = chunk, time.monotonic()
                break
        if done is None:
            raise MigrationError("the source ended the save before the image was complete")
        await read_fixed(reader, READY, "ready message", HANDSHAKE_TIMEOUT)
    except BaseException as err:
        controls.close()            # no commit: the source resumes the domain
        call.cancel()
        if isinstance(err, grpc.aio.AioRpcError):
            raise MigrationError(f"the source did not send the domain: {err.details()}") from None
        if isinstance(err, (MigrationError, OSError)):      # the pipe broke, or the receiver
            raise MigrationError(f"{err}; the domain is resumed here") from None
        raise
    say("migration sender: Target has acknowledged transfer.")
    say("migration sender: Giving target permission to start.")
    try:
        writer.write(GO)
        await writer.drain()
        await read_fixed(reader, REPORT, "success/failure report message", HANDSHAKE_TIMEOUT)
        status = (await eventloop.wait_for(reader.readexactly(1), HANDSHAKE_TIMEOUT))[0]
    except (MigrationError, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as err:
        # Past "go": it may run there. Neither resume nor destroy it here.
        controls.send(save_pb2.SaveControl(commit=True, paused=True))
        await _finished(call)
        controls.close()
        raise HandshakeLost(f"the receiver said nothing after go ({err or 'no answer'}): "
                            f"{ref.name or ref.domid} is left paused here and may run on the "
                            f"target; check both ends and unpause at most one") from None
    started = time.monotonic()
    if status:
        say(f"migration sender: Target reports startup failure (status code {status}).")
        try:
            await read_fixed(reader, GO, "permission for sender to resume", HANDSHAKE_TIMEOUT)
        except MigrationError as err:
            say(f"migration sender: {err}; resuming anyway "
                f"(the target destroys its copy before it grants it)")
        say("migration sender: Trying to resume at our end.")
        controls.close()            # no commit: the source resumes the domain
        await _finished(call)
        raise MigrationError("the target could not start the domain; it runs here again")
    controls.send(save_pb2.SaveControl(commit=True))
    finished = await _finished(call)
    controls.close()
    if not finished:
        say("migration sender: the source did not confirm it destroyed its copy")
    return Migrated(done.domid, 0, done.pages, size, done.suspended_s,
                    done.suspended_s + started - at, tuple(done.round_pages), started)


async def _finished(call) -> bool:
    """Whether the source's save ends with ``finished`` (its copy destroyed,
    or resumed as asked)."""
    try:
        async for chunk in call:
            if chunk.finished:
                return True
    except grpc.aio.AioRpcError:
        pass
    return False
