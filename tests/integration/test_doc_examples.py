"""Every `xenlab ...` command line of README.md and docs/*.md, run exactly as
written (through bash, comments and all) against the demo lab, so that a
documented example can no longer deliver nothing and report success
(issue 19: docs/COMPOSE.md's own inject did). Each must exit 0; a ping,
inject or capture must also have delivered frames. The lines that cannot
run here are listed below with the reason."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from markdown_examples import ROOT, Command, block_after, xenlab_commands
from xenlab.net.capture import PcapWriter, read_pcap
from xenlab.net.ethernet import parse_mac
from xenlab.testing import short_tempdir

pytestmark = pytest.mark.integration

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SYNOPSIS = {line for line in block_after(ROOT / "README.md", "## Command line").text.splitlines()
            if line.startswith("xenlab ")}
SKIPPED = {
    **{line: "the command line synopsis: placeholders, not a command" for line in SYNOPSIS},
    "xenlab up                      # the built-in demo lab; or: xenlab up mylab.toml":
        "stays in the foreground until Ctrl-C: the test starts the same demo lab with "
        "`xenlab up --detach`",
    "xenlab web                          # --listen HOST:PORT (127.0.0.1:8090), --token T":
        "serves until Ctrl-C: tests/integration/test_web_view.py serves the same page to a browser",
    "xenlab xl create my-domain.cfg        # a new domain container (the hypervisor's default "
    "launcher is docker)": "my-domain.cfg is the reader's own file, not in the repository",
    "xenlab events --broker mqtt://127.0.0.1:1883":
        "the compose lab's broker, which only Docker publishes there (tests/e2e)",
    "xenlab events --broker mqtt://mqtt.example.org:1883   # another broker":
        "an example host name",
    "xenlab hypervisor     --mqtt mqtt://127.0.0.1:1883 [--mqtt-prefix xenlab] [--host-name h1] "
    "[--mqtt-interval 5]": "a synopsis of the services' options, with placeholders",
    "xenlab bridge-service --mqtt mqtt://127.0.0.1:1883 --host-name h1":
        "a service in the foreground, and a broker on port 1883 that only the compose lab has",
    "xenlab dom0           --mqtt mqtt://127.0.0.1:1883 --host-name h1":
        "a service in the foreground, and a broker on port 1883 that only the compose lab has",
    "xenlab bridge vlan add vid 30 dev vif4.0":
        "the trunk port of docs/BRIDGE.md's VLAN lab, not the demo lab's "
        "(tests/integration/test_bridge_vlan_lab.py runs that lab)",
    "xenlab bridge vlan del vid 10-20 dev vif4.0":
        "the trunk port of docs/BRIDGE.md's VLAN lab, not the demo lab's "
        "(tests/integration/test_bridge_vlan_lab.py runs that lab)",
    "xenlab xl --rundir hostA list":
        "host a of docs/SWARM.md's stack, reached from a manager node: tests/e2e/test_swarm.py "
        "runs `xl list` through the published port the same way",
    'xenlab xl --rundir hostA migrate -s "ssh NODE_B docker exec -i" web $HVB':
        "between two nodes of docs/SWARM.md's stack: tests/e2e/test_swarm.py migrates web the "
        "same way on one node (-s \"docker exec -i\")",
    "xenlab bridge fdb add 00:16:3e:00:00:09 dev vif2.0 master static":
        "shows the error of adding an entry that exists: it needs the entry the examples "
        "above add and then delete (tests/integration/test_bridge_cli.py covers it)",
}
ROUTED = ("README's routed lab, not the demo lab: tests/integration/test_routed_lab.py starts "
          "that lab and runs these lines as written")
SKIPPED.update({
    "xenlab up routed.toml --detach": ROUTED,
    "xenlab ping web db -c 3                         # PING db (10.0.2.2): across the router, TTL 63 "
    "on arrival": ROUTED,
    "xenlab ping web router -c 1                     # PING router (10.0.1.1): its address on web's "
    "subnet": ROUTED,
    "xenlab ping web db -c 1 -t 1                    # From 10.0.1.1 icmp_seq=1 Time to live "
    "exceeded": ROUTED,
    "xenlab ping web 192.0.2.7 -c 1                  # From 10.0.1.1 icmp_seq=1 Destination Net "
    "Unreachable": ROUTED,
})
SAVED = ("restores web under a new domid, and the examples after it name web's vif1.0: "
         "tests/integration/test_save_restore.py runs the same round trip on the demo lab")
SKIPPED.update({
    "xenlab xl save web /tmp/web.save": SAVED,
    "xenlab xl restore /tmp/web.save": SAVED,
})
# Lines the docs show failing, with the exit status and output they show.
FAILING = {
    "xenlab bridge fdb add 00:16:3e:00:00:09 dev nope master": (255, 'Cannot find device "nope"'),
    "xenlab bridge link set dev vif1.0 learning maybe":
        (234, 'Error: argument of "learning" must be one of "off", "on", not "maybe"'),
    "xenlab inject web:eth0 --count 3 --src 00:16:3e:7f:ff:fe":
        (1, "vif1.0 (netback in Domain-0): 0 passed on, 3 dropped (spoofed_mac=3)"),
    "xenlab ping web db -c 2 -W 1": (1, "2 packets transmitted, 0 received"),
    "xenlab ip link show nope0": (1, 'Device "nope0" does not exist.'),
}
WEB, DB = "00:16:3e:00:00:01", "00:16:3e:00:00:02"


def all_commands() -> list[Command]:
    return [c for path in DOCS for c in xenlab_commands(path)]


def test_every_skipped_or_failing_line_is_still_in_the_docs():
    texts = {c.text for c in all_commands()}
    assert set(SKIPPED) | set(FAILING) <= texts, (set(SKIPPED) | set(FAILING)) - texts


class Lab:
    """The demo lab in its own rundir, and `xenlab` on the PATH of bash."""

    def __init__(self, tmp_path: Path):
        self.rundir = short_tempdir("xl-doc-")
        self.cwd = tmp_path
        shims = tmp_path / "bin"
        shims.mkdir()
        (shims / "xenlab").write_text(f"#!/bin/sh\nexec {sys.executable} -m xenlab.cli.main \"$@\"\n")
        (shims / "xenlab").chmod(0o755)
        self.env = {**os.environ, "XENLAB_RUNDIR": str(self.rundir),
                    "PATH": f"{shims}:{os.environ['PATH']}"}

    def run(self, line: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", line], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, command: Command) -> "Background":
        return Background(self, command)


class Background:
    """A command that runs until Ctrl-C (or until its count), its output in files."""

    def __init__(self, lab: Lab, command: Command):
        self.command = command
        n = len(list(lab.cwd.glob("bg-*.out")))
        self.out, self.err = lab.cwd / f"bg-{n}.out", lab.cwd / f"bg-{n}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            # exec: the signal reaches xenlab itself, as a Ctrl-C would.
            self.proc = subprocess.Popen(["bash", "-c", f"exec {command.text}"], cwd=lab.cwd, env=lab.env,
                                         stdout=out, stderr=err)

    def wait_for(self, what, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not what(self):
            assert self.proc.poll() is None, f"{self.command.where} exited: {self.err.read_text()}"
            assert time.monotonic() < deadline, f"{self.command.where}: {self.err.read_text()}"
            time.sleep(0.1)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _args(command: Command) -> list[str]:
    return shlex.split(command.text, comments=True)


def _frames(lab: Lab, command: Command) -> int:
    args = _args(command)
    path = lab.cwd / args[args.index("-w") + 1]
    return len(read_pcap(path.read_bytes())) if path.exists() and path.stat().st_size else 0


def _check_foreground(lab: Lab, command: Command) -> None:
    result = lab.run(command.text)
    said = f"{command.where}: {command.text}\n{result.stdout}\n{result.stderr}"
    if command.text in FAILING:
        status, shown = FAILING[command.text]
        assert result.returncode == status and shown in result.stdout + result.stderr, said
        return
    assert result.returncode == 0, said
    verb = _args(command)[1]
    if verb == "ping":
        assert " 0% packet loss" in result.stdout, said
    elif verb == "inject":
        passed = re.search(r": (\d+) passed on", result.stdout)
        assert passed and int(passed.group(1)) > 0, said
    elif verb == "events":
        count = int(_args(command)[_args(command).index("-n") + 1])
        assert len(result.stdout.splitlines()) == count, said


def _write_frames_pcap(path: Path) -> None:
    """The frames.pcap README's `inject web:eth0 -r frames.pcap` reads: from web to db."""
    with open(path, "wb") as out:
        writer = PcapWriter(out)
        for i in range(5):
            writer.write(parse_mac(DB) + parse_mac(WEB) + b"\x88\xb5" + bytes([i]) * 50, 0.0)


