"""Magic SysRq in the guest kernel: control/sysrq read and cleared in one
transaction, as drivers/xen/manage.c does, and each key's handler as
drivers/tty/sysrq.c words it."""
from __future__ import annotations

import asyncio
import logging

import pytest

from xenlab.domain import sysrq
from xenlab.domain.sysrq import SysrqHandler


def test_the_help_line_lists_the_handled_keys_in_order():
    assert sysrq.help_line() == ("HELP : reboot(b) crash(c) show-memory-usage(m) poweroff(o) "
                                 "show-task-states(t)")


def test_the_key_is_the_first_character_and_an_empty_node_is_none():
    assert sysrq.parse_request("t") == "t"
    assert sysrq.parse_request("bc") == "b"
    assert sysrq.parse_request("") is None


def test_memory_lines_are_show_mems_summary():
    assert sysrq.memory_lines(8192, 8000, 7000, 16) == [
        "Mem-Info:", "8192 pages RAM", "8000 pages populated", "7000 pages free",
        "16 pages reserved"]


class FakeXenbus:
    def __init__(self, value: str):
        self.nodes = {"control/sysrq": value}
        self.transactions = 0

    async def transaction(self, body, attempts: int = 16):
        self.transactions += 1
        await body(1)

    async def read(self, path, default=None, tx=0):
        return self.nodes.get(path, default)

    async def write(self, path, value, tx=0):
        self.nodes[path] = value

    async def watch(self, path, callback):
        self.callback = callback


class FakeKernel:
    def __init__(self, value: str):
        self.xenbus = FakeXenbus(value)
        self.stopped, self.emergency = [], []

    def stop(self, reason):
        self.stopped.append(reason)

    async def emergency_stop(self, reason):
        self.emergency.append(reason)

    def memory_summary(self):
        return dict(nr_frames=10, populated=9, free=5, reserved=2)


async def deliver(value: str, caplog) -> FakeKernel:
    kernel = FakeKernel(value)
    handler = SysrqHandler(kernel)
    await handler.start()
    with caplog.at_level(logging.INFO, logger="sysrq"):
        await kernel.xenbus.callback("control/sysrq")
    return kernel


@pytest.mark.parametrize("key", ["h", "x", "9"])
async def test_an_unhandled_key_prints_help_and_the_node_is_cleared(key, caplog):
    kernel = await deliver(key, caplog)
    assert kernel.xenbus.nodes["control/sysrq"] == ""
    assert [r.getMessage() for r in caplog.records] == [sysrq.help_line()]
    assert (kernel.stopped, kernel.emergency) == ([], [])


async def test_an_empty_node_is_ignored(caplog):
    kernel = await deliver("", caplog)
    assert caplog.records == [] and kernel.xenbus.nodes["control/sysrq"] == ""


async def test_o_powers_off_in_order_b_reboots_at_once_c_panics(caplog):
    assert (await deliver("o", caplog)).stopped == ["poweroff"]
    assert (await deliver("b", caplog)).emergency == ["reboot"]
    caplog.clear()
    kernel = await deliver("c", caplog)
    assert kernel.emergency == ["crash"]
    assert [r.getMessage() for r in caplog.records] == [
        "Trigger a crash", "Kernel panic - not syncing: sysrq triggered crash"]


async def test_m_and_t_show_memory_and_tasks(caplog):
    await deliver("m", caplog)
    assert [r.getMessage() for r in caplog.records][:3] == ["Show Memory", "Mem-Info:", "10 pages RAM"]
    caplog.clear()
    sleeper = asyncio.create_task(asyncio.sleep(10), name="sleeper")
    await asyncio.sleep(0)
    await deliver("t", caplog)
    sleeper.cancel()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "Show State"
    assert any(line.startswith("task:sleeper") and "state:S" in line for line in lines)
    assert sum("state:R" in line for line in lines) == 1      # the one running: ours
