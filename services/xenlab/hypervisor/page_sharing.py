"""Page sharing: identical pages of the domains shared again, by the
kernel's samepage merging (KSM), as Xen's memory sharing shares identical
frames of its guests (`xl info`'s sharing_freed_memory and
sharing_used_memory).

What is shared. Every forked domain starts as a copy-on-write copy of the
fork server (xenlab.boot.zygote), and copies the pages it writes: mostly
reference counts of the interpreter's objects, which every domain running
the same code changes alike, and pages written and put back as they were.
The fork server offers its memory and its children's to KSM
(PR_SET_MEMORY_MERGE, inherited at fork); ksmd then merges the pages that
are alike in several domains, or alike again with the fork server's, into
one read-only page, copied again on the next write. A domain's guest frames
(its memory object, tmpfs) are not anonymous memory, and never merged.

Who runs ksmd. It is the host's: one switch (/sys/kernel/mm/ksm/run) and
one scan rate for every process that offers memory. ``--page-sharing``:

* ``auto`` (the default): domains are offered, ksmd is left as the host
  has it (QEMU's ``mem-merge=on`` is the same choice);
* ``on``: as auto, and if ksmd is stopped the hypervisor starts it (root),
  scans fast while domains start and slowly once they have been merged,
  fast again when running domains have written enough merged pages (a
  look a minute, as ksmtuned looks; ``ScanTuner``), and puts back the
  host's settings when it stops (``OWNER_RECORD`` says which hypervisor
  started ksmd and what the settings were, so that the next one with
  ``on`` puts them back if that one was killed first). ksmd is one per
  host: a second hypervisor with ``on`` finds it running and leaves it to
  the first, whose exit stops it for both;
* ``off``: nothing is offered.

Merging across domains is a side channel (a write to a merged page takes
longer): SECURITY.md says when to turn it off.
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from xenlab import eventloop

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
KSM_SYSFS = Path("/sys/kernel/mm/ksm")
# Which hypervisor started ksmd, and the host's settings it saved (root only:
# only root may start ksmd).
OWNER_RECORD = Path("/run/xenlab/ksm-owner.json")
PAGE_KB = 4
SLEEP_MS = 20               # ksmd's sleep between batches (the kernel's default)
BOOST_PAGES = 1000          # pages per batch while domains start: 50,000 pages/s
# Once merged: 1,000 pages/s. At the kernel's default (100: 5,000 pages/s)
# ksmd alone used 2.6-3.4 % of a CPU with 64 and 256 idle domUs, ten times
# the lab itself (BENCHMARKS.md).
IDLE_PAGES = 20
# Full scans after the last domain started before the rate drops: merging a
# page takes two sightings (the unstable tree, then a match), and the scan
# under way when the domain started may have passed it already.
BOOST_SCANS = 3
CHECK_INTERVAL = 2.0        # seconds between looks at full_scans while boosting
# Once merged, a look every minute (ksmtuned's period) at how many pages are
# still merged: a domain that runs writes merged pages and gets copies
# again (a domU's first pings after a quiet spell: 1-4 MiB), which the slow
# rate would take hours to merge back at 256 domUs. Losing RESHARE_FRACTION
# of the merged pages (and at least RESHARE_MIN_PAGES) boosts again.
SETTLED_INTERVAL = 60.0
RESHARE_FRACTION = 0.02
RESHARE_MIN_PAGES = 2560    # 10 MiB
SAVED = ("sleep_millisecs", "pages_to_scan", "run")    # put back in this order (run last)
# What `xl info`'s page_sharing line says while the hypervisor runs ksmd,
# and while it scans fast (the bench waits for the second to go).
STARTED = "ksmd started by the hypervisor"
BOOSTING = "scanning fast until the domains' pages are merged"


def ksm_counter(name: str, sysfs: Path = KSM_SYSFS) -> int | None:
    """One of ksmd's numbers (run, full_scans, pages_sharing...); None
    where the kernel has no KSM or the file says no number."""
    try:
        return int((Path(sysfs) / name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class PageSharingError(OSError):
    """Page sharing cannot be had as asked; str() is the message alone."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


