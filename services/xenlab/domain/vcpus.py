"""The domain's vCPUs as the host schedules them: vCPU 0 is the process's
main thread, where the kernel's event loop runs (upcalls, xenbus, the
drivers, the IP stack: a uniprocessor guest's kernel on its only vCPU);
vCPU N > 0 is a thread of its own named ``vcpuN`` (its OS name, so that
the hypervisor finds it in /proc/PID/task: xenlab.launchers.tasks).

An idle vCPU blocks (the host shows it sleeping, xl vcpu-list ``-b-``),
as a Xen vCPU blocks in SCHEDOP_block. A vCPU the toolstack has set
offline (``cpu/N/availability``, xl vcpu-set) takes no work, as Linux's
xen cpu_hotplug takes the CPU down.

``spin`` is a guest workload: keep vCPUs busy for a while, as a
CPU-bound guest process would (the guest agent's Spin call). On vCPU N > 0
it hashes in its own thread (hashlib lets go of the GIL for large
buffers, so the vCPUs really run in parallel); on vCPU 0 it hashes in
slices between the event loop's other work, so the kernel keeps serving.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import logging
import threading
import time

log = logging.getLogger(__name__)

_PR_SET_NAME = 15                   # linux/prctl.h
_CHUNK = bytes(64 * 1024)           # one hashing step: ~0.1 ms of CPU
_SLICE = 0.005                      # seconds vCPU 0 spins before letting the loop run


def _set_thread_name(name: str) -> None:
    """prctl(PR_SET_NAME): the thread's comm, as /proc/PID/task/TID/comm shows it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except OSError as err:
        log.warning("cannot name thread %s: %s", name, err)


def _burn(until: float) -> int:
    rounds = 0
    while time.monotonic() < until:
        hashlib.sha256(_CHUNK).digest()
        rounds += 1
    return rounds


class _VcpuThread:
    def __init__(self, n: int):
        self.n = n
        self.online = True
        self._work = threading.Condition()
        self._until = 0.0
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name=f"vcpu{n}", daemon=True)

    def _run(self) -> None:
        _set_thread_name(f"vcpu{self.n}")
        while True:
            with self._work:
                while not self._stopped and (not self.online or time.monotonic() >= self._until):
                    self._work.wait()
                if self._stopped:
                    return
                until = self._until
            _burn(until)

    def spin(self, until: float) -> None:
        with self._work:
            self._until = max(self._until, until)
            self._work.notify()

    def set_online(self, online: bool) -> None:
        with self._work:
            self.online = online
            self._work.notify()

    def stop(self) -> None:
        with self._work:
            self._stopped = True
            self._work.notify()


class Vcpus:
    """The domain's ``count`` vCPUs (its maxvcpus), ``online`` of them online."""

    def __init__(self, count: int):
        self.count = max(1, count)
        self.online = set(range(self.count))
        self._threads = {n: _VcpuThread(n) for n in range(1, self.count)}
        self._spin0: asyncio.Task | None = None

    def start(self) -> None:
        for t in self._threads.values():
            t.thread.start()

    def set_online(self, vcpu: int, online: bool) -> None:
        """cpu/N/availability; vCPU 0 stays online (Linux cannot take down the boot CPU)."""
        if vcpu == 0 or vcpu not in self._threads:
            return
        self._threads[vcpu].set_online(online)
        (self.online.add if online else self.online.discard)(vcpu)

    def spin(self, vcpus, seconds: float) -> list[int]:
        """Keep these vCPUs busy for ``seconds``; the online ones that took it."""
        until = time.monotonic() + seconds
        took = []
        for n in sorted(set(vcpus)):
            if n not in self.online:
                continue
            took.append(n)
            if n == 0:
                self._spin_vcpu0(until)
            else:
                self._threads[n].spin(until)
        return took

    def _spin_vcpu0(self, until: float) -> None:
        async def spin() -> None:
            while time.monotonic() < until:
                _burn(min(until, time.monotonic() + _SLICE))
                await asyncio.sleep(0)
        if self._spin0 is not None:
            self._spin0.cancel()
        self._spin0 = asyncio.get_running_loop().create_task(spin())

    def stop(self) -> None:
        if self._spin0 is not None:
            self._spin0.cancel()
        for t in self._threads.values():
            t.stop()
