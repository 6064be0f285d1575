"""xl save and xl restore: libxl_domain_suspend and
libxl_domain_create_restore, over the stream of xen/save_stream.py.

Save: the toolstack writes control/shutdown=suspend; the guest clears the
node, writes its suspend record into its own frames and makes
SCHEDOP_shutdown(suspend), which stops its vCPUs (the hypervisor's
``sched_suspend``). The toolstack then reads the domain's memory (every
populated frame: guest memory is all it reads of the guest), its xenstore
nodes, its config and its vifs into an image; once the caller says the
image is safe, it destroys the domain, or resumes it in place (``-c``,
``-p``: the guest's hypercall returns 1, a cancelled suspend). A caller
that goes away first, or any failure, resumes it: a save that fails never
loses the domain.

Restore: the whole image is decoded and checked first, so that a corrupt
or truncated one creates nothing; then the domain is built as ``create``
builds it (same name, uuid, vifs with the same MACs), its frames are
filled from the image before its process starts, its saved xenstore nodes
are written back under its new id, and its kernel is started resumed from
the suspend record's gfn (start_info's resume_gfn): it reconnects its
vifs through the xenbus handshake.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import AsyncIterator, Iterator

from google.protobuf import json_format

from xenlab.hypervisor.caller import DOM0
from xenlab.hypervisor.domains import Domain, RunState
from xenlab.hypervisor.xenstored_ring import STORE_GFN
from xenlab.proto import domains_pb2
from xenlab.xen import save_stream as stream
from xenlab.xen.save_stream import XsNode
from xenlab.xen import abi
from xenlab.xen.errors import DomainError
from xenlab.xen.xenstore_paths import agent_record_path, record_root

log = logging.getLogger(__name__)

SUSPEND_TIMEOUT = 30.0      # libxl waits as long for a PV guest's suspend
IMAGE_CHUNK = 1 << 20       # bytes per message of an image on its way out
# A live save's pre-copy (libxc's send_memory_live): rounds while the
# domain runs, until fewer pages than this changed in the last one, or this
# many rounds (Xen's defaults); then the suspend, and the last round.
PRECOPY_DIRTY_THRESHOLD = 50
PRECOPY_MAX_ROUNDS = 5

# Nodes a restore never writes back from the image: the toolstack writes
# them anew for the new domain (its devices' directories, which the
# handshake fills in again; its store ring; where its agent listens).
REBUILT = ("local/device", "local/store", "local/console", "libxl/device", "libxl/agent")


# DEVICES keys that describe a vif at the save, not how to build it.
DEVICE_STATE_KEYS = ("devid", "state", "backend_state")


def _devid(entry: dict) -> int:
    devid = entry.get("devid")
    return devid if isinstance(devid, int) else 0


def _rebuilt(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in REBUILT)


# -- domid-relative xenstore ----------------------------------------------------------
def _homes(domid: int) -> tuple[tuple[str, str], ...]:
    return ((f"/local/domain/{domid}", "local"), (record_root(domid), "libxl"))


def relative_nodes(nodes, domid: int) -> list[XsNode]:
    """The domain's /local/domain/D subtree and its /libxl/D record, as
    XENSTORE_DATA holds them: paths from its homes, its own id as DOMID_SELF."""
    out = []
    for path in sorted(nodes):
        for home, short in _homes(domid):
            if path == home or path.startswith(home + "/"):
                node = nodes[path]
                perms = tuple((stream.SELF if d == domid else d, m) for d, m in node.perms)
                out.append(XsNode(short + path[len(home):], bytes(node.value), perms))
                break
    return out


def absolute_node(node: XsNode, domid: int) -> tuple[str, list[tuple[int, str]]]:
    short, _, rest = node.path.partition("/")
    home = dict((s, h) for h, s in _homes(domid)).get(short)
    if home is None or "//" in node.path or node.path.endswith("/"):
        raise stream.StreamError(f"XENSTORE_DATA: path {node.path!r} is outside the domain's nodes")
    perms = [(domid if d == stream.SELF else d, m) for d, m in node.perms]
    if not perms or any(m not in ("n", "r", "w", "b") for _, m in perms):
        raise stream.StreamError(f"XENSTORE_DATA: node {node.path!r} has bad permissions")
    return home + ("/" + rest if rest else ""), perms


# -- the config -----------------------------------------------------------------------
def spec_to_json(spec) -> dict:
    return json_format.MessageToDict(spec, preserving_proto_field_name=True)


def spec_from_json(data: dict) -> domains_pb2.DomainSpec:
    try:
        return json_format.ParseDict(data, domains_pb2.DomainSpec())
    except json_format.ParseError as err:
        raise stream.StreamError(f"DOMAIN_CONFIG record: {err}") from None


class SaveRestore:
    """The toolstack's save and restore, over its hypervisor."""

    def __init__(self, toolstack):
        self.ts = toolstack
        self.hv = toolstack.hv
        self.xs = toolstack.xs
        self._saving: set[int] = set()      # domids with a save under way
        self.rounds: dict[int, list[int]] = {}     # pages sent in each round, per save
        self.suspended_at: dict[int, float] = {}   # when each one's guest had suspended

    # -- save --------------------------------------------------------------------------
    async def suspend(self, domid: int, timeout: float = SUSPEND_TIMEOUT) -> Domain:
        """Ask the guest to suspend and wait until it has (libxl's
        domain_suspend_common_guest_suspended)."""
        dom = self._suspendable(domid)
        self.xs.write(DOM0, f"/local/domain/{domid}/control/shutdown", b"suspend")
        try:
            await self.hv.wait_gone_or_stopped(dom, timeout)
        except DomainError:
            self._withdraw_request(domid)
            raise DomainError(errno.ETIMEDOUT, f"d{domid} did not suspend within "
                                               f"{timeout:g}s (it is left running)") from None
        if not self.hv.is_suspended(dom):
            raise DomainError(errno.ESRCH, f"d{domid} shut down ({dom.shutdown_reason or 'gone'}) "
                                           f"instead of suspending")
        return dom

    def _suspendable(self, domid: int) -> Domain:
        """A domain whose guest can be asked to suspend, or why not."""
        dom = self.hv.running_domu(domid, "save")
        if dom.state is RunState.PAUSED:
            raise DomainError(errno.EINVAL, f"d{domid} is paused: its guest cannot act on a "
                                            f"suspend request (unpause it first)")
        if dom.spec is None or self.hv.process(domid) is None:
            raise DomainError(errno.EOPNOTSUPP, f"d{domid} has no guest kernel to suspend "
                                                f"(launcher none)")
        return dom

    def _withdraw_request(self, domid: int) -> None:
        try:
            self.xs.write(DOM0, f"/local/domain/{domid}/control/shutdown", b"")
        except Exception:           # the domain may be gone already
            pass

    def image(self, dom: Domain, enc: stream.StreamEncoder | None = None,
              sent: dict[int, bytes] | None = None) -> Iterator[bytes]:
        """The suspended domain's image, record by record. After pre-copy
        rounds (``enc`` has written the headers, ``sent`` holds what each
        page was when sent): only the pages that changed since."""
        if enc is None:
            enc = stream.StreamEncoder()
            yield enc.headers()
        yield enc.emit(stream.json_record(stream.REC_DOMAIN_CONFIG, spec_to_json(dom.spec)))
        yield enc.emit(stream.json_record(stream.REC_DEVICES, self.devices(dom)))
        yield enc.emit(stream.xenstore_data(relative_nodes(self.xs.nodes(), dom.domid)))
        yield enc.emit(stream.json_record(stream.REC_VCPU_CONTEXT, {
            "vcpus": dom.vcpus, "online_vcpus": dom.online_vcpus,
            "suspend_record_gfn": dom.suspend_gfn}))
        gone: list[int] = []
        if sent is None:
            gfns = sorted(self.hv.memory.populated(dom.domid))
        else:
            # Pages sent in a round and given back since (its balloon
            # moved): XTAB entries, so that the target gives them back too.
            gone = sorted(set(sent) - set(self.hv.memory.populated(dom.domid)))
            gfns = self.dirty(dom, sent)
        self.rounds.setdefault(dom.domid, []).append(len(gfns))
        yield from self._pages(dom, enc, gfns, None)
        for first in range(0, len(gone), stream.MAX_BATCH):
            yield enc.emit(stream.page_data([(gfn, None) for gfn in gone[first:first + stream.MAX_BATCH]]))
        if gone:
            log.info("d%d: %d page(s) given back during pre-copy, sent as XTAB", dom.domid, len(gone))
        yield enc.end()

    def _pages(self, dom: Domain, enc: stream.StreamEncoder, gfns: list[int],
               sent: dict[int, bytes] | None) -> Iterator[bytes]:
        """PAGE_DATA records of ``gfns``; while the domain runs (pre-copy)
        a page it gave back since the list was made is left out here (the
        final image sends it as XTAB if it went in an earlier round)."""
        memory, domid = self.hv.memory, dom.domid
        for first in range(0, len(gfns), stream.MAX_BATCH):
            batch = [(gfn, bytes(memory.frame(domid, gfn)))
                     for gfn in gfns[first:first + stream.MAX_BATCH]
                     if memory.is_populated(domid, gfn)]
            if not batch:
                continue
            if sent is not None:
                sent.update(batch)
            yield enc.emit(stream.page_data(batch))

    def dirty(self, dom: Domain, sent: dict[int, bytes]) -> list[int]:
        """The pages whose contents differ from what was sent (or that were
        not sent): every write to the domain's memory since that changed a
        byte, the guest's own and the backends' grant copies alike, found by
        comparing each page with its copy (the dirty log of this emulation:
        no write traps, a compare per page per round)."""
        memory, domid = self.hv.memory, dom.domid
        return [gfn for gfn in sorted(memory.populated(domid))
                if sent.get(gfn) != memory.frame(domid, gfn)]

    async def precopy(self, dom: Domain, enc: stream.StreamEncoder,
                      sent: dict[int, bytes]) -> AsyncIterator[bytes]:
        """Pre-copy rounds while the domain runs: all its pages, then those
        changed since, until few changed or PRECOPY_MAX_ROUNDS rounds."""
        rounds = self.rounds.setdefault(dom.domid, [])
        gfns = sorted(self.hv.memory.populated(dom.domid))
        while True:
            rounds.append(len(gfns))
            for piece in self._pages(dom, enc, gfns, sent):
                yield piece
                await asyncio.sleep(0)      # the domain (and everything else) runs meanwhile
            gfns = self.dirty(dom, sent)
            if len(gfns) < PRECOPY_DIRTY_THRESHOLD or len(rounds) >= PRECOPY_MAX_ROUNDS:
                return

    def devices(self, dom: Domain) -> list[dict]:
        """Each vif as the toolstack set it up, with the MAC it has (a random
        default MAC must survive) and the settings its spec gave it."""
        out = []
        for vif in self.ts.network_list(dom.domid):
            devid = vif["devid"]
            spec = dom.spec.vif[devid] if devid < len(dom.spec.vif) else domains_pb2.VifSpec()
            entry = json_format.MessageToDict(spec, preserving_proto_field_name=True)
            entry.update(devid=devid, mac=vif["mac"], bridge=vif["bridge"],
                         state=vif["state"], backend_state=vif["backend_state"])
            backend = self.hv.domains.find(vif["backend_id"])
            entry["backend"] = "" if vif["backend_id"] == 0 or backend is None else backend.name
            out.append(entry)
        return out

    async def save(self, domid: int, live: bool = False) -> AsyncIterator[tuple[Domain, bytes]]:
        """Suspend the domain and yield its image in chunks; the caller
        then calls ``finish`` or ``abort``. ``live``: pre-copy rounds
        first, while it runs (``rounds[domid]``: the pages of each round)."""
        if domid in self._saving:
            raise DomainError(errno.EBUSY, f"d{domid} is being saved already")
        self._saving.add(domid)
        self.rounds[domid] = []
        buf = bytearray()
        enc = sent = None
        dom = None
        try:
            if live:
                dom = self._suspendable(domid)      # before pre-copy, not after it
                enc, sent = stream.StreamEncoder(), {}
                buf += enc.headers()
                async for piece in self.precopy(dom, enc, sent):
                    buf += piece
                    while len(buf) >= IMAGE_CHUNK:
                        yield dom, bytes(buf[:IMAGE_CHUNK])
                        del buf[:IMAGE_CHUNK]
            dom = await self.suspend(domid)
        except BaseException:
            self._saving.discard(domid)
            self.rounds.pop(domid, None)
            raise
        self.suspended_at[domid] = time.monotonic()
        try:
            for piece in self.image(dom, enc, sent):
                buf += piece
                while len(buf) >= IMAGE_CHUNK:
                    yield dom, bytes(buf[:IMAGE_CHUNK])
                    del buf[:IMAGE_CHUNK]
            if buf:
                yield dom, bytes(buf)
        except BaseException:
            self.abort(dom)
            raise

    async def finish(self, dom: Domain, checkpoint: bool, paused: bool) -> None:
        """The image is safe: destroy the domain, as xl save does, or (-c,
        -p) resume it in place."""
        try:
            if checkpoint or paused:
                self._resume(dom, paused)
            else:
                await self.ts.destroy_domain(dom.domid)
        finally:
            self._saving.discard(dom.domid)
            self.suspended_at.pop(dom.domid, None)
            self.rounds.pop(dom.domid, None)

    def abort(self, dom: Domain) -> None:
        """The save failed: the domain runs on (libxl resumes a domain whose
        save failed)."""
        self._saving.discard(dom.domid)
        self.suspended_at.pop(dom.domid, None)
        self.rounds.pop(dom.domid, None)
        if self.hv.domains.find(dom.domid) is dom and self.hv.is_suspended(dom):
            log.warning("d%d (%s): save abandoned; resuming it", dom.domid, dom.name)
            self._resume(dom, False)

    def _resume(self, dom: Domain, paused: bool) -> None:
        self.ts.monitor.forget(dom)
        self.hv.resume(dom, paused)

    # -- restore -----------------------------------------------------------------------
    async def restore_stream(self, chunks: AsyncIterator[bytes], paused: bool = False,
                             monitored: bool = True) -> tuple[Domain, int]:
        """Read the whole image and check it, then restore it: a corrupt or
        truncated image is refused before anything is made. The domain and
        how many pages it has."""
        decoder, records, error = stream.StreamDecoder(), [], None
        pages, limit = 0, self.hv.memory.total_pages
        async for data in chunks:
            if error is None:
                try:
                    for rec in decoder.feed(data):
                        records.append(rec)
                        if rec.rtype == stream.REC_PAGE_DATA:
                            pages += int.from_bytes(rec.body[:4], "little")
                    if pages > limit:
                        # Held in memory until the END record checks: bounded.
                        raise stream.StreamError(f"the image holds more pages than the host's "
                                                 f"{limit}")
                except stream.StreamError as err:
                    # The rest is read and dropped: a sender cut off mid-stream
                    # would see a transport error, not this one.
                    error, records = err, []
        if error is not None:
            raise error
        image = stream.read_image(records, decoder)
        return await self.restore(image, paused, monitored), len(image.pages)

    async def restore(self, image: stream.SaveImage, paused: bool = False,
                      monitored: bool = True) -> Domain:
        """A domain from a decoded, checked image (stream.read_image)."""
        if not isinstance(image.config, dict) or not isinstance(image.vcpu, dict):
            raise stream.StreamError("DOMAIN_CONFIG and VCPU_CONTEXT records must be JSON objects")
        spec = spec_from_json(image.config)
        del spec.vif[:]
        if not isinstance(image.devices, list) or not all(isinstance(e, dict) for e in image.devices):
            raise stream.StreamError("DEVICES record: not a list of vifs")
        for entry in sorted(image.devices, key=_devid):
            # What each vif's xenbus state was at the save: a record of it;
            # the restored vif starts the handshake again.
            entry = {k: v for k, v in entry.items() if k not in DEVICE_STATE_KEYS}
            try:
                spec.vif.append(json_format.ParseDict(entry, domains_pb2.VifSpec()))
            except json_format.ParseError as err:
                raise stream.StreamError(f"DEVICES record: {err}") from None
        gfn = image.vcpu.get("suspend_record_gfn")
        if not isinstance(gfn, int) or gfn not in image.pages:
            raise stream.StreamError("VCPU_CONTEXT: the suspend record's gfn is not a saved page")
        maxmem = (spec.maxmem_mb or spec.memory_mb or 0) * (1 << 20) // abi.PAGE_SIZE
        if maxmem and (max(image.pages) >= maxmem or len(image.pages) > maxmem):
            raise stream.StreamError(f"PAGE_DATA: pfns beyond the domain's {maxmem} pages")
        for node in image.xenstore:
            absolute_node(node, 1)          # checked before anything is made
        steps = _RestoreSteps(self, image)
        dom, _ = await self.ts.create(spec, paused=paused, restore=steps)
        dom.monitored = monitored
        return dom


