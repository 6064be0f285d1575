"""The hypervisor as its own process, driven by the xl CLI and by gRPC
clients acting as domains: create from xl.cfg, list, event channel and
grant copy between two domains, destroy, and nothing leaked."""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest

from xenlab.client import HypervisorClient, to_domain_spec
from xenlab.domain.evtchn import GuestEventChannels
from xenlab.domain.hypercall import Hypercalls
from xenlab.domain.memory import GuestMemory
from xenlab.proto import (common_pb2, domains_pb2, evtchn_pb2, grants_pb2, memory_pb2,
                          xenstore_pb2)
from xenlab.testing import eventually_blocking
from xenlab.toolstack.xlcfg import load_xl_config
from xenlab.xen import abi
from xenlab.xen.shared_info import SharedInfo

pytestmark = pytest.mark.integration

WEB_CFG = '''# a web server
name = "web"
memory = 32
maxmem = 64
vcpus = 2
on_crash = "preserve"
'''
DB_CFG = '''name = "db"
memory = 16
vcpus = 1
'''


def list_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if fields:
            rows[fields[0]] = fields
    return rows


def shm_files(hp) -> list[Path]:
    pid = hp.proc.pid
    return sorted(Path("/dev/shm").glob(f"xenlab-{pid}-*"))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def domain_pid(hp, name: str) -> int:
    async def info():
        async with hp.dom0() as dom0:
            return (await dom0.domains.Info(common_pb2.DomainRef(name=name))).pid
    return asyncio.run(info())


def xs_read(hp, path):
    return hp.cli("xenstore", "read", path, check=False)


def test_xl_create_list_shutdown_with_real_domain_processes(hypervisor_process, tmp_path):
    hp = hypervisor_process
    (tmp_path / "web.cfg").write_text(WEB_CFG)
    (tmp_path / "db.cfg").write_text(DB_CFG)
    created = hp.xl("create", str(tmp_path / "web.cfg"))
    assert "Parsing config from" in created.stderr
    hp.xl("create", str(tmp_path / "db.cfg"))

    rows = list_rows(hp.xl("list").stdout)
    assert rows["Domain-0"][1] == "0"
    web, db = rows["web"], rows["db"]
    assert (web[2], web[3]) == ("32", "2")
    assert (db[2], db[3]) == ("16", "1")
    web_id = int(web[1])

    # The guest kernel booted and advertised its PV control features.
    eventually_blocking(lambda: xs_read(hp, f"/local/domain/{web_id}/control/feature-poweroff").stdout.strip() == "1",
               what="web to boot")
    assert xs_read(hp, f"/local/domain/{web_id}/name").stdout.strip() == "web"

    # xl pause really stops the process; unpause resumes it.
    hp.xl("pause", "web")
    pid = domain_pid(hp, "web")
    eventually_blocking(lambda: Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "T", what="SIGSTOP")
    assert list_rows(hp.xl("list", "web").stdout)["web"][4] == "--p---"
    hp.xl("unpause", "web")
    eventually_blocking(lambda: Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "T", what="SIGCONT")

    # mem-set: the guest's balloon driver gives memory back.
    hp.xl("mem-set", "web", "20m")
    eventually_blocking(lambda: list_rows(hp.xl("list", "web").stdout)["web"][2] == "20", what="balloon")

    # shutdown: the guest acknowledges control/shutdown and powers off; on_poweroff=destroy.
    hp.xl("shutdown", "-w", "web")
    assert "web" not in list_rows(hp.xl("list").stdout)
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"

    # A crash under on_crash=destroy (db's default) removes the domain.
    db_pid = domain_pid(hp, "db")
    os.kill(db_pid, signal.SIGKILL)
    eventually_blocking(lambda: "db" not in list_rows(hp.xl("list").stdout), what="crashed db to go")


def segment_protection(pid: int, shm_path: str) -> dict[str, int]:
    """Pages of the domain's segment its process maps, by permissions
    ("rw-s", "---s"), from /proc/PID/maps: the host's view, not xenlab's."""
    pages: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(shm_path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pages[fields[1]] = pages.get(fields[1], 0) + (end - start) // 4096
    return pages


def test_ballooned_out_pages_are_unusable_by_the_guest_and_given_back_to_the_host(
        hypervisor_process, tmp_path):
    hp = hypervisor_process
    (tmp_path / "web.cfg").write_text(WEB_CFG)
    hp.xl("create", str(tmp_path / "web.cfg"))
    web_id = int(list_rows(hp.xl("list").stdout)["web"][1])
    eventually_blocking(lambda: xs_read(hp, f"/local/domain/{web_id}/control/feature-poweroff").stdout.strip() == "1",
               what="web to boot")
    pid = domain_pid(hp, "web")

    async def shm_path():
        async with hp.dom0() as dom0:
            return (await dom0.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(
                domain=common_pb2.DomainRef(domid=web_id)))).shm_path
    path = asyncio.run(shm_path())
    # memory = 32, maxmem = 64: the frames above 32 MiB were never the guest's
    assert segment_protection(pid, path).get("---s", 0) == 32 * 256
    hp.xl("mem-set", "web", "20m")
    eventually_blocking(lambda: list_rows(hp.xl("list", "web").stdout)["web"][2] == "20", what="balloon")
    eventually_blocking(lambda: segment_protection(pid, path).get("---s", 0) == (64 - 20) * 256,
               what=f"the guest to unmap what it gave back: {segment_protection(pid, path)}")
    # tmpfs backs no more than what the guest still holds
    assert os.stat(path).st_blocks * 512 <= (20 << 20) + 4096
    hp.xl("mem-set", "web", "48m")
    eventually_blocking(lambda: list_rows(hp.xl("list", "web").stdout)["web"][2] == "48", what="balloon up")
    eventually_blocking(lambda: segment_protection(pid, path).get("---s", 0) == (64 - 48) * 256,
               what=f"the guest to map what it got back: {segment_protection(pid, path)}")


