"""`xenlab events` and the --mqtt options of the services."""
import asyncio
import json
import sys

import pytest

from xenlab.cli.main import main
from xenlab.events import topics as t
from xenlab.events.broker import EmbeddedBroker, mosquitto_config, parse_listen
from xenlab.events.publisher import EventPublisher
from xenlab.events.watch import lab_broker

TOPICS = t.Topics("cli")


async def xenlab(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xenlab.cli.main", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


async def test_events_prints_topic_and_payload_lines_and_json():
    async with EmbeddedBroker() as broker:
        async with EventPublisher(broker.address, TOPICS, "hypervisor") as pub:
            pub.publish(t.domain_state(TOPICS, {"domid": 4, "name": "web", "uuid": "u"}, "running", 1.0))
            await pub.wait_connected(10)
            rc, out, _ = await xenlab("events", "--broker", str(broker.address), "-t",
                                      TOPICS.domain_state("+"), "-n", "1", "--timeout", "10")
            assert rc == 0
            topic, payload = out.strip().split(" ", 1)
            assert topic == "xenlab/cli/domain/4/state" and json.loads(payload)["name"] == "web"
            rc, out, _ = await xenlab("events", "--broker", str(broker.address), "--json",
                                      "-t", "xenlab/cli/service/+/status", "-n", "1", "--timeout", "10")
            line = json.loads(out)
            assert rc == 0 and line["retained"] and line["payload"]["service"] == "hypervisor"


async def test_events_exits_1_when_fewer_than_n_came():
    async with EmbeddedBroker() as broker:
        rc, out, _ = await xenlab("events", "--broker", str(broker.address), "-n", "1", "--timeout", "0.5")
    assert (rc, out) == (1, "")


async def test_events_without_a_broker_says_so(closed_port):
    port = closed_port
    rc, _, err = await xenlab("events", "--broker", f"mqtt://127.0.0.1:{port}", "--timeout", "5")
    assert (rc, err) == (1, f"xenlab events: cannot reach the MQTT broker at mqtt://127.0.0.1:{port}: "
                            f"connection refused\n")


async def test_events_with_no_lab_says_in_one_line_that_no_lab_runs(tmp_path):
    # It tried 127.0.0.1:1883 and printed a bare "[Errno 111] Connect call failed".
    import socket
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 1883)) == 0:
            pytest.skip("something listens on 127.0.0.1:1883 on this machine")
    rc, out, err = await xenlab("events", "--rundir", str(tmp_path), "--timeout", "5")
    assert (rc, out) == (1, "") and err.count("\n") == 1
    assert err.startswith("xenlab events: cannot reach the MQTT broker at mqtt://127.0.0.1:1883: "
                          "connection refused (no lab in ")
    assert "start one with `xenlab up`, or name a broker with --broker" in err


async def test_events_stops_on_ctrl_c_with_exit_0():
    import signal
    async with EmbeddedBroker() as broker:
        async with EventPublisher(broker.address, TOPICS, "hypervisor") as pub:
            await pub.wait_connected(10)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "xenlab.cli.main", "events", "--broker", str(broker.address),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            first = await asyncio.wait_for(proc.stdout.readline(), 30)    # the retained status
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert b"/service/hypervisor/status" in first
    assert proc.returncode == 0 and b"Traceback" not in err, err


def test_events_finds_the_running_labs_broker(tmp_path):
    assert lab_broker(tmp_path) is None
    (tmp_path / "lab.json").write_text(json.dumps({"name": "l", "mqtt": "mqtt://127.0.0.1:4567"}))
    assert str(lab_broker(tmp_path)) == "mqtt://127.0.0.1:4567"


@pytest.mark.parametrize("command", ["hypervisor", "bridge-service", "dom0"])
def test_a_service_refuses_a_malformed_broker_address(command, tmp_path, capsys):
    assert main([command, "--rundir", str(tmp_path), "--mqtt", "tcp://127.0.0.1:1883"]) == 2
    assert "mqtt://HOST:PORT" in capsys.readouterr().err


def test_broker_listen_and_mosquitto_configuration():
    assert parse_listen("127.0.0.1:1883") == ("127.0.0.1", 1883)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError):
        parse_listen("1883")
    conf = mosquitto_config("127.0.0.1", 1999, "root").splitlines()
    assert "listener 1999 127.0.0.1" in conf and "persistence false" in conf
    # Run as the caller: a switch of user would clear the parent-death signal.
    assert "user root" in conf


def test_the_broker_does_not_outlive_its_parent(tmp_path):
    import subprocess
    from xenlab.events.broker import mosquitto_binary
    from xenlab.osutil import free_port
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    port = free_port()
    parent = subprocess.run([sys.executable, "-c", f"""
import subprocess, sys, time, socket
p = subprocess.Popen([sys.executable, "-m", "xenlab.cli.main", "mqtt-broker", "--engine", "mosquitto",
                      "--listen", "127.0.0.1:{port}", "--die-with-parent"], stderr=subprocess.DEVNULL)
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", {port}), 0.1).close()
        break
    except OSError:
        time.sleep(0.05)
print(p.pid)
"""], capture_output=True, text=True, timeout=30)
    pid = int(parent.stdout.split()[-1])
    import os
    import time
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]
        except OSError:
            return                      # gone
        if state == "Z":
            return                      # dead, waiting to be reaped
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError("mosquitto outlived the process that started it")


@pytest.mark.parametrize("engine", ["amqtt", "mosquitto"])
async def test_a_service_that_dies_is_announced_offline_by_its_will(tmp_path, engine):
    from xenlab.events.broker import mosquitto_binary
    from xenlab.events.watch import EventCollector
    if engine == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    broker_proc = None
    if engine == "amqtt":
        broker = EmbeddedBroker()
        await broker.start()
        address = broker.address
    else:
        from xenlab.events.broker import broker_ready
        from xenlab.osutil import free_port
        from xenlab.events.config import BrokerAddress
        address = BrokerAddress("127.0.0.1", free_port())
        broker_proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "xenlab.cli.main", "mqtt-broker", "--engine", "mosquitto",
            "--listen", f"127.0.0.1:{address.port}", stderr=asyncio.subprocess.DEVNULL)
        while not await broker_ready(address):
            await asyncio.sleep(0.05)
    service = None
    try:
        async with EventCollector(address, ["xenlab/cli/service/bridge/status"]) as watcher:
            service = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "xenlab.cli.main", "bridge-service", "--no-register",
                "--rundir", str(tmp_path), "--mqtt", str(address), "--host-name", "cli",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            online = await watcher.wait_for(lambda e: e.payload["state"] == "online")
            assert online.payload["pid"] == service.pid
            service.kill()
            await service.wait()
            offline = await watcher.wait_for(lambda e: e.payload["state"] == "offline")
            assert offline.payload["pid"] == service.pid
    finally:
        if service is not None and service.returncode is None:
            service.kill()
            await service.wait()
        if broker_proc is not None:
            broker_proc.terminate()
            await broker_proc.wait()
        else:
            await broker.stop()