class _RestoreSteps:
    """What ``Toolstack.create`` does differently for a restore: the frames
    are the image's before the kernel starts, the saved nodes come back,
    and the kernel starts resumed."""

    def __init__(self, owner: SaveRestore, image: stream.SaveImage):
        self.owner = owner
        self.image = image
        self.resume_gfn = image.vcpu["suspend_record_gfn"]

    def memory(self, dom: Domain) -> None:
        """The populated frames become the image's: frames it lacks are
        populated, frames it does not have are given back, every frame is
        filled; the store and console pages are cleared afterwards by
        setup_store and setup_console."""
        memory, domid = self.owner.hv.memory, dom.domid
        wanted = set(self.image.pages)
        have = set(memory.populated(domid))
        extra = sorted(have - wanted)
        for i in range(0, len(extra), abi.MAX_EXTENTS):
            memory.decrease_reservation(domid, extra[i:i + abi.MAX_EXTENTS])
        missing = sorted(wanted - have)
        for i in range(0, len(missing), abi.MAX_EXTENTS):
            memory.increase_reservation(domid, gfns=missing[i:i + abi.MAX_EXTENTS])
        for gfn, page in self.image.pages.items():
            if gfn == STORE_GFN:
                continue
            view = memory.frame(domid, gfn)
            view[:] = page
            view.release()

    def xenstore(self, dom: Domain) -> None:
        """The saved nodes the new build did not write, under the new id.
        Nodes the guest owns (its device state, features, data/) are its
        running kernel's announcements: the resumed kernel makes them again,
        and a stale one (data/agent: "my agent is up") would mislead. As in
        Xen, where libxl rebuilds the tree and carries no guest-written node."""
        xs = self.owner.xs
        live = xs.nodes()
        for node in self.image.xenstore:
            if _rebuilt(node.path) or node.perms[0][0] == stream.SELF:
                continue
            path, perms = absolute_node(node, dom.domid)
            if path in live or path.startswith(agent_record_path(dom.domid) + "/"):
                continue
            xs.write(DOM0, path, node.value)
            xs.set_perms(DOM0, path, perms)