def _watches_changes(args: list[str]) -> bool:
    """`xenlab bridge monitor ...`: prints changes as they happen, until Ctrl-C."""
    return args[1] == "bridge" and "monitor" in args


@pytest.mark.timeout(900)      # a lab and some forty commands, each bounded on its own
def test_every_documented_xenlab_command_runs_as_written(tmp_path):
    lab = Lab(tmp_path)
    _write_frames_pcap(tmp_path / "frames.pcap")
    up = lab.run("xenlab up --detach", timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    background: list[Background] = []
    ran, down = [], None
    try:
        for command in all_commands():
            if command.text in SKIPPED:
                continue
            args = _args(command)
            if args[1:] == ["down"]:
                down = command
                continue
            if args[1] == "capture":
                job = lab.start(command)
                job.wait_for(lambda j: "waiting for" in j.err.read_text())
                background.append(job)
            elif args[1] == "events" and "-n" not in args:
                job = lab.start(command)
                if "-t" not in args:
                    job.wait_for(lambda j: j.out.read_text().strip())    # the retained states
                background.append(job)
            elif _watches_changes(args):
                background.append(lab.start(command))       # until Ctrl-C, as bridge(8)'s
            else:
                _check_foreground(lab, command)
            ran.append(command)

        # Traffic for the captures, and an FDB learn for the FDB watch.
        ping = lab.run("xenlab ping web 10.0.0.2 -c 6 -i 0.1")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        for job in background:
            if _args(job.command)[1] == "events" or _watches_changes(_args(job.command)):
                for n in range(1, 50):
                    if job.out.read_text().strip():
                        break
                    lab.run(f"xenlab inject xenbr0:vif1.0 --count 1 --src 02:00:00:00:0{n // 10}:{n % 10:02d}")
                    time.sleep(0.2)
        for job in background:
            args = _args(job.command)
            said = f"{job.command.where}: {job.command.text}\n{job.err.read_text()}"
            if "-c" in args:
                assert job.proc.wait(60) == 0, said
                assert _frames(lab, job.command) == int(args[args.index("-c") + 1]), said
                continue
            assert job.stop() == 0, said
            if args[1] == "capture":
                assert _frames(lab, job.command) > 0, said
            else:
                assert job.out.read_text().strip(), said
    finally:
        for job in background:
            job.kill()
        stopped = lab.run(down.text if down is not None else "xenlab down")
        shutil.rmtree(lab.rundir, ignore_errors=True)
    assert down is not None and stopped.returncode == 0, stopped.stdout + stopped.stderr
    ran.append(down)
    assert {c.text for c in ran} | set(SKIPPED) == {c.text for c in all_commands()}
