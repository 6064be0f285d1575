"""A xenstore client for the tests, written from Xen's
xen/include/public/io/xs_wire.h and docs/misc/xenstore.txt alone.

It shares no code with xenlab's xenstored (xenlab.xen.xs_wire,
xenlab.hypervisor.xenstored), so that each checks the other: the header is
packed here, the message numbers and error names are copied from the
header, and the payloads are built as xenstore.txt describes them.
"""
from __future__ import annotations

import asyncio
import struct

HDR = struct.Struct("<IIII")        # struct xsd_sockmsg: type, req_id, tx_id, len
PAYLOAD_MAX = 4096                  # XENSTORE_PAYLOAD_MAX

# enum xsd_sockmsg_type
CONTROL, DIRECTORY, READ, GET_PERMS, WATCH, UNWATCH = 0, 1, 2, 3, 4, 5
TRANSACTION_START, TRANSACTION_END, INTRODUCE, RELEASE, GET_DOMAIN_PATH = 6, 7, 8, 9, 10
WRITE, MKDIR, RM, SET_PERMS, WATCH_EVENT, ERROR = 11, 12, 13, 14, 15, 16
IS_DOMAIN_INTRODUCED, RESUME, SET_TARGET = 17, 18, 19
RESET_WATCHES, DIRECTORY_PART = 21, 22
INVALID = 0xFFFF

# xsd_errors[], in the header's order
ERROR_NAMES = ("EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
               "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM")

WAIT = 10.0


class XsError(Exception):
    """An XS_ERROR reply; ``name`` is the errno name it carried."""

    def __init__(self, name: str, request: int):
        super().__init__(f"{name} (request type {request})")
        self.name = name


class Closed(Exception):
    """xenstored closed the connection."""


def z(*parts: str | bytes) -> bytes:
    """Strings, each followed by a NUL."""
    return b"".join((p.encode() if isinstance(p, str) else p) + b"\0" for p in parts)


class XsClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.events: list[tuple[str, str]] = []
        self.next_req = 1
        self.log: list[tuple[int, int, int, bytes]] = []      # every message received

    @classmethod
    async def connect(cls, path) -> "XsClient":
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, BrokenPipeError):
            pass

    # -- raw messages -------------------------------------------------------------
    def frame(self, type_: int, payload: bytes, tx: int = 0, req_id: int | None = None,
              length: int | None = None) -> tuple[int, bytes]:
        if req_id is None:
            req_id, self.next_req = self.next_req, self.next_req + 1
        n = len(payload) if length is None else length
        return req_id, HDR.pack(type_, req_id, tx, n) + payload

    async def send_raw(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            raise Closed() from None

    async def recv(self, timeout: float = WAIT) -> tuple[int, int, int, bytes]:
        """The next message from xenstored: (type, req_id, tx_id, payload)."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(HDR.size), timeout)
            type_, req_id, tx, n = HDR.unpack(head)
            assert n <= PAYLOAD_MAX, f"xenstored sent a {n}-byte payload"
            payload = await asyncio.wait_for(self.reader.readexactly(n), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise Closed() from None
        self.log.append((type_, req_id, tx, payload))
        return type_, req_id, tx, payload

    async def reply(self, req_id: int, timeout: float = WAIT) -> tuple[int, int, bytes]:
        """The reply to ``req_id`` (type, tx_id, payload); watch events that
        come first are kept in ``events``; any other reply is an error."""
        while True:
            type_, rid, tx, payload = await self.recv(timeout)
            if type_ == WATCH_EVENT:
                assert rid == 0 and tx == 0, "a watch event carries req_id 0 and tx_id 0"
                path, token, rest = payload.split(b"\0", 2)
                assert rest == b"", f"a watch event is two strings, not {payload!r}"
                self.events.append((path.decode("latin-1"), token.decode("latin-1")))
                continue
            assert rid == req_id, f"a reply to request {rid} came while waiting for {req_id}"
            return type_, tx, payload

    async def request(self, type_: int, payload: bytes = b"", tx: int = 0) -> bytes:
        req_id, data = self.frame(type_, payload, tx)
        await self.send_raw(data)
        rtype, rtx, answer = await self.reply(req_id)
        assert rtx == tx, "a reply carries its request's tx_id"
        if rtype == ERROR:
            assert answer.endswith(b"\0") and answer[:-1].decode() in ERROR_NAMES, answer
            raise XsError(answer[:-1].decode(), type_)
        assert rtype == type_, f"a {type_} request answered with type {rtype}"
        return answer

    async def next_event(self, timeout: float = WAIT) -> tuple[str, str]:
        while not self.events:
            type_, rid, tx, payload = await self.recv(timeout)
            assert type_ == WATCH_EVENT, f"unexpected message type {type_}"
            path, token, _ = payload.split(b"\0", 2)
            self.events.append((path.decode("latin-1"), token.decode("latin-1")))
        return self.events.pop(0)

    # -- requests (docs/misc/xenstore.txt) ------------------------------------------
    async def read(self, path: str, tx: int = 0) -> bytes:
        return await self.request(READ, z(path), tx)

    async def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        value = value.encode() if isinstance(value, str) else value
        assert await self.request(WRITE, z(path) + value, tx) == b"OK\0"

    async def mkdir(self, path: str, tx: int = 0) -> None:
        assert await self.request(MKDIR, z(path), tx) == b"OK\0"

    async def rm(self, path: str, tx: int = 0) -> None:
        assert await self.request(RM, z(path), tx) == b"OK\0"

    async def directory(self, path: str, tx: int = 0) -> list[str]:
        answer = await self.request(DIRECTORY, z(path), tx)
        return [s.decode() for s in answer.split(b"\0")[:-1]]

    async def directory_part(self, path: str, offset: int, tx: int = 0) -> tuple[str, bytes]:
        """(generation, the bytes of the child list after it)."""
        answer = await self.request(DIRECTORY_PART, z(path, str(offset)), tx)
        gen, rest = answer.split(b"\0", 1)
        return gen.decode(), rest

    async def directory_all(self, path: str) -> list[str]:
        """The whole child list, DIRECTORY_PART by DIRECTORY_PART, as
        libxenstore does: restart when the generation changes; an empty
        string marks the end."""
        children, first_gen = b"", None
        while True:
            gen, part = await self.directory_part(path, len(children))
            if first_gen is not None and gen != first_gen:
                children, first_gen = b"", None
                continue
            first_gen = gen
            children += part
            if len(children) <= 1 or children.endswith(b"\0\0"):
                break
        names = children[:-1].split(b"\0")[:-1] if len(children) > 1 else []
        return [n.decode() for n in names]

    async def get_perms(self, path: str, tx: int = 0) -> list[str]:
        return [s.decode() for s in (await self.request(GET_PERMS, z(path), tx)).split(b"\0")[:-1]]

    async def set_perms(self, path: str, *perms: str, tx: int = 0) -> None:
        assert await self.request(SET_PERMS, z(path, *perms), tx) == b"OK\0"

    async def watch(self, path: str, token: str | bytes) -> None:
        assert await self.request(WATCH, z(path, token)) == b"OK\0"

    async def unwatch(self, path: str, token: str | bytes) -> None:
        assert await self.request(UNWATCH, z(path, token)) == b"OK\0"

    async def transaction_start(self) -> int:
        answer = await self.request(TRANSACTION_START, z(""))
        assert answer.endswith(b"\0") and answer[:-1].isdigit(), answer
        return int(answer[:-1])

    async def transaction_end(self, tx: int, commit: bool = True) -> None:
        assert await self.request(TRANSACTION_END, z("T" if commit else "F"), tx) == b"OK\0"

    async def get_domain_path(self, domid: int) -> str:
        return (await self.request(GET_DOMAIN_PATH, z(str(domid))))[:-1].decode()

    async def is_domain_introduced(self, domid: int) -> bool:
        answer = await self.request(IS_DOMAIN_INTRODUCED, z(str(domid)))
        assert answer in (b"T\0", b"F\0"), answer
        return answer == b"T\0"

    async def introduce(self, domid: int, gfn: int, port: int) -> None:
        assert await self.request(INTRODUCE, z(str(domid), str(gfn), str(port))) == b"OK\0"

    async def release(self, domid: int) -> None:
        assert await self.request(RELEASE, z(str(domid))) == b"OK\0"

    async def resume(self, domid: int) -> None:
        assert await self.request(RESUME, z(str(domid))) == b"OK\0"

    async def set_target(self, domid: int, target: int) -> None:
        assert await self.request(SET_TARGET, z(str(domid), str(target))) == b"OK\0"

    async def reset_watches(self) -> None:
        assert await self.request(RESET_WATCHES, z("")) == b"OK\0"

    async def control(self, *args: str) -> bytes:
        return await self.request(CONTROL, z(*args))


# --------------------------------------------------------------------------
# The store ring, from xs_wire.h's struct xenstore_domain_interface: the
# domain's end, for tests that act as a guest.
# --------------------------------------------------------------------------
RING_SIZE = 1024                                    # XENSTORE_RING_SIZE
REQ, RSP = 0, 1024                                  # char req[], rsp[]
REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD = 2048, 2052, 2056, 2060
SERVER_FEATURES, CONNECTION, RING_ERROR = 2064, 2068, 2072
_I = struct.Struct("<I")


def idx(page, offset: int) -> int:
    return _I.unpack_from(page, offset)[0]


def set_idx(page, offset: int, value: int) -> None:
    _I.pack_into(page, offset, value & 0xFFFFFFFF)


class RingStream:
    """A guest's end of its store ring as an asyncio reader and writer, so
    that XsClient runs over it: ``page`` is the store page (writable bytes),
    ``kick`` notifies xenstored (the store port's EVTCHNOP_send)."""

    POLL = 0.001

    def __init__(self, page, kick):
        self.page = page
        self.kick = kick
        self.closed = False

    async def _kick(self) -> None:
        result = self.kick()
        if asyncio.iscoroutine(result):
            await result

    # -- the writer side: requests -------------------------------------------------
    def write(self, data: bytes) -> None:
        self._pending = getattr(self, "_pending", b"") + data

    async def drain(self) -> None:
        data, self._pending = getattr(self, "_pending", b""), b""
        while data:
            if idx(self.page, RING_ERROR):
                raise ConnectionResetError(f"xenstored set error {idx(self.page, RING_ERROR)}")
            cons, prod = idx(self.page, REQ_CONS), idx(self.page, REQ_PROD)
            room = RING_SIZE - ((prod - cons) & 0xFFFFFFFF)
            if room <= 0:
                await self._kick()
                await asyncio.sleep(self.POLL)
                continue
            chunk = data[:room]
            for i, byte in enumerate(chunk):
                self.page[REQ + ((prod + i) & (RING_SIZE - 1))] = byte
            set_idx(self.page, REQ_PROD, prod + len(chunk))
            data = data[len(chunk):]
            await self._kick()

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None

    # -- the reader side: replies and events -----------------------------------------
    async def readexactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            if idx(self.page, RING_ERROR):
                raise ConnectionResetError(f"xenstored set error {idx(self.page, RING_ERROR)}")
            cons, prod = idx(self.page, RSP_CONS), idx(self.page, RSP_PROD)
            avail = (prod - cons) & 0xFFFFFFFF
            assert avail <= RING_SIZE, f"xenstored's rsp_prod {prod} is past the ring ({cons})"
            take = min(avail, n - len(out))
            if not take:
                await asyncio.sleep(self.POLL)
                continue
            out += bytes(self.page[RSP + ((cons + i) & (RING_SIZE - 1))] for i in range(take))
            set_idx(self.page, RSP_CONS, cons + take)
            await self._kick()          # room on rsp: xenstored may go on
        return bytes(out)


def ring_client(page, kick) -> XsClient:
    stream = RingStream(page, kick)
    return XsClient(stream, stream)
