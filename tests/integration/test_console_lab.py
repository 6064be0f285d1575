"""The PV console in a running lab, through `xenlab xl`, as a Xen admin
uses it: `xl console` answered by the guest's shell (its address, its ARP
cache, a ping to a peer), the same output in the console log, Ctrl-] on a
terminal detaching and giving the terminal back as it was, the console
nodes read back with `xenlab xenstore read`, and `xl sysrq` / `xl trigger`
reaching the guest."""
from __future__ import annotations

import asyncio
import os
import pty
import select
import sys
import termios
import time

import pytest

from xenlab.testing import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def env(lab) -> dict:
    return {**os.environ, "XENLAB_RUNDIR": str(lab.rundir)}


async def xenlab(lab, *argv: str, stdin: bytes | None = None, timeout: float = 90.0):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xenlab.cli.main", *argv, env=env(lab),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def console_log(lab, name: str) -> str:
    path = next((lab.rundir / "logs").glob(f"d{lab.domid(name)}-{name}.console"))
    return path.read_text(errors="replace")


async def test_xl_console_reaches_the_guests_shell(demo_lab):
    rc, out, err = await xenlab(demo_lab, "xl", "console", "web",
                                stdin=b"ip addr\nping 10.0.0.2 -c 2\nip neigh\nuptime\nbogus\n"
                                      b"ping 10.0.0.99 -c 1\n")
    assert rc == 0, err
    text = out.replace("\r\n", "\n")
    assert "root@web:~# " in text
    assert "ip addr\n1: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500" in text    # echo, then output
    assert "    inet 10.0.0.1/24 brd 10.0.0.255 scope global eth0\n" in text
    assert "    link/ether 00:16:3e:00:00:01 brd ff:ff:ff:ff:ff:ff\n" in text
    assert "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n" in text
    assert "2 packets transmitted, 2 received, 0% packet loss" in text
    assert "10.0.0.2 dev eth0 lladdr 00:16:3e:00:00:02 REACHABLE\n" in text
    assert " up " in text.split("root@web:~# uptime\n", 1)[1].split("\n", 1)[0]
    assert "-sh: bogus: command not found\n" in text
    assert "From 10.0.0.1 icmp_seq=1 Destination Host Unreachable\n" in text     # no one has .99
    assert "1 packets transmitted, 0 received, +1 errors, 100% packet loss" in text
    assert text.rstrip().endswith("root@web:~#")
    # What the console showed is in the domain's console log too.
    log = console_log(demo_lab, "web").replace("\r\n", "\n")
    for line in ("    inet 10.0.0.1/24 brd 10.0.0.255 scope global eth0\n",
                 "2 packets transmitted, 2 received", "-sh: bogus: command not found\n"):
        assert line in log


async def test_the_console_and_store_nodes_read_back_as_libxl_writes_them(demo_lab):
    d = demo_lab.domid("db")
    expect = {f"/local/domain/{d}/console/backend": f"/local/domain/0/backend/console/{d}/0",
              f"/local/domain/{d}/console/ring-ref": "14",
              f"/local/domain/{d}/console/limit": "1048576",
              f"/local/domain/{d}/console/type": "xenconsoled",
              f"/local/domain/{d}/store/ring-ref": "15",
              f"/local/domain/0/backend/console/{d}/0/frontend": f"/local/domain/{d}/console",
              f"/local/domain/0/backend/console/{d}/0/protocol": "vt100"}
    for path, value in expect.items():
        rc, out, err = await xenlab(demo_lab, "xenstore", "read", path)
        assert (rc, out.strip()) == (0, value), (path, err)
    for path in (f"/local/domain/{d}/console/port", f"/local/domain/{d}/store/port"):
        rc, out, err = await xenlab(demo_lab, "xenstore", "read", path)
        assert rc == 0 and int(out) > 0, (path, err)
    rc, out, err = await xenlab(demo_lab, "xenstore", "read", f"/local/domain/{d}/console/tty")
    assert rc == 0 and out.startswith("/dev/pts/"), err          # xenconsoled's pty