def test_crash_with_preserve_keeps_the_domain_as_crashed(hypervisor_process, tmp_path):
    hp = hypervisor_process
    (tmp_path / "web.cfg").write_text(WEB_CFG)
    hp.xl("create", str(tmp_path / "web.cfg"))
    pid = domain_pid(hp, "web")
    os.kill(pid, signal.SIGKILL)
    eventually_blocking(lambda: list_rows(hp.xl("list").stdout)["web"][4] == "---sc-", what="crashed state")
    hp.xl("destroy", "web")
    assert "web" not in list_rows(hp.xl("list").stdout)


def test_reboot_restarts_the_domain_with_a_new_id(hypervisor_process, tmp_path):
    hp = hypervisor_process
    (tmp_path / "db.cfg").write_text(DB_CFG)
    hp.xl("create", str(tmp_path / "db.cfg"))
    old_id = int(list_rows(hp.xl("list").stdout)["db"][1])
    eventually_blocking(lambda: xs_read(hp, f"/local/domain/{old_id}/control/feature-reboot").stdout.strip() == "1",
               what="db to boot")
    hp.xl("reboot", "db")
    eventually_blocking(lambda: int(list_rows(hp.xl("list").stdout).get("db", ["", old_id])[1]) not in (old_id,),
               what="db to come back")
    new_id = int(list_rows(hp.xl("list").stdout)["db"][1])
    assert new_id > old_id


def test_cli_errors_are_one_line_without_traceback(hypervisor_process, tmp_path):
    hp = hypervisor_process
    bad = tmp_path / "bad.cfg"
    bad.write_text('name = "x"\nmemory = [1,\n')
    result = hp.xl("create", str(bad), check=False)
    assert result.returncode == 1
    assert "bad.cfg:" in result.stderr and "Traceback" not in result.stderr
    result = hp.xl("destroy", "nosuchdomain", check=False)
    assert result.returncode == 1 and "nosuchdomain" in result.stderr
    assert "Traceback" not in result.stderr


