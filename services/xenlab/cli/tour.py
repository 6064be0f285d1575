"""`xenlab tour`: a self-contained tour of the hypervisor alone (no network).

It starts a hypervisor with local domain processes, creates two domains from
xl.cfg text, shows them as `xl list` does, ballooning through `xl mem-set`,
an event channel and a grant copy between two domains' memories, then shuts
everything down and checks that nothing is left behind.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

import grpc

from xenlab import eventloop
from xenlab.cli.output import format_domain_list
from xenlab.client import HypervisorClient, to_domain_spec
from xenlab.hypervisor.config import HypervisorConfig
from xenlab.proto import common_pb2, domains_pb2, grants_pb2, memory_pb2
from xenlab.rundir import short_tempdir
from xenlab.xen import abi
from xenlab.toolstack.xlcfg import parse_xl_config
from xenlab.proto import xenstore_pb2
from xenlab.hypervisor.server import HypervisorServer
from xenlab.toolstack.toolstack import Toolstack
from xenlab.domain.evtchn import GuestEventChannels
from xenlab.domain.hypercall import Hypercalls
from xenlab.domain.memory import GuestMemory
from xenlab.xen.shared_info import SharedInfo

CONFIGS = {
    "alpha": 'name = "alpha"\nmemory = 64\nmaxmem = 96\nvcpus = 2\non_crash = "preserve"\n',
    "beta": 'name = "beta"\nmemory = 32\nvcpus = 1\n',
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rundir", type=Path, default=None,
                        help="keep the demo's rundir (logs, consoles) here instead of a temporary one")
    parser.add_argument("--notifies", type=int, default=1000,
                        help="event-channel round trips to time (default 1000)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the hypervisor's log")


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def xs_read(dom0: HypervisorClient, path: str) -> str | None:
    try:
        return (await dom0.xenstore.Read(xenstore_pb2.PathRequest(path=path))).value.decode()
    except grpc.aio.AioRpcError:
        return None


async def show_list(dom0: HypervisorClient) -> None:
    print(format_domain_list((await dom0.domains.List(common_pb2.Empty())).domains).rstrip("\n"))


async def demo(args) -> int:

    rundir = args.rundir or short_tempdir("xenlab-tour-")
    config = HypervisorConfig(address=f"unix:{rundir}/hv.sock", rundir=rundir,
                              total_memory_mb=2048, launcher="local")
    server = HypervisorServer(config, Toolstack)
    step("starting the hypervisor")
    await server.start()
    print(f"hypervisor on {server.address}, rundir {rundir}")
    dom0 = HypervisorClient.connect(server.address, 0, server.hv.dom0_secret)
    try:
        ids = await create_domains(dom0)
        step("xl list")
        await show_list(dom0)
        await balloon(dom0, ids["alpha"])
        await evtchn_and_grants(dom0, server.address, args.notifies)
        await shut_down(dom0, ids)
    finally:
        await dom0.close()
        prefix = server.hv.memory.prefix
        await server.stop(grace=0.5)
        leftovers = list(Path(config.shm_dir).glob(f"{prefix}*"))
        step("after shutdown")
        print(f"shared-memory segments left behind: {len(leftovers)}")
        if args.rundir is None:
            shutil.rmtree(rundir, ignore_errors=True)
    return 0


async def create_domains(dom0: HypervisorClient) -> dict[str, int]:
    ids = {}
    for name, text in CONFIGS.items():
        step(f"xl create {name}.cfg")
        print(text.rstrip())
        cfg = parse_xl_config(text, f"{name}.cfg")
        reply = await dom0.domains.Create(domains_pb2.CreateDomainRequest(spec=to_domain_spec(cfg)))
        ids[name] = reply.info.domid
        print(f"-> d{reply.info.domid}, process {reply.info.pid}")
    for name, domid in ids.items():
        await wait_for(lambda d=domid: _booted(dom0, d), 30, f"{name} to boot")
    print("both guests booted (control/feature-poweroff = 1)")
    return ids


async def _booted(dom0, domid) -> bool:
    return await xs_read(dom0, f"/local/domain/{domid}/control/feature-poweroff") == "1"


async def balloon(dom0: HypervisorClient, domid: int) -> None:
    step(f"xl mem-set alpha 40m (the guest's balloon driver follows memory/target)")
    await dom0.memory.SetTarget(memory_pb2.MemSetRequest(domain=common_pb2.DomainRef(domid=domid),
                                                         kb=40 * 1024))

    async def done():
        return await xs_read(dom0, f"/local/domain/{domid}/data/balloon") == str(40 * 1024)
    await wait_for(done, 15, "the balloon to reach 40 MiB")
    await show_list(dom0)


async def evtchn_and_grants(dom0: HypervisorClient, address: str, notifies: int) -> None:

    step("event channel and grant copy between two domains (this process acts as both)")
    guests = {}
    for name in ("left", "right"):
        reply = await dom0.domains.Create(domains_pb2.CreateDomainRequest(
            spec=domains_pb2.DomainSpec(name=name, memory_mb=8, launcher="none")))
        client = HypervisorClient.connect(address, reply.info.domid, reply.secret)
        mm = await client.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(
            domain=common_pb2.DomainRef(domid=reply.info.domid), with_populated=True))
        memory = GuestMemory(mm.shm_path, mm.segment_pages, mm.first_frame_offset)
        memory.set_populated(mm.populated)
        shared = SharedInfo(memory.mm, mm.shared_info_offset, 1)
        info = await client.evtchn.GetDoorbell(common_pb2.Empty())
        calls = Hypercalls(client)
        chans = GuestEventChannels(calls.evtchn, shared, info.path or None, reply.secret)
        await chans.start()
        await calls.gnttab.setup(memory)
        guests[name] = (reply.info.domid, client, memory, shared, chans, calls.gnttab)
    (ld, lclient, lmem, lshared, lchan, lgnttab), (rd, rclient, rmem, rshared, rchan, _) = \
        guests["left"], guests["right"]
    try:
        lport = await lchan.alloc_unbound(rd)
        rport = await rchan.bind_interdomain(ld, lport)
        print(f"left d{ld} port {lport} <-> right d{rd} port {rport} "
              f"({'doorbell' if lchan.via_doorbell else 'gRPC'})")
        got = asyncio.Queue()
        rchan.bind_handler(rport, lambda p: rchan.notify(rport))      # right echoes
        lchan.bind_handler(lport, lambda p: got.put_nowait(time.perf_counter()))
        await asyncio.sleep(0.05)
        while not got.empty():
            got.get_nowait()
        rtts = []
        for _ in range(notifies):
            start = time.perf_counter()
            lchan.notify(lport)
            end = await eventloop.wait_for(got.get(), 5)
            rtts.append((end - start) * 1e6)
        print(f"{notifies} notify round trips: median {statistics.median(rtts):.0f} us, "
              f"p99 {sorted(rtts)[int(len(rtts) * 0.99) - 1]:.0f} us")

        message = b"hello from the left domain's frame 3"
        lmem.frame(3)[:len(message)] = message
        # Granting is a write to the left domain's own grant frame, not a call.
        ref = (await lgnttab.grant_access([(rd, 3, True)]))[0]
        result = await rclient.grants.Copy(grants_pb2.GrantCopyRequest(ops=[grants_pb2.GrantCopyOp(
            source=grants_pb2.CopyPtr(domid=ld, ref=ref, use_gref=True),
            dest=grants_pb2.CopyPtr(domid=abi.DOMID_SELF, gfn=5), len=len(message))]))
        copied = bytes(rmem.frame(5)[:len(message)])
        print(f"grant ref {ref} (read-only, to d{rd}); GNTTABOP_copy status {list(result.status)}; "
              f"right's frame 5 now reads {copied.decode()!r}")
        denied = await rclient.grants.Copy(grants_pb2.GrantCopyRequest(ops=[grants_pb2.GrantCopyOp(
            source=grants_pb2.CopyPtr(domid=abi.DOMID_SELF, gfn=5),
            dest=grants_pb2.CopyPtr(domid=ld, ref=ref, use_gref=True), len=8)]))
        print(f"writing back through the read-only grant: status {denied.status[0]} "
              f"({abi.GNTST_NAMES[denied.status[0]]})")
        lgnttab.end_access([ref])
    finally:
        for domid, client, memory, shared, chans, gnttab in guests.values():
            await chans.close()
            await gnttab.close()
            shared.release()
            memory.close()
            await client.close()
            await dom0.domains.Destroy(common_pb2.DomainRef(domid=domid))


async def shut_down(dom0: HypervisorClient, ids: dict[str, int]) -> None:
    for name, domid in ids.items():
        step(f"xl shutdown -w {name} (the guest sees control/shutdown = poweroff)")
        await dom0.domains.Shutdown(domains_pb2.ShutdownRequest(
            domain=common_pb2.DomainRef(domid=domid), reason="poweroff", wait=True, timeout=20))
    await show_list(dom0)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(demo(args))
    except (TimeoutError, grpc.aio.AioRpcError) as err:
        detail = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
        print(f"xenlab tour: {detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xenlab tour", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