@dataclass
class ScanTuner:
    """ksmd's scan rate: ``boost_pages`` per batch from a domain's start
    until ``boost_scans`` full scans have passed since the last one, then
    ``idle_pages``; and fast again when the merged pages (pages_sharing)
    fall below their high-water mark since the boost ended by a fraction
    ``reshare_fraction`` (at least ``reshare_min`` pages). No I/O: the
    caller reads ksmd's counters and writes the rate it is given."""
    boost_pages: int = BOOST_PAGES
    idle_pages: int = IDLE_PAGES
    boost_scans: int = BOOST_SCANS
    reshare_fraction: float = RESHARE_FRACTION
    reshare_min: int = RESHARE_MIN_PAGES
    until: int | None = None    # the full_scans count that ends the boost
    settled: int | None = None  # pages_sharing's high-water mark since the boost ended

    @property
    def boosting(self) -> bool:
        return self.until is not None

    def rate(self) -> int:
        return self.boost_pages if self.boosting else self.idle_pages

    def started(self, full_scans: int) -> int | None:
        """A domain started (or merged pages were copied back): the rate to
        set, or None if it is set already."""
        was = self.boosting
        self.until = full_scans + self.boost_scans
        self.settled = None
        return None if was else self.boost_pages

    def checked(self, full_scans: int, pages_sharing: int) -> int | None:
        """ksmd's counters now; the rate to set, or None."""
        if self.until is not None:
            if full_scans < self.until:
                return None
            self.until = None
            self.settled = pages_sharing
            return self.idle_pages
        if self.settled is None or pages_sharing > self.settled:
            self.settled = pages_sharing
            return None
        if self.settled - pages_sharing >= max(self.reshare_min, self.settled * self.reshare_fraction):
            return self.started(full_scans)
        return None