async def test_evtchn_and_grant_copy_between_two_domains_from_xl_cfg(hypervisor_process, tmp_path):
    """Two domains from xl.cfg files (no launcher: this test acts as each
    of them with the secret the toolstack got), an interdomain event channel
    over the doorbell, and a grant copy between their memories."""
    hp = hypervisor_process
    guests = {}
    async with hp.dom0() as dom0:
        for name, text in (("web", WEB_CFG), ("db", DB_CFG)):
            path = tmp_path / f"{name}.cfg"
            path.write_text(text + 'launcher = "none"\n')
            spec = to_domain_spec(load_xl_config(path))
            reply = await dom0.domains.Create(domains_pb2.CreateDomainRequest(spec=spec))
            guests[name] = (reply.info.domid, reply.secret)
        listing = list_rows(hp.xl("list").stdout)
        assert int(listing["web"][1]) == guests["web"][0] and int(listing["db"][1]) == guests["db"][0]

        handles = {}
        for name, (domid, secret) in guests.items():
            client = HypervisorClient.connect(hp.address, domid, secret)
            mm = await client.memory.GetMemoryMap(memory_pb2.MemoryMapRequest(
                domain=common_pb2.DomainRef(domid=domid), with_populated=True))
            memory = GuestMemory(mm.shm_path, mm.segment_pages, mm.first_frame_offset)
            memory.set_populated(mm.populated)
            shared = SharedInfo(memory.mm, mm.shared_info_offset)
            doorbell = (await client.evtchn.GetDoorbell(common_pb2.Empty())).path
            calls = Hypercalls(client)
            chans = GuestEventChannels(calls.evtchn, shared, doorbell, secret)
            await chans.start()
            await calls.gnttab.setup(memory)
            handles[name] = (domid, client, memory, shared, chans, calls.gnttab)
        (wd, _, wmem, _, wchan, wgnttab), (dd, dclient, dmem, _, dchan, _) = \
            handles["web"], handles["db"]
        try:
            assert wchan.via_doorbell and dchan.via_doorbell
            wport = await wchan.alloc_unbound(dd)
            dport = await dchan.bind_interdomain(wd, wport)
            received = asyncio.Queue()
            wchan.bind_handler(wport, received.put_nowait)
            dchan.notify(dport)
            assert await asyncio.wait_for(received.get(), 5) == wport
            status = await dclient.evtchn.Status(evtchn_pb2.StatusRequest(dom=dd, port=dport))
            assert status.remote_dom == wd and status.remote_port == wport

            payload = os.urandom(4096)
            wmem.frame(7)[:] = payload
            [ref] = await wgnttab.grant_access([(dd, 7, False)])   # a write to web's own frame
            copy = await dclient.grants.Copy(grants_pb2.GrantCopyRequest(ops=[grants_pb2.GrantCopyOp(
                source=grants_pb2.CopyPtr(domid=wd, ref=ref, use_gref=True),
                dest=grants_pb2.CopyPtr(domid=abi.DOMID_SELF, gfn=2), len=4096)]))
            assert list(copy.status) == [0]
            assert bytes(dmem.frame(2)) == payload
            # Past the page end: GNTST_bad_copy_arg, and nothing written.
            bad = await dclient.grants.Copy(grants_pb2.GrantCopyRequest(ops=[grants_pb2.GrantCopyOp(
                source=grants_pb2.CopyPtr(domid=wd, ref=ref, use_gref=True, offset=100),
                dest=grants_pb2.CopyPtr(domid=abi.DOMID_SELF, gfn=3), len=4096)]))
            assert list(bad.status) == [-10]
        finally:
            for domid, client, memory, shared, chans, gnttab in handles.values():
                await chans.close()
                await gnttab.close()
                shared.release()
                memory.close()
                await client.close()

        shm_before = shm_files(hp)
        hp.xl("destroy", "web")
        # Closing one end of an interdomain channel returns the other to unbound.
        status = await dom0.evtchn.Status(evtchn_pb2.StatusRequest(dom=dd, port=dport))
        assert status.state == evtchn_pb2.ChannelStatus.UNBOUND
        hp.xl("destroy", "db")
        # Ports, grants, memory and xenstore nodes are gone with the domains.
        for name, (domid, _) in guests.items():
            for call, request in ((dom0.xenstore.Read, xenstore_pb2.PathRequest(path=f"/local/domain/{domid}/name")),
                                  (dom0.evtchn.Status, evtchn_pb2.StatusRequest(dom=domid, port=1)),
                                  (dom0.grants.Query, common_pb2.DomainRef(domid=domid))):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(request)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND, (name, call)
        assert len(shm_files(hp)) == len(shm_before) - 2
        info = hp.xl("list").stdout
        assert "web" not in info and "db" not in info


def test_no_leaks_after_50_create_destroy_cycles(hypervisor_process, tmp_path):
    hp = hypervisor_process
    cfg = tmp_path / "cycle.cfg"
    cfg.write_text('name = "cycle"\nmemory = 16\n')
    (tmp_path / "warm.cfg").write_text('name = "warm"\nmemory = 16\n')
    async def cycles(count):
        async with hp.dom0() as dom0:
            spec = to_domain_spec(load_xl_config(cfg))
            for _ in range(count):
                reply = await dom0.domains.Create(domains_pb2.CreateDomainRequest(spec=spec))
                booted = f"/local/domain/{reply.info.domid}/control/feature-poweroff"
                # Let the guest boot (doorbell, watches, timer bound) before destroying it.
                for _ in range(200):
                    value = await dom0.xenstore.Read(xenstore_pb2.PathRequest(path=booted))
                    if value.value == b"1":
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError("the domain did not boot")
                await dom0.domains.Destroy(common_pb2.DomainRef(domid=reply.info.domid))
    # One cycle first, so that lazily made things (gRPC's internal sockets,
    # the CLI's first connection) exist already.
    hp.xl("create", str(tmp_path / "warm.cfg"))
    hp.xl("destroy", "warm")
    asyncio.run(cycles(1))
    shm_before, fds_before = shm_files(hp), fd_count(hp.proc.pid)
    nodes_before = hp.cli("xenstore", "ls", "/").stdout.count("\n")
    asyncio.run(cycles(50))

    assert shm_files(hp) == shm_before
    # Sockets of closed connections are released asynchronously.
    eventually_blocking(lambda: fd_count(hp.proc.pid) <= fds_before, timeout=5,
               what=f"fds back to {fds_before}: {os.listdir(f'/proc/{hp.proc.pid}/fd')}")
    assert hp.cli("xenstore", "ls", "/").stdout.count("\n") == nodes_before
    assert list(list_rows(hp.xl("list").stdout)) == ["Domain-0"]
    children = Path(f"/proc/{hp.proc.pid}/task/{hp.proc.pid}/children").read_text().split()
    # The fork server (xenlab.boot.zygote) stays for the next create; none of its domains does.
    fork_servers = [c for c in children if Path(f"/proc/{c}/comm").read_text().strip() == "xenlab-forksrv"]
    assert [c for c in children if c not in fork_servers] == []
    for pid in fork_servers:
        assert Path(f"/proc/{pid}/task/{pid}/children").read_text().split() == []
