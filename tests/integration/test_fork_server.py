"""The fork-server launcher (xenlab.launchers.forkserver, xenlab.boot.zygote),
seen from the host: what a forked domain holds, the fork server dying, the
hypervisor dying, and create/destroy cycles leaking nothing.

XENLAB_FORK_CYCLES sets the number of create/destroy cycles (the issue asks
for 500: `XENLAB_FORK_CYCLES=500 ./dev test tests/integration/test_fork_server.py -k cycles -s`).
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from procfs import fd_targets
from xenlab.client import to_domain_spec
from xenlab.hypervisor import page_sharing
from xenlab.launchers.forkserver import ForkServer
from xenlab.proto import agent_pb2, common_pb2, domains_pb2
from xenlab.toolstack.xlcfg import parse_xl_config
from xenlab.xen.errors import XenError

pytestmark = pytest.mark.integration

CYCLES = int(os.environ.get("XENLAB_FORK_CYCLES", "24"))
PARALLEL = 2
LAB = """
[mqtt]
broker = "none"
"""


def spec(name: str, n: int, on_crash: str = "destroy"):
    return to_domain_spec(parse_xl_config(
        f'name = "{name}"\nmemory = 16\non_crash = "{on_crash}"\n'
        f'vif = ["mac=00:16:3e:0f:00:{n:02x},ip=10.9.0.{n}/24"]\n'
        f'extra = "ip=10.9.0.{n}:::255.255.255.0::eth0:off"\n'))


def status(pid: int) -> dict[str, list[str]]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.split()
    return out


def ppid(pid: int) -> int:
    return int(status(pid)["PPid"][0])


def alive(pid: int) -> bool:
    try:
        return status(pid)["State"][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def fork_server(hv_pid: int) -> int:
    found = [p for p in children(hv_pid)
             if Path(f"/proc/{p}/comm").read_text().strip() == "xenlab-forksrv" and alive(p)]
    assert len(found) == 1, [(p, status(p)["State"], status(p)["PPid"]) for p in found]
    return found[0]


_SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(os.uname().machine)
_KCMP_FILE = 0


def shared_files(pid: int, other: int) -> list[str]:
    """The open file descriptions ``pid`` shares with ``other`` (kcmp(2)
    KCMP_FILE: the same struct file, as a descriptor inherited or passed
    on is; the same path opened twice is not)."""
    libc = ctypes.CDLL(None, use_errno=True)
    theirs = [int(fd) for fd in os.listdir(f"/proc/{other}/fd")]
    shared = []
    for fd in (int(fd) for fd in os.listdir(f"/proc/{pid}/fd")):
        for their in theirs:
            if libc.syscall(_SYS_KCMP, pid, other, _KCMP_FILE, fd, their) == 0:
                try:
                    shared.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except FileNotFoundError:
                    pass
    return shared


def mapped_files(pid: int) -> set[str]:
    return {line.split(maxsplit=5)[5] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if len(line.split(maxsplit=5)) == 6 and line.split(maxsplit=5)[5].startswith("/")}


def memory_holds(pid: int, needles: list[bytes]) -> list[bytes]:
    """Which of ``needles`` are anywhere in the process's private memory
    (its heap, stacks, anonymous mappings; not the domains' shared segments)."""
    found = set()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            path = fields[5] if len(fields) == 6 else ""
            if fields[1][0] != "r" or path.startswith("/dev/shm/") or path in ("[vvar]", "[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError):
                continue
            found.update(n for n in needles if n in data)
    return sorted(found)


async def connected(lab, domid: int, timeout: float = 60.0) -> None:
    ref = common_pb2.DomainRef(domid=domid)
    deadline = time.monotonic() + timeout
    while True:
        vifs = (await lab.hv.domains.NetworkList(ref)).vifs
        if vifs and vifs[0].state == vifs[0].backend_state == 4 and vifs[0].hotplug_status == "connected":
            return
        assert time.monotonic() < deadline, f"d{domid}'s vif did not connect: {vifs}"
        await asyncio.sleep(0.05)


async def create(lab, name: str, n: int, **kw) -> tuple[int, str, int]:
    """(domid, secret, pid) of a new domain whose vif is Connected."""
    reply = await lab.hv.domains.Create(domains_pb2.CreateDomainRequest(spec=spec(name, n, **kw)))
    lab.lab.domids[name] = reply.info.domid
    await connected(lab, reply.info.domid)
    info = await lab.hv.domains.Info(common_pb2.DomainRef(domid=reply.info.domid))
    return reply.info.domid, reply.secret, info.pid


async def eventually(check, timeout: float = 30.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.05)


async def ping(lab, src: str, dst: str) -> int:
    agent = await lab.agent(src)
    try:
        return (await agent.Ping(agent_pb2.PingRequest(dst=dst, count=2, interval=0.05))).received
    finally:
        await agent.close()


def hv_pid(lab) -> int:
    return lab.lab.service("hypervisor").proc.pid


@pytest.mark.skipif(os.geteuid() != 0, reason="reading other processes' memory and comparing "
                    "their descriptors (kcmp) needs root, as do the domains' own uids")
async def test_a_forked_domain_holds_only_what_it_was_handed(lab_factory, monkeypatch):
    """Two forked domains: each holds its own memory mapping, doorbell,
    console and the sockets it made itself; no descriptor, mapping or
    secret of the other domain, of the fork server or of the hypervisor."""
    monkeypatch.setenv("XENLAB_FORK_SERVER_TRACE_IMPORTS", "1")
    lab = await lab_factory(LAB)
    a, secret_a, pid_a = await create(lab, "fa", 1)
    b, secret_b, pid_b = await create(lab, "fb", 2)
    assert await ping(lab, "fa", "10.9.0.2") == 2
    hv = hv_pid(lab)
    zygote = fork_server(hv)
    assert ppid(pid_a) == ppid(pid_b) == zygote, "the domains were not forked by the fork server"
    assert Path(f"/proc/{pid_a}/comm").read_text() == f"xenlab-d{a}\n"
    for (pid, domid), other in (((pid_a, a), pid_b), ((pid_b, b), pid_a)):
        mine = fd_targets(pid)
        console = {t for t in mine if t.endswith(".console")}
        assert len(console) == 1 and f"/d{domid}-" in console.pop(), mine
        assert not [t for t in mine if t.startswith(("/dev/shm/", "/memfd:"))], mine
        assert not [t for t in mine if t.startswith(str(lab.rundir)) and not t.endswith(".console")]
        assert shared_files(pid, other) == []
        assert shared_files(pid, zygote) == []
        # The hypervisor keeps both ends of each event channel's notification
        # object it hands a domain (it revokes them: SECURITY.md); nothing else.
        assert [t for t in shared_files(pid, hv) if not t.startswith("socket:")] == []
        segments = {p for p in mapped_files(pid) if p.startswith("/dev/shm/")}
        assert len(segments) == 1 and segments.pop().endswith(f"-d{domid}"), segments
        # Every file it maps came with the fork (the fork server's libraries), but its memory.
        loaded_after = {p for p in mapped_files(pid) - mapped_files(zygote)
                        if not p.startswith("/dev/shm/")}
        assert not loaded_after, loaded_after
    assert memory_holds(zygote, [secret_a.encode(), secret_b.encode()]) == []
    assert memory_holds(pid_a, [secret_b.encode()]) == []
    assert memory_holds(pid_b, [secret_a.encode()]) == []
    # Nothing was imported after the fork (the fork server preloaded it all).
    logs = "".join(p.read_text() for p in (lab.rundir / "logs").glob("d*.console"))
    assert "late import after the fork" not in logs, logs


async def test_domains_outlive_the_fork_server_and_keep_working(lab_factory):
    """The fork server killed: its domains become the hypervisor's children
    (a child subreaper), keep forwarding, pause and unpause, and their exit
    is still seen (on_crash applies); the next create starts a new fork server."""
    lab = await lab_factory(LAB)
    a, _, pid_a = await create(lab, "fa", 1)
    b, _, pid_b = await create(lab, "fb", 2, on_crash="preserve")
    hv = hv_pid(lab)
    zygote = fork_server(hv)
    os.kill(zygote, signal.SIGKILL)
    await eventually(lambda: ppid(pid_a) == ppid(pid_b) == hv, what="the domains reparented")
    assert alive(pid_a) and alive(pid_b)
    assert await ping(lab, "fa", "10.9.0.2") == 2
    ref_a = common_pb2.DomainRef(domid=a)
    await lab.hv.domains.Pause(ref_a)
    await eventually(lambda: status(pid_a)["State"][0] == "T", what="fa stopped (SIGSTOP)")
    await lab.hv.domains.Unpause(ref_a)
    await eventually(lambda: status(pid_a)["State"][0] != "T", what="fa continued")
    assert await ping(lab, "fb", "10.9.0.1") == 2
    # A crash of a reparented domain: the hypervisor reaps it through its pidfd.
    os.kill(pid_b, signal.SIGSEGV)
    ref_b = common_pb2.DomainRef(domid=b)

    async def crashed() -> str:
        return (await lab.hv.domains.Info(ref_b)).shutdown_reason
    deadline = time.monotonic() + 30
    while await crashed() != "crash":
        assert time.monotonic() < deadline, "d%d's crash was not seen" % b
        await asyncio.sleep(0.05)
    assert "c" in (await lab.hv.domains.Info(ref_b)).state        # on_crash = preserve
    await lab.hv.domains.Destroy(ref_b)
    # A domain destroyed: killed and reaped through its pidfd.
    await lab.hv.domains.Destroy(ref_a)
    await eventually(lambda: not alive(pid_a), what="fa reaped")
    assert pid_a not in children(hv) and pid_b not in children(hv)
    # The next create has a fork server again.
    c, _, pid_c = await create(lab, "fc", 3)
    assert ppid(pid_c) == fork_server(hv) != zygote


async def test_every_domain_dies_with_the_hypervisor(lab_factory):
    """Forked (their parent the fork server) or reparented (their parent the
    hypervisor): killing the hypervisor takes every domain with it."""
    lab = await lab_factory(LAB)
    _, _, orphan = await create(lab, "fa", 1)
    hv = hv_pid(lab)
    os.kill(fork_server(hv), signal.SIGKILL)
    await eventually(lambda: ppid(orphan) == hv, what="fa reparented")
    _, _, forked = await create(lab, "fb", 2)
    zygote = fork_server(hv)
    assert ppid(forked) == zygote
    os.kill(hv, signal.SIGKILL)
    await eventually(lambda: not (alive(orphan) or alive(forked) or alive(zygote)),
                     what="the domains and the fork server gone with the hypervisor")


async def test_the_spawn_path_stays_with_the_fork_server_off(lab_factory, monkeypatch):
    monkeypatch.setenv("XENLAB_FORK_SERVER", "off")
    lab = await lab_factory(LAB)
    _, _, pid = await create(lab, "fa", 1)
    hv = hv_pid(lab)
    assert ppid(pid) == hv
    assert not [p for p in children(hv)
                if b"xenlab.boot.zygote" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert Path(f"/proc/{pid}/comm").read_text().strip() != "xenlab-d1"


def rss_kb(pid: int) -> int:
    return int(status(pid)["VmRSS"][0])


def shm_segments(hv: int) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob(f"xenlab-{hv}-*"))


def measure(lab, forked: bool = True) -> dict:
    """Descriptors and RSS of the hypervisor, the fork server (``forked``),
    Domain-0 and the bridge; the domains' segments; who has children."""
    hv = hv_pid(lab)
    pids = {"hypervisor": hv, "dom0": lab.lab.service("dom0").proc.pid,
            "bridge": lab.lab.service("bridge").proc.pid}
    if forked:
        pids["fork server"] = fork_server(hv)
    return {"fds": {name: len(os.listdir(f"/proc/{pid}/fd")) for name, pid in pids.items()},
            "rss_kb": {name: rss_kb(pid) for name, pid in pids.items()},
            "hypervisor rss parts kb": {k: int(status(hv)[k][0]) for k in ("RssAnon", "RssFile", "RssShmem")},
            "hypervisor shm maps": sum("/dev/shm/" in line for line in
                                       Path(f"/proc/{hv}/maps").read_text().splitlines()),
            "shm": shm_segments(hv),
            "hypervisor children": len(children(hv)),
            "fork server children": len(children(pids["fork server"])) if forked else 0}


@pytest.mark.parametrize("forked", [True, pytest.param(False, marks=pytest.mark.skipif(
    os.environ.get("XENLAB_FORK_CYCLES_SPAWNED") != "1",
    reason="the spawn path's cycles, for comparison: XENLAB_FORK_CYCLES_SPAWNED=1"))],
    ids=["forked", "spawned"])
async def test_create_destroy_cycles_leak_no_fd_shm_or_memory(lab_factory, monkeypatch, forked):
    if not forked:
        monkeypatch.setenv("XENLAB_FORK_SERVER", "off")
    lab = await lab_factory(LAB)

    async def cycle(name: str, n: int) -> None:
        domid, _, _ = await create(lab, name, n)
        await lab.hv.domains.Destroy(common_pb2.DomainRef(domid=domid))

    await cycle("warm", 1)              # lazily made things (the fork server, gRPC's sockets)
    await asyncio.sleep(0.5)
    before = measure(lab, forked)
    started = time.monotonic()

    async def worker(w: int) -> None:
        for i in range(CYCLES // PARALLEL):
            await cycle(f"cycle{w}", 2 + w)
    await asyncio.gather(*(worker(w) for w in range(PARALLEL)))
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 10
    while True:             # sockets of the last domains close asynchronously
        after = measure(lab, forked)
        if all(after["fds"][k] <= v for k, v in before["fds"].items()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    growth = {k: after["rss_kb"][k] - before["rss_kb"][k] for k in before["rss_kb"]}
    print(f"\n{CYCLES} create/destroy cycles in {elapsed:.1f}s; fds before {before['fds']} "
          f"after {after['fds']}; RSS before {before['rss_kb']} KiB, growth {growth} KiB; "
          f"the hypervisor's RSS before {before['hypervisor rss parts kb']} after "
          f"{after['hypervisor rss parts kb']}, its /dev/shm mappings {before['hypervisor shm maps']} "
          f"before, {after['hypervisor shm maps']} after")
    for name, count in before["fds"].items():
        assert after["fds"][name] <= count, (name, before["fds"], after["fds"])
    assert after["shm"] == before["shm"]
    assert after["hypervisor children"] == before["hypervisor children"]
    assert after["fork server children"] == before["fork server children"] == 0
    # The fork server only forks: its own memory does not move.
    assert not forked or growth["fork server"] <= 1024, growth


async def test_the_fork_server_refuses_malformed_launches_and_reports_each_exit(tmp_path):
    """The fork server alone, over its control socket: a launch without its
    four descriptors and a datagram that is not JSON are refused, and it
    serves on; a child's exit status comes back (2: no start_info)."""
    server = await ForkServer.start(sys.executable, "INFO")
    null = os.open(os.devnull, os.O_RDWR)
    console = os.open(tmp_path / "console", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    empty = os.memfd_create("empty")
    try:
        with pytest.raises(XenError, match="hands over memory, doorbell, console, start_info"):
            await server.launch([null, null], "INFO")
        socket.send_fds(server.sock, [b"\xff not json"], [])
        child = await server.launch([null, null, console, empty], "INFO")
        assert await asyncio.wait_for(child.status, 30) == 2
        assert "no start_info" in (tmp_path / "console").read_text()
        assert not server.gone and server.children == {}
    finally:
        for fd in (null, console, empty):
            os.close(fd)
        await server.close()
    assert server.proc.returncode == 0          # it exits when the control socket closes


# -- page sharing (xenlab.hypervisor.page_sharing) ---------------------------------------------
KSM = Path("/sys/kernel/mm/ksm")


def mergeable_heap(pid: int) -> bool:
    """Whether the process's [heap] is offered to KSM: smaps' VmFlags say
    `mg` (VM_MERGEABLE) for a mapping the kernel's samepage merging scans."""
    heap = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line.endswith("[heap]"):
            heap = True
        elif heap and line.startswith("VmFlags:"):
            return "mg" in line.split()[1:]
    raise AssertionError(f"process {pid} has no [heap]")


def merging_pages(pid: int) -> int:
    return int(Path(f"/proc/{pid}/ksm_merging_pages").read_text())


@pytest.mark.parametrize("mode, offered", [("auto", True), ("off", False)])
async def test_forked_domains_memory_is_offered_to_ksm_unless_page_sharing_is_off(lab_factory, mode,
                                                                                   offered):
    lab = await lab_factory(LAB + f'[hypervisor]\npage_sharing = "{mode}"\n')
    _, _, pid = await create(lab, "fa", 1)
    zygote = fork_server(hv_pid(lab))
    assert mergeable_heap(pid) is offered and mergeable_heap(zygote) is offered
    # The hypervisor, Domain-0 and the bridge are not domains forked from it: never offered.
    assert not mergeable_heap(hv_pid(lab))
    info = await lab.hv.domains.GetHostInfo(common_pb2.Empty())
    assert info.page_sharing.startswith(f"{mode}") and (mode != "auto" or "ksmd" in info.page_sharing)


@pytest.mark.skipif(not (KSM / "run").exists() or os.geteuid() != 0,
                    reason="starting ksmd needs KSM in the kernel and root")
async def test_page_sharing_on_starts_ksmd_merges_the_domains_and_puts_the_host_back(lab_factory):
    """`page_sharing = "on"`: ksmd started (if it was stopped), the two
    domains' identical pages merged (each process's ksm_merging_pages, and
    xl info's sharing_freed_memory), the host's settings back once the lab
    is down."""
    before = {name: (KSM / name).read_text() for name in ("run", "pages_to_scan", "sleep_millisecs")}
    lab = await lab_factory(LAB + '[hypervisor]\npage_sharing = "on"\n')
    _, _, pid_a = await create(lab, "fa", 1)
    _, _, pid_b = await create(lab, "fb", 2)
    assert (KSM / "run").read_text() == "1\n"
    await eventually(lambda: merging_pages(pid_a) > 100 and merging_pages(pid_b) > 100, timeout=120,
                     what="ksmd merging the domains' pages")
    info = await lab.hv.domains.GetHostInfo(common_pb2.Empty())
    assert info.sharing_freed_kb > 400 and info.sharing_used_kb > 0
    if before["run"] == "0\n":
        assert info.page_sharing.startswith("on: ksmd started by the hypervisor")
    assert await ping(lab, "fa", "10.9.0.2") == 2     # merged pages written again: copied, not broken
    await lab.lab.down()
    assert {name: (KSM / name).read_text() for name in before} == before
    assert not page_sharing.OWNER_RECORD.exists()       # its record of starting ksmd is gone
