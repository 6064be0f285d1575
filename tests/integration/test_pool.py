"""A pool: two Xen hosts on this machine, each a lab of its own in a
network namespace of its own, their bridges joined by VXLAN over a shared
underlay. Domains on different hosts ping each other over real UDP; the
MTU the tunnel leaves (1450) is met and its excess counted. Needs root."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

from markdown_examples import ROOT, block_after
from xenlab.agent_client import NoAgentError, agent_for
from xenlab.lab.pool import Pool
from xenlab.lab.spec import parse_lab
from xenlab.toolstack import save_client
from xenlab.proto import agent_pb2, bridge_pb2, common_pb2, save_pb2
from xenlab.testing import short_tempdir
from xenlab.testing.eventually import eventually
from xenlab.testing.processes import RunningLab

pytestmark = pytest.mark.integration

# README's pool, as written there.
POOL = block_after(ROOT / "README.md", "### A pool: several hosts").text


def skip_without_pools() -> None:
    reason = Pool.unavailable()
    if reason:
        pytest.skip(reason)


def netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.fixture
async def pool():
    skip_without_pools()
    rundir = short_tempdir("xl-pool-")
    running = Pool(parse_lab(POOL, "<pool>"), rundir, log_level="DEBUG", progress=lambda s: None)
    try:
        await running.up(timeout=60)
        yield running
    finally:
        await running.down()
        shutil.rmtree(rundir, ignore_errors=True)


async def test_domains_on_two_hosts_ping_each_other_over_the_vxlan_between_them(pool):
    a, b = RunningLab(pool.labs["a"]), RunningLab(pool.labs["b"])
    # Each host runs only its own domain.
    assert set(pool.labs["a"].domids) == {"web"} and set(pool.labs["b"].domids) == {"db"}
    web, db = await a.agent("web"), await b.agent("db")
    try:
        there = await web.Ping(agent_pb2.PingRequest(dst="10.0.9.2", count=3, interval=0.2, timeout=5))
        back = await db.Ping(agent_pb2.PingRequest(dst="10.0.9.1", count=3, interval=0.2, timeout=5))
        fits = await web.Ping(agent_pb2.PingRequest(dst="10.0.9.2", count=1, size=1422, timeout=3))
        over = await web.Ping(agent_pb2.PingRequest(dst="10.0.9.2", count=1, size=1423, timeout=3))
    finally:
        await web.close()
        await db.close()
    assert (there.received, back.received) == (3, 3), (there, back)
    assert (fits.received, over.received) == (1, 0), (fits, over)
    bridge = await a.bridge("xenbr0")
    try:
        stats = await bridge.Stats(bridge_pb2.BridgeStatsRequest(bridge="xenbr0"))
    finally:
        await bridge.close()
    link = dict(next(p for p in stats.bridges[0].ports if p.name == "vxlan100").link)
    assert link.get("drop_oversize") == 1, link
    assert link["tx_packets"] >= 4 and link["rx_packets"] >= 4, link


async def test_one_mqtt_broker_on_the_underlay_carries_every_hosts_events(pool):
    """The pool's embedded broker listens on this machine's underlay address
    (.254); each host publishes to it under its own host name."""
    import aiomqtt
    assert pool.broker is not None and pool.broker.host == "10.231.0.254"
    states = {}
    async with aiomqtt.Client(pool.broker.host, pool.broker.port) as client:
        await client.subscribe("xenlab/+/domain/+/state")

        async def collect():
            async for message in client.messages:
                payload = json.loads(message.payload)
                states[(payload["host"], payload["name"])] = payload["state"]
                if len(states) >= 4:        # Domain-0 and one domU on each host
                    return
        await asyncio.wait_for(collect(), 15)
    assert states[("pool-a", "web")] == "running" and states[("pool-b", "db")] == "running", states


async def test_each_host_is_in_its_own_namespace_with_its_address_and_down_removes_them(pool):
    listed = netns_list()
    for host in pool.spec.hosts:
        assert pool.namespace(host.name) in listed
        out = subprocess.run(["ip", "-n", pool.namespace(host.name), "-br", "addr", "show", "eth0"],
                             capture_output=True, text=True).stdout
        assert host.address in out, out
    # The hosts' services run in their namespaces: the hypervisor of host a.
    hv = pool.labs["a"].service("hypervisor").proc.pid
    ns_inode = os.stat(f"/proc/{hv}/ns/net").st_ino
    assert ns_inode != os.stat("/proc/self/ns/net").st_ino
    names = [pool.namespace(h.name) for h in pool.spec.hosts] + [pool.underlay_namespace]
    await pool.down()
    listed = netns_list()
    assert not any(name in listed for name in names), listed


@pytest.mark.parametrize("detach", [False, True], ids=["foreground", "detached"])
def test_xenlab_up_runs_the_pool_and_xenlab_down_on_its_rundir_stops_it(tmp_path, detach):
    """The commands as a user runs them: `xenlab up pool.toml` (in the
    foreground, or --detach), a tool against one host's rundir, `xenlab
    down` on the pool's rundir."""
    skip_without_pools()
    lab_file = tmp_path / "pool.toml"
    lab_file.write_text(POOL)
    rundir = short_tempdir("xl-pool-")
    cli = [sys.executable, "-m", "xenlab.cli.main"]
    up = subprocess.Popen([*cli, "up", str(lab_file), "--rundir", str(rundir),
                           *(["--detach"] if detach else [])], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in up.stdout:
            lines.append(line)
            if "pool pool is up: 2 hosts" in line and not detach:
                break
        if detach:
            assert up.wait(timeout=60) == 0, "".join(lines)
        assert any("is up: 2 hosts" in line for line in lines), "".join(lines)
        listed = subprocess.run([*cli, "xl", "list", "--rundir", f"{rundir}/hosts/b"],
                                capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0 and "db" in listed.stdout and "web" not in listed.stdout, listed
        status = subprocess.run([*cli, "status", "--rundir", str(rundir)], capture_output=True,
                                text=True, timeout=60)
        assert status.returncode == 0, status
        assert "== host a" in status.stdout and "== host b" in status.stdout, status.stdout
        assert "vxlan100" in status.stdout, status.stdout
        down = subprocess.run([*cli, "down", "--rundir", str(rundir)], capture_output=True, text=True,
                              timeout=60)
        assert down.returncode == 0, down
        if detach:
            rest = (rundir / "up.log").read_text()
        else:
            rest = up.stdout.read()
            assert up.wait(timeout=30) == 0, rest
        assert "stopping the pool" in rest
        assert "xl" + Pool.tag_of(rundir) + "-" not in netns_list()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        shutil.rmtree(rundir, ignore_errors=True)


def test_a_killed_pool_is_cleaned_up_by_xenlab_down_namespaces_too(tmp_path):
    skip_without_pools()
    lab_file = tmp_path / "pool.toml"
    lab_file.write_text(POOL)
    rundir = short_tempdir("xl-pool-")
    cli = [sys.executable, "-m", "xenlab.cli.main"]
    up = subprocess.Popen([*cli, "up", str(lab_file), "--rundir", str(rundir)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        for line in up.stdout:
            if "is up: 2 hosts" in line or up.poll() is not None:
                break
        up.kill()                       # kill -9: nothing of the pool cleans up after it
        up.wait()
        prefix = "xl" + Pool.tag_of(rundir) + "-"
        assert prefix in netns_list()
        down = subprocess.run([*cli, "down", "--rundir", str(rundir)], capture_output=True, text=True,
                              timeout=60)
        assert down.returncode == 0, down
        assert "was not running" in down.stdout and "removed the network namespaces" in down.stdout
        assert prefix not in netns_list()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        shutil.rmtree(rundir, ignore_errors=True)


def xl(rundir, *argv, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenlab.cli.main", "xl", "--rundir", str(rundir),
                           *argv], capture_output=True, text=True, timeout=timeout)


def listed(rundir) -> dict[str, str]:
    """xl list: each domain's state column, by name."""
    out = xl(rundir, "list").stdout.splitlines()[1:]
    return {line.split()[0]: line.split()[4] for line in out if line.split()}


async def web_runs_on_host_a(pool) -> None:
    """After a migration that failed: web is on host a, neither suspended
    nor paused, and its agent answers there with its address."""
    a = pool.host_rundir("a")
    state = listed(a).get("web")
    assert state is not None and "s" not in state and "p" not in state, listed(a)
    web = await RunningLab(pool.labs["a"]).agent("web")
    try:
        stats = await web.InterfaceStats(agent_pb2.StatsRequest())
    finally:
        await web.close()
    assert stats.interfaces[0].ip == "10.0.9.1/24"


async def db_reaches_web(pool) -> None:
    """After web moved to host b: db, there too, gets 3 replies from it."""
    db = await RunningLab(pool.labs["b"]).agent("db")
    try:
        reply = await db.Ping(agent_pb2.PingRequest(dst="10.0.9.1", count=3, interval=0.2, timeout=5))
    finally:
        await db.close()
    assert reply.received == 3, reply


async def test_xl_migrate_moves_a_domain_to_the_other_host_where_it_answers(pool):
    a, b = pool.host_rundir("a"), pool.host_rundir("b")
    moved = xl(a, "migrate", "web", "b")
    assert moved.returncode == 0, moved
    for line in ("migration target: Ready to receive domain.",
                 "migration sender: Giving target permission to start.",
                 "migration target: Domain started successsfully.", "Migration successful."):
        assert line in moved.stderr, moved.stderr
    # Pre-copy: the first round sends every page (8192: 32 MiB) while web runs.
    assert "8192 pages, " in moved.stdout and "rounds (pages sent: 8192, " in moved.stdout, moved.stdout
    assert "downtime" in moved.stdout and "its vifs connected" in moved.stdout, moved.stdout
    assert "web" not in listed(a) and "web" in listed(b)
    await db_reaches_web(pool)


async def test_a_migration_to_a_target_that_is_down_leaves_the_domain_running_on_the_source(pool):
    a = pool.host_rundir("a")
    await pool.labs["b"].kill_service("hypervisor")
    failed = xl(a, "migrate", "web", "b")
    assert failed.returncode == 1 and "migration failed" in failed.stderr, failed
    await web_runs_on_host_a(pool)


async def test_a_target_killed_mid_migration_leaves_the_domain_running_on_the_source(pool):
    """The target's hypervisor is killed while the image is on its way
    (pre-copy takes a few hundred ms for 32 MiB): the migration fails and
    web runs on host a, answering there."""
    a = pool.host_rundir("a")
    migrate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xenlab.cli.main", "xl", "--rundir", str(a), "migrate", "web", "b",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    seen = b""
    while b"Ready to receive domain." not in seen:        # the stream has begun
        line = await asyncio.wait_for(migrate.stderr.readline(), 30)
        assert line, seen
        seen += line
    await asyncio.sleep(0.05)
    await pool.labs["b"].kill_service("hypervisor")
    out, err = await asyncio.wait_for(migrate.communicate(), 60)
    err = seen + err
    assert migrate.returncode == 1 and b"migration failed" in err, (out, err)
    assert b"Transfer complete" not in err, err                 # it was cut off mid-stream
    await web_runs_on_host_a(pool)


async def test_a_second_pool_on_the_same_underlay_is_refused_and_leaves_the_first_alone(pool):
    from xenlab.lab.runner import LabError
    other_rundir = short_tempdir("xl-pool-")
    other = Pool(parse_lab(POOL, "<pool>"), other_rundir, progress=lambda s: None)
    try:
        with pytest.raises(LabError, match="10.231.0.254 is taken on this machine"):
            await other.up(timeout=30)
    finally:
        shutil.rmtree(other_rundir, ignore_errors=True)
    assert all(pool.namespace(h.name) in netns_list() for h in pool.spec.hosts)
    assert "xl" + other.tag + "-" not in netns_list()


async def test_migrating_a_paused_domain_is_refused_by_the_source_and_changes_nothing(pool):
    a, b = pool.host_rundir("a"), pool.host_rundir("b")
    assert xl(a, "pause", "web").returncode == 0
    refused = xl(a, "migrate", "web", "b")
    assert refused.returncode == 1, refused
    assert "migration failed: the source did not send the domain: d1 is paused" in refused.stderr, \
        refused.stderr
    assert "Traceback" not in refused.stderr
    assert listed(a)["web"] == "--p---" and "web" not in listed(b)


class CorruptingTarget:
    """A target toolstack's client, through which the image arrives with one
    byte flipped in its middle: what a bad link or a bad proxy does."""

    def __init__(self, hv, at: int):
        self.domains, self._hv, self._at = hv.domains, hv, at
        self.save = self

    def Restore(self, chunks):
        async def flipped():
            seen = 0
            async for chunk in chunks:
                data = chunk.data
                if seen <= self._at < seen + len(data):
                    i = self._at - seen
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
                    chunk = save_pb2.RestoreChunk(paused=chunk.paused, data=data)
                seen += len(chunk.data)
                yield chunk
        return self._hv.save.Restore(flipped())


async def test_a_corrupt_stream_leaves_the_domain_running_on_the_source(pool):
    a, b = pool.labs["a"], pool.labs["b"]
    web = common_pb2.DomainRef(domid=a.domids["web"])
    with pytest.raises(save_client.MigrationError, match="the target did not take the domain: "
                                                      "record PAGE_DATA at byte .*: bad checksum"):
        await save_client.migrate_domain(a.hv, web, CorruptingTarget(b.hv, at=5_000_000))
    assert "web" not in listed(pool.host_rundir("b"))
    await web_runs_on_host_a(pool)


# -- xl migrate -s: through `xl migrate-receive` on a pipe, as xl reaches another machine --
def receive_command(rundir) -> str:
    """What -s '' runs as the receiver: migrate-receive on host b (over ssh
    it would be `ssh HOST xenlab xl migrate-receive`)."""
    return f"exec {sys.executable} -m xenlab.cli.main xl --rundir {rundir} migrate-receive"


async def test_xl_migrate_through_migrate_receive_moves_the_domain_with_xls_handshake(pool):
    a, b = pool.host_rundir("a"), pool.host_rundir("b")
    moved = xl(a, "migrate", "-s", "", "web", receive_command(b))
    assert moved.returncode == 0, moved
    # the receiver's lines come through its stderr, between the sender's
    lines = [line for line in moved.stderr.splitlines() if line.startswith("migration ")]
    assert lines == ["migration target: Ready to receive domain.",
                     "migration target: Transfer complete, requesting permission to start domain.",
                     "migration sender: Target has acknowledged transfer.",
                     "migration sender: Giving target permission to start.",
                     "migration target: Got permission, starting domain.",
                     "migration target: Domain started successsfully.",
                     "migration sender: Target reports successful startup."], moved.stderr
    assert "rounds (pages sent: 8192, " in moved.stdout and "downtime" in moved.stdout, moved.stdout
    assert "web" not in listed(a) and "web" in listed(b), (listed(a), listed(b))
    assert "p" not in listed(b)["web"], listed(b)         # started: no -p
    await db_reaches_web(pool)


async def test_a_receiver_that_dies_before_it_is_ready_leaves_the_domain_running_on_the_source(pool):
    """It sends xl's banner, swallows a little of the image and exits."""
    a = pool.host_rundir("a")
    fake = "printf 'xl migration receiver ready, send binary domain data.\\n'; head -c 65536 >/dev/null"
    failed = xl(a, "migrate", "-s", "", "web", fake)
    assert failed.returncode == 1, failed
    assert "migration failed:" in failed.stderr and "the domain is resumed here" in failed.stderr, \
        failed.stderr
    assert "Traceback" not in failed.stderr
    await web_runs_on_host_a(pool)


async def test_a_receiver_that_is_not_xenlab_is_refused_at_its_banner(pool):
    a = pool.host_rundir("a")
    failed = xl(a, "migrate", "-s", "", "web", "echo 'bash: xenlab: command not found' >&2; exit 127")
    assert failed.returncode == 1, failed
    assert "ended before the banner" in failed.stderr, failed.stderr
    assert "the migration transport exited with status 127" in failed.stderr, failed.stderr
    assert "bash: xenlab: command not found" in failed.stderr
    await web_runs_on_host_a(pool)


QUIET_AFTER_GO = """\
import asyncio, sys
from xenlab.toolstack import save_client

async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 22)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    out.write(save_client.BANNER); out.flush()
    async for _ in save_client.read_image(reader):
        pass
    out.write(save_client.READY); out.flush()
    await save_client.read_fixed(reader, save_client.GO, "GO message")
    sys.exit(3)                     # told to start, and gone without a word

asyncio.run(main())
"""


async def test_a_receiver_gone_quiet_after_go_leaves_the_domain_paused_on_the_source(pool, tmp_path):
    """Past "go" the domain may run on the target: as xl, the sender neither
    resumes nor destroys it, says so, and leaves it (paused) for the user."""
    a, b = pool.host_rundir("a"), pool.host_rundir("b")
    script = tmp_path / "quiet.py"
    script.write_text(QUIET_AFTER_GO)
    failed = xl(a, "migrate", "-s", "", "web", f"exec {sys.executable} {script}")
    assert failed.returncode == 1, failed
    assert "** Migration failed during final handshake **" in failed.stderr, failed.stderr
    assert "left paused here" in failed.stderr and "unpause at most one" in failed.stderr
    assert listed(a)["web"] == "--p---" and "web" not in listed(b)
    assert xl(a, "unpause", "web").returncode == 0
    await web_runs_on_host_a(pool)


CACHE_CFG = """\
name = "cache"
memory = 32
vif = ["mac=00:16:3e:0f:00:03,ip=10.0.9.3/24"]
extra = "ip=10.0.9.3:::255.255.255.0:cache:eth0:off"
"""
PINGS, PING_INTERVAL = 400, 0.01


def gaps(seqs, count: int) -> list[list[int]]:
    """The runs of sequence numbers 1..count with no reply."""
    missing = sorted(set(range(1, count + 1)) - set(seqs))
    runs: list[list[int]] = []
    for seq in missing:
        if runs and seq == runs[-1][-1] + 1:
            runs[-1].append(seq)
        else:
            runs.append([seq])
    return runs


async def test_pings_to_a_migrating_domain_stop_once_for_about_the_outage_xl_migrate_prints(
        pool, tmp_path):
    """cache (web's own host, a) and db (the other host, b) ping web every
    10 ms while it moves from a to b: each loses one run of replies, and
    that run is no longer than the time to its vifs connected on the target
    that `xl migrate` prints (the downtime, then the vif's handshake and
    hotplug again), give or take a few intervals."""
    a = pool.host_rundir("a")
    cfg = tmp_path / "cache.cfg"
    cfg.write_text(CACHE_CFG)
    created = xl(a, "create", str(cfg))
    assert created.returncode == 0, created
    hv_a = pool.labs["a"].hv
    cache_id = (await hv_a.domains.Info(common_pb2.DomainRef(name="cache"))).domid
    assert await save_client.vifs_connected(hv_a, cache_id, timeout=30) is not None

    async def agent_up() -> bool:
        try:
            await (await agent_for(hv_a, cache_id)).close()
        except NoAgentError:
            return False
        return True
    await eventually(agent_up, "cache's guest agent", timeout=30)
    async with await agent_for(hv_a, cache_id) as cache, \
            await RunningLab(pool.labs["b"]).agent("db") as db:
        for agent in (cache, db):      # ARP resolved before the clock starts
            warm = await agent.Ping(agent_pb2.PingRequest(dst="10.0.9.1", count=1, timeout=5))
            assert warm.received == 1, warm
        request = agent_pb2.PingRequest(dst="10.0.9.1", count=PINGS, interval=PING_INTERVAL, timeout=3)
        pings = [asyncio.ensure_future(agent.Ping(request)) for agent in (cache, db)]
        await asyncio.sleep(0.8)
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "xenlab.cli.main", "xl", "--rundir", str(a), "migrate", "web", "b",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(migrate.communicate(), 60)
        replies = await asyncio.gather(*pings)
    assert migrate.returncode == 0, (out, err)
    outage = float(re.search(rb"its vifs connected ([0-9.]+) s after its suspend", out).group(1))
    for name, reply in zip(("cache", "db"), replies):
        runs = gaps(reply.seq, PINGS)
        assert len(runs) == 1, (name, [(r[0], r[-1]) for r in runs])
        lost = len(runs[0]) * PING_INTERVAL
        print(f"{name}: lost {len(runs[0])} replies ({lost:.2f} s), xl migrate: vifs connected {outage:.3f} s")
        assert lost <= outage + 10 * PING_INTERVAL, (name, lost, outage)


@pytest.mark.parametrize("sent, says", [
    (b"", "the migration stream ended inside the image (0 of 40 bytes"),
    (b"\x7f" * 4000, "not an image: record 0x7f7f7f7f claims 2139062143 bytes"),
    # framed as an image (an END record after 40 bytes), but not one
    (bytes(40) + struct.pack("<IIII", 0, 32, 0, 0) + bytes(32), "not a xenlab save image (bad magic)"),
])
async def test_migrate_receive_fed_no_image_says_why_and_leaves_no_domain(pool, sent, says):
    """A hostile or broken sender: one line, exit status 1, nothing built."""
    b = pool.host_rundir("b")
    before = listed(b)
    proc = subprocess.run([sys.executable, "-m", "xenlab.cli.main", "xl", "--rundir", str(b),
                           "migrate-receive"], input=sent, capture_output=True, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and says in err, err
    assert "Traceback" not in err
    assert proc.stdout == b"xl migration receiver ready, send binary domain data.\n"
    assert listed(b) == before


async def test_a_host_that_is_not_in_the_pool_goes_to_ssh_as_xl_and_the_failure_names_the_pool(pool):
    a = pool.host_rundir("a")
    env = dict(os.environ, PATH=f"{pool.rundir}/nossh:{os.environ['PATH']}")
    shim = pool.rundir / "nossh"
    shim.mkdir(exist_ok=True)
    (shim / "ssh").write_text("#!/bin/sh\necho \"ssh: Could not resolve hostname $1\" >&2\nexit 255\n")
    (shim / "ssh").chmod(0o755)
    failed = subprocess.run([sys.executable, "-m", "xenlab.cli.main", "xl", "--rundir", str(a),
                             "migrate", "web", "c"], capture_output=True, text=True, timeout=60, env=env)
    assert failed.returncode == 1, failed
    assert "ssh: Could not resolve hostname c" in failed.stderr
    assert "(command run was: exec ssh c xenlab xl migrate-receive )" in failed.stderr
    assert "(c is not a host of this pool: b)" in failed.stderr, failed.stderr
    await web_runs_on_host_a(pool)
