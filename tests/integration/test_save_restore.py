"""xl save and xl restore in a running lab (the demo lab: web, db, cache
on xenbr0), through `xenlab xl` as a user runs it.

A save -> destroy -> restore round trip in the middle of a ping from db to
web: replies stop while web is suspended and come back once it is
restored, with the same name, MAC and IP under a new domid; the restored
web does not ARP for db (its ARP cache came back from its suspend record);
the interval lost is printed, never asserted on. A corrupt or truncated
image is refused in one line and creates nothing; -c leaves the domain
running; an unknown domain is one line.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from ipaddress import IPv4Address

import grpc
import pytest

from xenlab.agent_client import NoAgentError, agent_for
from xenlab.net.arp import ArpPacket
from xenlab.net.ethernet import ETH_P_ARP, EthernetFrame
from xenlab.proto import agent_pb2, common_pb2, save_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

INTERVAL = 0.1


def xl(lab, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenlab.cli.main", "xl", *args,
                           "--rundir", str(lab.rundir)],
                          capture_output=True, text=True, timeout=timeout)


async def agent_when_up(lab, name: str):
    """The agent of ``name`` as it is now (a restored domain has a new id),
    once the resumed kernel has it up."""
    listed = [line.split() for line in xl(lab, "list").stdout.splitlines()[1:]]
    domid = next(int(cols[1]) for cols in listed if cols[0] == name)
    for _ in range(300):
        try:
            return await agent_for(lab.hv, domid)
        except NoAgentError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"{name}'s agent never came up")


def cache_state(lab) -> str:
    out = xl(lab, "list", "cache")
    return out.stdout.splitlines()[1].split()[4]


def mac_of(lab, name: str) -> str:
    out = xl(lab, "network-list", name)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[1].split()[2]


async def domains_and_nodes(lab) -> tuple[str, list[str], str]:
    """What a restore that fails must leave as it was: xl list's names and
    ids, the domains' xenstore directories, the host's free memory."""
    listed = xl(lab, "list")
    names = [" ".join(line.split()[:2]) for line in listed.stdout.splitlines()[1:]]
    ls = subprocess.run([sys.executable, "-m", "xenlab.cli.main", "xenstore", "ls", "/local/domain",
                         "--rundir", str(lab.rundir)], capture_output=True, text=True, timeout=60)
    tops = [line for line in ls.stdout.splitlines() if not line.startswith(" ")]
    info = xl(lab, "info").stdout
    free = next(line for line in info.splitlines() if line.startswith("free_memory"))
    return names, tops, free


async def test_save_destroy_restore_in_the_middle_of_a_ping(demo_lab, tmp_path):
    lab = demo_lab
    image = tmp_path / "web.save"
    web_id, web_mac = lab.domid("web"), mac_of(lab, "web")
    db = await lab.agent("db")
    warm = await db.Ping(agent_pb2.PingRequest(dst="10.0.0.1", count=1, timeout=5))
    assert warm.received == 1
    # Everything db receives while web goes and comes back.
    capture = db.Capture(agent_pb2.CaptureRequest(interface="eth0", direction="rx"))
    frames: list[bytes] = []

    async def collect():
        async for frame in capture:
            frames.append(frame.data)

    collector = asyncio.create_task(collect())
    count = 300
    ping = asyncio.ensure_future(db.Ping(agent_pb2.PingRequest(
        dst="10.0.0.1", count=count, interval=INTERVAL, timeout=5)))
    await asyncio.sleep(1.5)
    started = time.monotonic()
    saved = await asyncio.to_thread(xl, lab, "save", "web", str(image))
    assert saved.returncode == 0, saved.stderr
    assert saved.stderr.splitlines()[:2] == [
        f"Saving to {image} new xl format (xenlab save image v1)",
        f"xc: info: Saving domain {web_id}, type x86 PV"]
    assert image.stat().st_size > 32 * 1024 * 1024 // 2       # every populated page
    assert "web" not in xl(lab, "list").stdout                   # destroyed, as xl save does
    restored = await asyncio.to_thread(xl, lab, "restore", str(image))
    assert restored.returncode == 0, restored.stderr
    back = time.monotonic()
    assert restored.stderr.splitlines()[-1] == "xc: info: Restore successful"
    reply = await ping
    capture.cancel()
    await asyncio.gather(collector, return_exceptions=True)

    listed = [line.split() for line in xl(lab, "list").stdout.splitlines()[1:]]
    new_id = next(int(cols[1]) for cols in listed if cols[0] == "web")
    assert new_id != web_id
    assert mac_of(lab, "web") == web_mac

    answered = set(reply.seq)
    lost = [seq for seq in range(1, count + 1) if seq not in answered]
    print(f"\nsave+restore took {back - started:.2f}s; {len(lost)} of {count} replies lost "
          f"(seq {lost[0] if lost else '-'}..{lost[-1] if lost else '-'}, about "
          f"{len(lost) * INTERVAL:.1f}s of pings at {INTERVAL}s)")
    assert lost, "no reply was lost: web was never suspended?"
    # Lost only while web was away: one run of sequence numbers, and
    # answered again after it, to the end.
    assert lost == list(range(lost[0], lost[-1] + 1)), f"replies lost outside one interval: {lost}"
    assert lost[-1] < count - 5, "the ping ended before web came back"

    # web came back knowing db's MAC: it never asked for it.
    web_mac_bytes = bytes.fromhex(web_mac.replace(":", ""))
    asked = []
    for raw in frames:
        eth = EthernetFrame.parse(raw)
        if eth.ethertype != ETH_P_ARP or eth.src != web_mac_bytes:
            continue
        arp = ArpPacket.parse(eth.payload)
        if arp.op == 1 and not arp.is_gratuitous and arp.tpa == IPv4Address("10.0.0.2"):
            asked.append(arp)
    assert frames and not asked, f"web ARPed for db after its restore: {asked}"

    # And it answers a new ping, from its own stack, at the same address.
    web = await agent_when_up(lab, "web")
    again = await web.Ping(agent_pb2.PingRequest(dst="10.0.0.2", count=2, interval=0.2, timeout=5))
    assert again.received == 2 and again.src == "10.0.0.1"


async def test_a_corrupt_or_truncated_image_creates_nothing(demo_lab, tmp_path):
    lab = demo_lab
    image = tmp_path / "cache.save"
    checkpoint = await asyncio.to_thread(xl, lab, "save", "-c", "cache", str(image))
    assert checkpoint.returncode == 0, checkpoint.stderr
    # -c: cache runs on, and answers.
    cache = await agent_when_up(lab, "cache")
    alive = await cache.Ping(agent_pb2.PingRequest(dst="10.0.0.1", count=1, timeout=5))
    assert alive.received == 1
    # A save whose client goes away before committing the image leaves the
    # domain running, as libxl resumes a domain whose save failed.
    controls = asyncio.Queue()
    controls.put_nowait(save_pb2.SaveControl(domain=common_pb2.DomainRef(name="cache")))

    async def requests():
        while (message := await controls.get()) is not None:
            yield message

    call = lab.hv.save.Save(requests())
    with pytest.raises(grpc.aio.AioRpcError, match="not committed: the domain is resumed"):
        async for chunk in call:
            if chunk.image_done:
                controls.put_nowait(None)           # gone without a commit
    assert cache_state(lab) in ("-b----", "r-----")
    alive = await cache.Ping(agent_pb2.PingRequest(dst="10.0.0.1", count=1, timeout=5))
    assert alive.received == 1
    # -p: saved, then left paused; it runs once unpaused.
    paused = await asyncio.to_thread(xl, lab, "save", "-p", "cache", str(tmp_path / "p.save"))
    assert paused.returncode == 0, paused.stderr
    assert cache_state(lab) == "--p---"
    assert xl(lab, "unpause", "cache").returncode == 0
    alive = await cache.Ping(agent_pb2.PingRequest(dst="10.0.0.1", count=1, timeout=5))
    assert alive.received == 1

    xl(lab, "destroy", "cache")
    before = await domains_and_nodes(lab)
    data = image.read_bytes()
    bad = {
        "flipped": data[:5000] + bytes([data[5000] ^ 0x10]) + data[5001:],
        "truncated": data[:len(data) // 2],
        "no-end": data[:-48],
        "bad-magic": b"\0" * 8 + data[8:],
        "empty": b"",
    }
    for name, content in bad.items():
        path = tmp_path / f"{name}.save"
        path.write_bytes(content)
        out = await asyncio.to_thread(xl, lab, "restore", str(path))
        assert out.returncode == 1, (name, out.stderr)
        error = out.stderr.splitlines()[-1]
        assert error.startswith("xenlab xl: restore: "), (name, out.stderr)
        print(f"{name}: {error}")
        assert await domains_and_nodes(lab) == before, name
    # The good image does restore.
    ok = await asyncio.to_thread(xl, lab, "restore", str(image))
    assert ok.returncode == 0, ok.stderr
    cache = await agent_when_up(lab, "cache")
    alive = await cache.Ping(agent_pb2.PingRequest(dst="10.0.0.1", count=1, timeout=5))
    assert alive.received == 1


async def test_unknown_domain_help_and_refusals(demo_lab, tmp_path):
    lab = demo_lab
    out = xl(lab, "save", "nosuch", str(tmp_path / "x.save"))
    assert out.returncode == 1
    assert out.stderr == "xenlab xl: save: no domain named 'nosuch' (NOT_FOUND)\n"
    assert not list(tmp_path.iterdir())
    out = xl(lab, "restore", str(tmp_path / "missing.save"))
    assert out.returncode == 1 and out.stderr.splitlines()[-1].startswith("xenlab xl: restore: cannot read")
    out = xl(lab, "save", "-D", "web", str(tmp_path / "x.save"))
    assert out.returncode == 1 and "-D is not emulated" in out.stderr
    for command in ("save", "restore"):
        helped = xl(lab, command, "--help")
        assert helped.returncode == 0 and "CHECKPOINTFILE" in helped.stdout
    assert "web" in xl(lab, "list").stdout