class PageSharing:
    """The hypervisor's end of page sharing (see the module's text):
    ``start`` at the hypervisor's start, ``domain_started`` after each
    domain's process starts, ``close`` at its end."""

    def __init__(self, mode: str = "auto", sysfs: Path = KSM_SYSFS,
                 tuner: ScanTuner | None = None, check_interval: float = CHECK_INTERVAL,
                 settled_interval: float = SETTLED_INTERVAL, owner_record: Path | None = None):
        if mode not in MODES:
            raise ValueError(f"page sharing {mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        self.sysfs = Path(sysfs)
        self.tuner = tuner or ScanTuner()
        self.check_interval = check_interval
        self.settled_interval = settled_interval
        self.owner_record = Path(owner_record) if owner_record else OWNER_RECORD
        self.saved: dict[str, str] | None = None   # the host's settings, while ksmd is ours
        self._watch: asyncio.Task | None = None
        self._kick = asyncio.Event()

    @property
    def available(self) -> bool:
        return (self.sysfs / "run").exists()

    @property
    def offered(self) -> bool:
        """Whether domains' memory is offered to KSM."""
        return self.mode != "off"

    @property
    def owned(self) -> bool:
        return self.saved is not None

    def _read(self, name: str) -> int:
        return int((self.sysfs / name).read_text().split()[0])

    def _write(self, name: str, value) -> None:
        (self.sysfs / name).write_text(f"{value}\n")

    def start(self) -> None:
        """With ``on``, start ksmd if it is stopped (or take it over from a
        hypervisor that started it and died without putting the host's
        settings back). PageSharingError (an OSError: EACCES, ENOENT) with
        the reason if it cannot be started."""
        if self.mode != "on":
            return
        if not self.available:
            raise PageSharingError(errno.ENOENT, f"--page-sharing on: this kernel has no KSM "
                                                 f"({self.sysfs / 'run'} is missing)")
        if self._read("run") != 0:
            saved = self._orphaned()
            if saved is None:
                log.info("page sharing: ksmd is running already; its settings are the host's")
                return
        else:
            saved = {name: (self.sysfs / name).read_text().strip() for name in SAVED}
        written: dict[str, str] = {}
        try:
            for name, value in (("sleep_millisecs", SLEEP_MS), ("pages_to_scan", self.tuner.rate()),
                                ("run", 1)):
                self._write(name, value)
                written[name] = saved[name]
        except OSError as err:
            self._restore(written)
            raise PageSharingError(err.errno, f"--page-sharing on: cannot start ksmd "
                                              f"({self.sysfs / 'run'}: {err.strerror}); it needs "
                                              f"root, or --page-sharing auto leaves ksmd to the "
                                              f"host") from None
        self.saved = saved
        self._record(saved)
        self._watch = asyncio.get_running_loop().create_task(self._tune())
        log.info("page sharing: started ksmd (%d pages every %d ms while domains start, "
                 "then %d)", self.tuner.boost_pages, SLEEP_MS, self.tuner.idle_pages)

    # -- who started ksmd: a record outside any lab, so that a hypervisor
    # killed before it could put the host's settings back (SIGKILL) leaves
    # them to the next one with `on`, not to ksmd scanning fast for ever.
    def _record(self, saved: dict[str, str]) -> None:
        try:
            self.owner_record.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.owner_record.with_suffix(".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "saved": saved}) + "\n")
            tmp.replace(self.owner_record)
        except OSError as err:
            log.warning("page sharing: could not record that this hypervisor started ksmd "
                        "(%s): if it is killed, the host's settings stay as it left them", err)

    def _orphaned(self) -> dict[str, str] | None:
        """The host's settings saved by a hypervisor that started ksmd and is
        gone; None if there is no such record (ksmd is the host's, or a
        living hypervisor's)."""
        try:
            record = json.loads(self.owner_record.read_text())
            pid, saved = int(record["pid"]), record["saved"]
            if not (isinstance(saved, dict) and set(saved) == set(SAVED)
                    and all(isinstance(v, str) for v in saved.values())):
                raise ValueError("not a record of the three settings")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as err:
            log.warning("page sharing: ignoring %s: %s", self.owner_record, err)
            return None
        if pid == os.getpid() or Path(f"/proc/{pid}").exists():
            return None
        log.warning("page sharing: hypervisor %d started ksmd and is gone without putting the "
                    "host's settings back; this one takes ksmd over and will", pid)
        return saved

    def _drop_record(self) -> None:
        try:
            if json.loads(self.owner_record.read_text()).get("pid") == os.getpid():
                self.owner_record.unlink()
        except (OSError, ValueError, AttributeError):
            pass

    def domain_started(self) -> None:
        """A domain's process started: scan fast until it has been merged."""
        if not self.owned:
            return
        try:
            rate = self.tuner.started(self._read("full_scans"))
            if rate is not None:
                self._write("pages_to_scan", rate)
        except OSError as err:
            log.warning("page sharing: %s", err)
            return
        self._kick.set()

    async def _tune(self) -> None:
        """While ksmd is ours: a look every CHECK_INTERVAL while boosting,
        every SETTLED_INTERVAL after (a domain's start looks at once)."""
        while True:
            interval = self.check_interval if self.tuner.boosting else self.settled_interval
            try:
                await eventloop.wait_for(self._kick.wait(), interval)
            except TimeoutError:
                pass
            self._kick.clear()
            try:
                was = self.tuner.boosting
                rate = self.tuner.checked(self._read("full_scans"), self._read("pages_sharing"))
                if rate is not None:
                    self._write("pages_to_scan", rate)
                    if was:
                        log.info("page sharing: domains merged; ksmd back to %d pages every %d ms",
                                 rate, SLEEP_MS)
                    else:
                        log.info("page sharing: merged pages were written again; ksmd scans fast")
            except (OSError, ValueError, IndexError) as err:
                log.warning("page sharing: %s", err)

    def figures(self) -> tuple[int, int]:
        """(freed, used) in KiB, host-wide as Xen's: the pages that merging
        saved (pages_sharing) and the shared pages that hold them
        (pages_shared). Zeros without KSM."""
        return ((ksm_counter("pages_sharing", self.sysfs) or 0) * PAGE_KB,
                (ksm_counter("pages_shared", self.sysfs) or 0) * PAGE_KB)

    def describe(self) -> str:
        """One line for `xl info`."""
        if self.mode == "off":
            return "off"
        if not self.available:
            return f"{self.mode}: no KSM in this kernel"
        running = ksm_counter("run", self.sysfs) == 1
        if self.owned:
            return f"{self.mode}: {STARTED}" + (f", {BOOSTING}" if self.tuner.boosting else "")
        return f"{self.mode}: ksmd " + ("running (the host's settings)" if running else "stopped")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except asyncio.CancelledError:
                pass
        if self.saved is not None:
            self._restore(self.saved)
            self.saved = None
            self._drop_record()

    def _restore(self, saved: dict[str, str]) -> None:
        """The host's settings back; merged pages stay merged (run=0 stops
        scanning, it does not split them)."""
        for name in SAVED:
            if name not in saved:
                continue
            try:
                self._write(name, saved[name])
            except OSError as err:
                log.warning("page sharing: could not put back %s=%s: %s", name, saved[name],
                            err.strerror)