def _read_until(fd: int, want: bytes, timeout: float = 60.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want!r} on the terminal; it showed {got[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    return got


CHILD = """
import sys, termios
from xenlab.cli.main import main
before = termios.tcgetattr(0)
rc = main(["xl", "console", "web"])
after = termios.tcgetattr(0)
print("TERMINAL", "RESTORED" if after == before else "CHANGED", "RC", rc, flush=True)
"""


def _attach_on_a_terminal(lab) -> tuple[bytes, list]:
    pid, master = pty.fork()
    if pid == 0:                                    # pragma: no cover - the child
        os.execve(sys.executable, [sys.executable, "-c", CHILD], env(lab))
    try:
        seen = _read_until(master, b"root@web:~# ")
        os.write(master, b"uptime\r")
        seen += _read_until(master, b" up ")
        raw = termios.tcgetattr(master)             # the terminal while attached
        os.write(master, b"ping 10.0.0.2 -c 1000\r")
        seen += _read_until(master, b"icmp_seq=2 ")    # replies shown as they come
        os.write(master, b"\x03")                   # Ctrl-C stops it
        seen += _read_until(master, b"^C\r\nroot@web:~# ")
        os.write(master, b"\x1d")                   # Ctrl-]
        seen += _read_until(master, b"RC 0")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0
    return seen, raw


async def test_ctrl_bracket_detaches_and_gives_the_terminal_back(demo_lab):
    seen, raw = await asyncio.to_thread(_attach_on_a_terminal, demo_lab)
    lflag = raw[3]
    assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG)     # raw while attached
    assert b"TERMINAL RESTORED RC 0" in seen


async def test_sysrq_and_trigger_reach_the_guest(demo_lab):
    web = demo_lab.domid("web")
    rc, _, err = await xenlab(demo_lab, "xl", "sysrq", "web", "m")
    assert rc == 0, err
    await eventually(lambda: "sysrq: Show Memory" in console_log(demo_lab, "web"), "Show Memory")
    await eventually(lambda: "pages RAM" in console_log(demo_lab, "web"), "show_mem's lines")
    rc, out, _ = await xenlab(demo_lab, "xenstore", "read", f"/local/domain/{web}/control/sysrq")
    assert (rc, out.strip()) == (0, "")                                    # the guest cleared it
    rc, _, err = await xenlab(demo_lab, "xl", "sysrq", "web", "h")
    assert rc == 0, err
    await eventually(lambda: "sysrq: HELP : reboot(b) crash(c)" in console_log(demo_lab, "web"),
                     "the help line")
    rc, _, err = await xenlab(demo_lab, "xl", "trigger", "web", "nmi")
    assert rc == 0, err
    await eventually(lambda: "Uhhuh. NMI received for unknown reason 00 on CPU 0."
                     in console_log(demo_lab, "web"), "the guest's NMI handler")
    rc, _, err = await xenlab(demo_lab, "xl", "trigger", "web", "power")
    assert rc == 1 and "Send trigger 'power' failed: Invalid argument" in err
    assert len(err.splitlines()) == 1
    rc, _, err = await xenlab(demo_lab, "xl", "trigger", "nosuch", "nmi")
    assert rc == 1 and len(err.splitlines()) == 1 and "nosuch" in err
    # o: powered off (on_poweroff=destroy: it is gone); c: crashed (on_crash=destroy).
    db, cache = demo_lab.domid("db"), demo_lab.domid("cache")
    rc, _, err = await xenlab(demo_lab, "xl", "sysrq", "db", "o")
    assert rc == 0, err
    rc, _, err = await xenlab(demo_lab, "xl", "sysrq", "cache", "c")
    assert rc == 0, err

    async def listed() -> str:
        return (await xenlab(demo_lab, "xl", "list"))[1]
    await eventually(lambda: _gone(listed, "db", "cache"), "db and cache gone", timeout=60)
    log = (demo_lab.rundir / "logs" / "hypervisor.log").read_text()
    assert f"d{db} (db) shut down: poweroff" in log
    assert f"d{cache} (cache) shut down: crash" in log
    assert "Kernel panic - not syncing: sysrq triggered crash" in (
        demo_lab.rundir / "logs" / f"d{cache}-cache.console").read_text()


async def _gone(listed, *names: str) -> bool:
    rows = [line.split()[0] for line in (await listed()).splitlines()[1:]]
    return not set(names) & set(rows)
