"""Magic SysRq for a PV guest: control/sysrq, as Linux's drivers/xen/manage.c
sysrq_handler reads it, acted on as drivers/tty/sysrq.c's handle_sysrq does.

The toolstack (xl sysrq D KEY) writes one character in control/sysrq. The
guest reads it and clears the node in one transaction (retried on EAGAIN),
then handles the key. A key it has no handler for prints the help line, as
Linux does for any unregistered key ('h' among them). The handlers:

* ``b`` Resetting: an immediate reboot, no orderly shutdown of devices
  (emergency_restart: on Xen, SCHEDOP_shutdown(reboot) at once);
* ``c`` Trigger a crash: the kernel panics ("Kernel panic - not syncing:
  sysrq triggered crash"), which on Xen is SCHEDOP_shutdown(crash);
* ``m`` Show Memory: show_mem's summary, in pages;
* ``o`` Power Off: kernel_power_off, devices shut down in order;
* ``t`` Show State: every task and its state.

What each prints goes through the kernel log, so to the console.
"""
from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass

from xenlab.xen.errors import XenError

log = logging.getLogger("sysrq")


@dataclass(frozen=True)
class SysrqOp:
    action_msg: str     # printed as "sysrq: <action_msg>" before the handler runs
    help_msg: str       # its word in the HELP line


# struct sysrq_key_op, for the keys this kernel handles (drivers/tty/sysrq.c's wording).
OPS: dict[str, SysrqOp] = {
    "b": SysrqOp("Resetting", "reboot(b)"),
    "c": SysrqOp("Trigger a crash", "crash(c)"),
    "m": SysrqOp("Show Memory", "show-memory-usage(m)"),
    "o": SysrqOp("Power Off", "poweroff(o)"),
    "t": SysrqOp("Show State", "show-task-states(t)"),
}


def help_line() -> str:
    """What an unregistered key prints: each handler's help word, by key."""
    return "HELP : " + " ".join(OPS[key].help_msg for key in sorted(OPS))


def parse_request(value: str) -> str | None:
    """control/sysrq's value -> the key (its first character, as
    xenbus_scanf's "%c" takes it); None for an empty node (cleared)."""
    return value[0] if value else None


def task_lines(tasks, current=None) -> list[str]:
    """sched_show_task for each task: its name, its state (R: ``current``,
    the one running; S: waiting; X: done) and what it runs."""
    lines = []
    for task in sorted(tasks, key=lambda t: t.get_name()):
        coro = task.get_coro()
        what = getattr(coro, "__qualname__", type(coro).__name__)
        state = "X" if task.done() else "R" if task is current else "S"
        lines.append(f"task:{task.get_name():<16} state:{state} {what}")
    return lines


def memory_lines(nr_frames: int, populated: int, free: int, reserved: int) -> list[str]:
    """show_mem's summary, in 4 KiB pages."""
    return ["Mem-Info:", f"{nr_frames} pages RAM", f"{populated} pages populated",
            f"{free} pages free", f"{reserved} pages reserved"]


class SysrqHandler:
    """The guest kernel's end: watches control/sysrq and acts on the key."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.handled: list[str] = []

    async def start(self) -> None:
        await self.kernel.xenbus.watch("control/sysrq", self._on_sysrq)

    async def _on_sysrq(self, path: str) -> None:
        keys: list[str] = []

        async def take(tx: int) -> None:
            keys.clear()
            key = parse_request(await self.kernel.xenbus.read("control/sysrq", default="", tx=tx))
            if key is not None:
                await self.kernel.xenbus.write("control/sysrq", "", tx=tx)
                keys.append(key)
        try:
            await self.kernel.xenbus.transaction(take)
        except XenError as err:
            if err.errno != errno.ENOENT:
                log.error("Error %s reading sysrq code in control/sysrq", err.message)
            return
        for key in keys:
            await self.handle(key)

    async def handle(self, key: str) -> None:
        """handle_sysrq(key)."""
        self.handled.append(key)
        op = OPS.get(key)
        if op is None:
            log.info("%s", help_line())
            return
        log.info("%s", op.action_msg)
        kernel = self.kernel
        if key == "t":
            for line in task_lines(asyncio.all_tasks(), asyncio.current_task()):
                log.info("%s", line)
        elif key == "m":
            for line in memory_lines(**kernel.memory_summary()):
                log.info("%s", line)
        elif key == "o":
            kernel.stop("poweroff")
        elif key == "b":
            await kernel.emergency_stop("reboot")
        elif key == "c":
            log.critical("Kernel panic - not syncing: sysrq triggered crash")
            await kernel.emergency_stop("crash")
