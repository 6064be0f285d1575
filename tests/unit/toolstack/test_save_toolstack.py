"""Suspend, save and restore in an in-process hypervisor (domains without a
process, acting for themselves over gRPC): SCHEDOP_shutdown(suspend) and
its answer, the toolstack's image of a suspended domain and a restore from
it (frames, xenstore nodes with their permissions under the new id, the
vif's MAC), and what is refused."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from xenlab.hypervisor.caller import DOM0
from xenlab.hypervisor.domains import RunState
from xenlab.hypervisor.xenstored_ring import STORE_GFN
from xenlab.proto import domains_pb2, save_pb2
from xenlab.testing import check_invariants
from xenlab.xen import save_stream
from xenlab.xen.errors import DomainError

MAC = "00:16:3e:00:00:07"


async def suspended(lab, name="web"):
    """A domain that made SCHEDOP_shutdown(suspend) itself, and its pending call."""
    domid, guest = await lab.create_domain(name, vif=[domains_pb2.VifSpec(mac=MAC)])
    frame = lab.hv.memory.frame(domid, 1)
    frame[:8] = b"RECORD!!"
    frame.release()
    call = asyncio.ensure_future(guest.save.SchedSuspend(save_pb2.SchedSuspendRequest(record_gfn=1)))
    dom = lab.hv.domains.get(domid)
    for _ in range(200):
        if lab.hv.is_suspended(dom):
            break
        await asyncio.sleep(0.01)
    return dom, call, guest


async def test_suspend_stops_the_domain_and_a_resume_answers_1(hypervisor):
    dom, call, guest = await suspended(hypervisor)
    assert (dom.state, dom.shutdown_reason, dom.suspend_gfn) == (RunState.SHUTDOWN, "suspend", 1)
    assert dom.state_letters() == "---s--"
    assert not call.done()
    hypervisor.toolstack.saver._resume(dom, paused=False)
    assert (await call).cancelled == 1
    assert dom.state is RunState.RUNNING and dom.shutdown_reason == ""


async def test_a_suspend_resumed_before_its_handler_runs_is_not_acted_on(hypervisor):
    """A save abandoned at once (a migration whose image failed just after
    the suspend) resumes the domain before the monitor's handler for the
    suspend has run. The handler then finds it running, with no shutdown
    reason: it must leave it be (it used to take the empty reason for an
    unknown one and destroy it)."""
    dom, call, guest = await suspended(hypervisor)
    hypervisor.toolstack.saver._resume(dom, paused=False)
    assert (await call).cancelled == 1
    await hypervisor.toolstack.apply_policy(dom)            # the late handler
    assert hypervisor.hv.domains.find(dom.domid) is dom and dom.state is RunState.RUNNING


async def test_destroying_a_suspended_domain_ends_its_call(hypervisor):
    dom, call, guest = await suspended(hypervisor)
    await hypervisor.toolstack.destroy_domain(dom.domid)
    await asyncio.wait_for(asyncio.gather(call, return_exceptions=True), 5)
    assert dom.domid not in hypervisor.hv.domains
    check_invariants(hypervisor.hv)


async def test_suspend_refusals(hypervisor):
    domid, guest = await hypervisor.create_domain("web")
    with pytest.raises(grpc.aio.AioRpcError, match="not a populated frame"):
        await guest.save.SchedSuspend(save_pb2.SchedSuspendRequest(record_gfn=1 << 30))
    with pytest.raises(grpc.aio.AioRpcError, match="Domain-0 cannot suspend"):
        await hypervisor.dom0.save.SchedSuspend(save_pb2.SchedSuspendRequest(record_gfn=1))
    # A save needs a guest kernel to ask: launcher none has none.
    with pytest.raises(DomainError, match="no guest kernel to suspend"):
        await hypervisor.toolstack.saver.suspend(domid)
    with pytest.raises(DomainError, match="not suspended"):
        hypervisor.hv.resume(hypervisor.hv.domains.get(domid))


async def test_an_image_restores_frames_nodes_and_mac_under_a_new_id(hypervisor):
    lab = hypervisor
    dom, call, guest = await suspended(lab)
    old = dom.domid
    xs = lab.hv.xenstore
    # A node the admin wrote (kept, its permissions following the domain)
    # and one the guest owns (left for the resumed kernel to write again).
    xs.write(DOM0, f"/local/domain/{old}/vm-note", b"keep me")
    xs.set_perms(DOM0, f"/local/domain/{old}/vm-note", [(0, "n"), (old, "r")])
    xs.write(DOM0, f"/local/domain/{old}/data/agent", b"stale")
    xs.set_perms(DOM0, f"/local/domain/{old}/data/agent", [(old, "n")])
    saver = lab.toolstack.saver
    image = b"".join(saver.image(dom))
    pages = {gfn: bytes(lab.hv.memory.frame(old, gfn)) for gfn in lab.hv.memory.populated(old)}
    await lab.toolstack.destroy_domain(old)
    await asyncio.gather(call, return_exceptions=True)

    async def chunks():
        for i in range(0, len(image), 65536):
            yield image[i:i + 65536]

    new, count = await saver.restore_stream(chunks())
    assert new.domid != old and new.name == "web" and count == len(pages)
    assert lab.hv.memory.frame(new.domid, 1)[:8] == b"RECORD!!"
    for gfn, data in pages.items():
        if gfn != STORE_GFN:                                # the store page, set up anew
            assert bytes(lab.hv.memory.frame(new.domid, gfn)) == data, gfn
    note = f"/local/domain/{new.domid}/vm-note"
    assert xs.read(DOM0, note) == b"keep me"
    assert list(xs.get_perms(DOM0, note)) == [(0, "n"), (new.domid, "r")]
    assert not xs.exists(f"/local/domain/{new.domid}/data/agent")
    (vif,) = lab.toolstack.network_list(new.domid)
    assert vif["mac"] == MAC
    check_invariants(lab.hv)


async def test_a_corrupt_image_creates_nothing(hypervisor):
    lab = hypervisor
    dom, call, guest = await suspended(lab)
    image = bytearray(b"".join(lab.toolstack.saver.image(dom)))
    await lab.toolstack.destroy_domain(dom.domid)
    await asyncio.gather(call, return_exceptions=True)
    image[len(image) // 2] ^= 1
    before = (len(lab.hv.domains), len(lab.hv.xenstore.nodes()), lab.hv.memory.free_pages)

    async def chunks():
        yield bytes(image)

    with pytest.raises(save_stream.StreamError, match="bad checksum"):
        await lab.toolstack.saver.restore_stream(chunks())
    assert (len(lab.hv.domains), len(lab.hv.xenstore.nodes()), lab.hv.memory.free_pages) == before


async def test_restored_with_e_no_on_action_is_applied(hypervisor):
    lab = hypervisor
    dom, call, _ = await suspended(lab)
    image = b"".join(lab.toolstack.saver.image(dom))
    await lab.toolstack.destroy_domain(dom.domid)
    await asyncio.gather(call, return_exceptions=True)

    async def chunks():
        yield image

    new, _ = await lab.toolstack.saver.restore_stream(chunks(), monitored=False)
    # on_poweroff is destroy; unmonitored, the domain stays as it ended.
    await lab.toolstack.shutdown_domain(new.domid, "poweroff", wait=True, timeout=10)
    assert lab.hv.domains.find(new.domid) is new and new.state is RunState.SHUTDOWN


async def test_after_a_checkpoint_its_next_shutdown_gets_its_on_action(hypervisor):
    """xl save -c resumes the domain in place: the monitor that saw it shut
    down with reason suspend must act on its next shutdown."""
    lab = hypervisor
    dom, call, _ = await suspended(lab)
    for _ in range(100):                        # the monitor has seen the suspend
        if dom.domid in lab.toolstack.monitor._handling:
            break
        await asyncio.sleep(0.01)
    await lab.toolstack.saver.finish(dom, checkpoint=True, paused=False)
    assert (await call).cancelled == 1
    await lab.toolstack.shutdown_domain(dom.domid, "poweroff", wait=True, timeout=10)
    assert lab.hv.domains.find(dom.domid) is None            # on_poweroff=destroy


async def test_a_guest_that_does_not_suspend_is_left_running(hypervisor, monkeypatch):
    lab = hypervisor
    domid, _ = await lab.create_domain("web")
    monkeypatch.setattr(lab.hv, "process", lambda d: object())    # a kernel that never answers
    with pytest.raises(DomainError, match="did not suspend within 0.2s"):
        await lab.toolstack.saver.suspend(domid, timeout=0.2)
    dom = lab.hv.domains.get(domid)
    assert dom.state is RunState.RUNNING
    assert lab.hv.xenstore.read(DOM0, f"/local/domain/{domid}/control/shutdown") == b""


async def test_the_image_records_each_vifs_state(hypervisor):
    lab = hypervisor
    dom, call, _ = await suspended(lab)
    image = save_stream.decode(b"".join(lab.toolstack.saver.image(dom)))
    (vif,) = image.devices
    assert vif["mac"] == MAC and vif["devid"] == 0
    assert vif["state"] == 1 and vif["backend_state"] == 1      # no kernels here: Initialising
    lab.toolstack.saver._resume(dom, False)
    await call


async def test_an_image_bigger_than_the_host_is_refused_as_it_comes(hypervisor):
    lab = hypervisor
    enc = save_stream.StreamEncoder()
    batch = save_stream.page_data([(pfn, bytes(4096)) for pfn in range(save_stream.MAX_BATCH)])
    total = lab.hv.memory.total_pages

    async def chunks():
        yield enc.headers()
        for _ in range(total // save_stream.MAX_BATCH + 1):
            yield enc.emit(batch)

    with pytest.raises(save_stream.StreamError, match="more pages than the host"):
        await lab.toolstack.saver.restore_stream(chunks())


async def test_a_live_image_carries_each_page_as_it_was_last_written(hypervisor):
    """Pre-copy: every page goes over while the domain runs; a page written
    after it went (here: during the first round, and after the last) goes
    again, in the last round; decoded, the image holds each page as it was
    last, and the last round holds only what changed."""
    lab = hypervisor
    domid, _ = await lab.create_domain("web", vif=[domains_pb2.VifSpec(mac=MAC)])
    dom = lab.hv.domains.get(domid)
    saver = lab.toolstack.saver
    populated = sorted(lab.hv.memory.populated(domid))
    early, late = populated[0], populated[-1]

    def write(gfn: int, data: bytes) -> None:
        frame = lab.hv.memory.frame(domid, gfn)
        frame[:len(data)] = data
        frame.release()

    enc, sent = save_stream.StreamEncoder(), {}
    out = [enc.headers()]
    async for piece in saver.precopy(dom, enc, sent):
        if len(out) == 1:
            write(early, b"WRITTEN DURING ROUND 1")    # its batch went over already
        out.append(piece)
    write(late, b"WRITTEN AFTER PRE-COPY")
    out.extend(saver.image(dom, enc, sent))
    rounds = saver.rounds.pop(domid)
    assert rounds[0] == len(populated) and rounds[-1] == 2, rounds
    image = save_stream.decode(b"".join(out))
    assert set(image.pages) == set(populated)
    assert image.pages[early].startswith(b"WRITTEN DURING ROUND 1")
    assert image.pages[late].startswith(b"WRITTEN AFTER PRE-COPY")


async def test_a_page_given_back_during_pre_copy_goes_as_xtab_and_the_target_lacks_it(hypervisor):
    """The balloon gives a page back after pre-copy sent it: the final image
    says so (an XTAB entry, as libxc's), so that the restore does not
    populate it again."""
    lab = hypervisor
    domid, _ = await lab.create_domain("web")
    dom = lab.hv.domains.get(domid)
    saver = lab.toolstack.saver
    enc, sent = save_stream.StreamEncoder(), {}
    out = [enc.headers()]
    async for piece in saver.precopy(dom, enc, sent):
        out.append(piece)
    gone = max(lab.hv.memory.populated(domid))
    assert gone in sent
    lab.hv.memory.decrease_reservation(domid, [gone])
    out.extend(saver.image(dom, enc, sent))
    saver.rounds.pop(domid, None)
    data = b"".join(out)
    image = save_stream.decode(data)
    assert gone not in image.pages
    assert set(image.pages) == set(lab.hv.memory.populated(domid))
    decoder = save_stream.StreamDecoder()
    entries = [(pfn, page is None) for rec in decoder.feed(data) if rec.rtype == save_stream.REC_PAGE_DATA
               for pfn, page in save_stream.parse_page_data(rec.body)]
    assert entries[-1] == (gone, True)          # the last entry for it: not present
