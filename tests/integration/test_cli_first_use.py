"""What a new user meets first, from the command line against the demo lab
(issue 19): inject that says where its frames went, capture and ping that
say what they wait for and give up, ping's unreachable lines."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from xenlab.net.capture import read_pcap

pytestmark = pytest.mark.integration


def xenlab(lab, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenlab.cli.main", *args, "--rundir", str(lab.rundir)],
                          capture_output=True, text=True, timeout=timeout)


async def test_compose_md_inject_without_src_is_sent_from_the_domains_own_mac_and_passes_netback(demo_lab):
    # docs/COMPOSE.md's example: it used to send from 00:16:3e:7f:ff:fe, which
    # netback dropped as spoofed, and report "3 accepted" all the same.
    result = xenlab(demo_lab, "inject", "web:eth0", "--count", "3", "--size", "64",
                    "--dst", "00:16:3e:00:00:02")
    assert result.returncode == 0, result.stderr
    web = demo_lab.domid("web")
    assert result.stdout.splitlines() == [
        "3 frames of 64 bytes from 00:16:3e:00:00:01 (web:eth0's own MAC) to 00:16:3e:00:00:02",
        "3 frames: 3 accepted, 0 dropped",
        f"vif{web}.0 (netback in Domain-0): 3 passed on, 0 dropped",
    ]


async def test_inject_whose_frames_netback_drops_as_spoofed_says_so_and_exits_1(demo_lab):
    result = xenlab(demo_lab, "inject", "web:eth0", "--count", "3", "--src", "00:16:3e:7f:ff:fe",
                    "--dst", "00:16:3e:00:00:02")
    web = demo_lab.domid("web")
    assert result.returncode == 1
    assert f"vif{web}.0 (netback in Domain-0): 0 passed on, 3 dropped (spoofed_mac=3)" in result.stdout
    assert f"none of the 3 frames got past vif{web}.0 (netback in Domain-0): dropped spoofed_mac=3" \
        in result.stderr
    assert "leave out --src" in result.stderr


async def test_inject_into_a_bridge_port_says_where_the_bridge_sent_them(demo_lab):
    db, cache = (f"vif{demo_lab.domid(n)}.0" for n in ("db", "cache"))
    web = f"vif{demo_lab.domid('web')}.0"
    flooded = xenlab(demo_lab, "inject", f"xenbr0:{web}", "--count", "5")
    assert flooded.returncode == 0, flooded.stderr
    assert "from 00:16:3e:00:00:01 (port" in flooded.stdout
    assert f"xenbr0 (the bridge, frames in at {web}): 5 passed on, 0 dropped; out of {db} (5), {cache} (5)" \
        in flooded.stdout
    # To the station behind the port they came in on: the bridge drops them all.
    back = xenlab(demo_lab, "inject", f"xenbr0:{web}", "--count", "2", "--dst", "00:16:3e:00:00:01")
    assert back.returncode == 1
    assert "0 passed on, 2 dropped (same_port=2)" in back.stdout


async def test_inject_out_of_a_vif_reaches_the_guests_netfront(demo_lab):
    web = demo_lab.domid("web")
    result = xenlab(demo_lab, "inject", f"vif{web}.0", "--count", "2")
    assert result.returncode == 0, result.stderr
    assert "from fe:ff:ff:ff:ff:ff (a vif's own MAC" in result.stdout
    assert "eth0 of web (netfront): 2 passed on, 0 dropped" in result.stdout


async def test_capture_with_a_count_gives_up_after_its_timeout_and_says_what_it_waited_for(demo_lab, tmp_path):
    pcap = tmp_path / "quiet.pcap"
    result = xenlab(demo_lab, "capture", "web:eth0", "-w", str(pcap), "-c", "10",
                    "--direction", "rx", "--timeout", "1")
    assert result.returncode == 1
    assert f"capturing on web:eth0 into {pcap}: waiting for 10 received frames, giving up after 1 s" \
        in result.stderr
    assert "timed out after 1 s: 0 frames captured of the 10 waited for at web:eth0" in result.stderr
    assert read_pcap(pcap.read_bytes()) == []


async def test_capture_stopped_with_ctrl_c_keeps_its_frames_and_exits_0(demo_lab, tmp_path):
    pcap = tmp_path / "db.pcap"
    db = f"vif{demo_lab.domid('db')}.0"
    capture = subprocess.Popen([sys.executable, "-m", "xenlab.cli.main", "capture", f"xenbr0:{db}",
                                "-w", str(pcap), "--rundir", str(demo_lab.rundir)],
                               stderr=subprocess.PIPE, text=True)
    try:
        assert "waiting for every frame" in capture.stderr.readline()
        ping = xenlab(demo_lab, "ping", "web", "10.0.0.2", "-c", "2", "-i", "0.1")
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        capture.send_signal(signal.SIGINT)
        rest = capture.communicate(timeout=30)[1]
    assert capture.returncode == 0, rest
    frames = read_pcap(pcap.read_bytes())
    assert len(frames) >= 4 and f"{len(frames)} frames captured" in rest


async def test_ping_to_an_address_nobody_has_says_unreachable_from_its_own_address(demo_lab):
    result = xenlab(demo_lab, "ping", "web", "10.0.0.99", "-c", "2", "-i", "0.1", "-W", "1")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[:3] == ["PING 10.0.0.99 (10.0.0.99) 56(84) bytes of data.",
                         "From 10.0.0.1 icmp_seq=1 Destination Host Unreachable",
                         "From 10.0.0.1 icmp_seq=2 Destination Host Unreachable"]
    assert "2 packets transmitted, 0 received, +2 errors, 100% packet loss" in lines
