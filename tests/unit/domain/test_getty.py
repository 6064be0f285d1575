"""The shell on the console, with its I/O faked: each command's output and
a prompt after it, typeahead run in order, and Ctrl-C stopping a command
that runs (a ping that would go on) and what was typed ahead of it."""
from __future__ import annotations

import asyncio

from xenlab.domain.getty import ConsoleShell


class FakeConsole:
    def __init__(self):
        self.out = bytearray()
        self.on_input = None

    def write(self, data: bytes) -> None:
        self.out += data

    def poll(self) -> None:
        pass


class EndlessNet:
    """A network whose pings never finish."""

    def __init__(self):
        self.pings = 0

    def has_stack(self) -> bool:
        return True

    def interfaces(self):
        return []

    async def ping(self, dst, count, on_reply=None):
        self.pings += 1
        await asyncio.sleep(3600)


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_typed_lines_are_answered_in_order_each_with_a_prompt():
    console = FakeConsole()
    shell = ConsoleShell(console, None, "web", booted=0.0, clock=lambda: 61.0,
                         wallclock=lambda: "12:00:00")
    shell.start()
    assert console.out.endswith(b"root@web:~# ")
    console.out.clear()
    console.on_input(b"uptime\rfoo\r")
    await settle()
    assert bytes(console.out) == (b"uptime\r\nfoo\r\n"
                                  b" 12:00:00 up 1 min\r\nroot@web:~# "
                                  b"-sh: foo: command not found\r\nroot@web:~# ")


async def test_ctrl_c_stops_the_running_command_and_what_was_typed_ahead():
    console, net = FakeConsole(), EndlessNet()
    shell = ConsoleShell(console, net, "web", booted=0.0)
    shell.start()
    console.on_input(b"ping 10.0.0.2\rhelp\r")
    await settle()
    assert net.pings == 1
    console.out.clear()
    console.on_input(b"\x03")
    await settle()
    assert bytes(console.out) == b"^C\r\nroot@web:~# "
    assert shell._runner.done()
    console.on_input(b"uptime\r")
    await settle()
    assert b" up " in console.out and b"Commands:" not in console.out    # help was dropped
