"""Page sharing: ksmd's scan rate as domains start (ScanTuner, no I/O), and
the hypervisor's handling of the host's KSM switches, on a directory that
stands in for /sys/kernel/mm/ksm."""
from __future__ import annotations

import asyncio
import errno
import json
import os

import pytest

from xenlab.hypervisor import page_sharing
from xenlab.hypervisor.page_sharing import PageSharing, ScanTuner


# -- the tuner -------------------------------------------------------------------
def test_a_start_boosts_until_the_scans_after_the_last_start_are_done():
    tuner = ScanTuner(boost_pages=1000, idle_pages=100, boost_scans=3)
    assert tuner.rate() == 100 and not tuner.boosting
    assert tuner.started(full_scans=10) == 1000
    assert tuner.checked(12, 0) is None and tuner.boosting
    assert tuner.started(full_scans=12) is None        # boosting already: nothing to write
    assert tuner.checked(14, 500) is None               # three scans after 12, not after 10
    assert tuner.checked(15, 900) == 100 and not tuner.boosting
    assert tuner.checked(16, 900) is None               # idle: nothing more to write


def test_a_start_after_the_boost_ended_boosts_again():
    tuner = ScanTuner(boost_pages=500, idle_pages=50, boost_scans=1)
    tuner.started(0)
    assert tuner.checked(1, 0) == 50
    assert tuner.started(1) == 500 and tuner.rate() == 500


def test_merged_pages_written_again_boost_again_past_a_threshold():
    """Running domains copy merged pages back (pages_sharing falls): a small
    loss waits for the slow scan, a loss of 2% of the high-water mark (and
    at least reshare_min pages) scans fast again."""
    tuner = ScanTuner(boost_pages=1000, idle_pages=20, boost_scans=3, reshare_fraction=0.02,
                      reshare_min=2560)
    tuner.started(0)
    assert tuner.checked(3, 500_000) == 20
    assert tuner.checked(3, 510_000) is None            # more merged: a new high-water mark
    assert tuner.checked(3, 500_000) is None            # 10,000 lost: under 2% of 510,000
    assert tuner.checked(4, 499_800) == 1000            # 10,200 lost: 2%
    assert tuner.boosting and tuner.checked(5, 490_000) is None
    assert tuner.checked(7, 505_000) == 20              # merged again; the mark starts over
    small = ScanTuner(reshare_fraction=0.02, reshare_min=2560)
    small.started(0)
    small.checked(3, 10_000)
    assert small.checked(3, 8_000) is None              # 20% of a small lab, but under 10 MiB
    assert small.checked(3, 7_440) == small.boost_pages


# -- the host's switches -------------------------------------------------------------
@pytest.fixture(autouse=True)
def owner_record(tmp_path, monkeypatch):
    """Where the hypervisor that started ksmd says so: never the host's here."""
    path = tmp_path / "run" / "ksm-owner.json"
    monkeypatch.setattr(page_sharing, "OWNER_RECORD", path)
    return path


@pytest.fixture
def ksm(tmp_path):
    d = tmp_path / "ksm"
    d.mkdir()
    for name, value in {"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20, "full_scans": 7,
                        "pages_sharing": 25600, "pages_shared": 512}.items():
        (d / name).write_text(f"{value}\n")
    return d


def read(d, name):
    return (d / name).read_text().strip()


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="expected one of auto, on, off"):
        PageSharing("yes")


async def test_on_starts_a_stopped_ksmd_boosts_per_domain_and_puts_back_the_hosts_settings(
        ksm, owner_record):
    (ksm / "sleep_millisecs").write_text("200\n")
    sharing = PageSharing("on", ksm, ScanTuner(boost_pages=900, idle_pages=90, boost_scans=2,
                                               reshare_min=100),
                          check_interval=0.01, settled_interval=0.01)
    sharing.start()
    assert (read(ksm, "run"), read(ksm, "pages_to_scan"), read(ksm, "sleep_millisecs")) == \
        ("1", "90", str(page_sharing.SLEEP_MS))
    assert sharing.owned and sharing.describe() == "on: ksmd started by the hypervisor"
    assert json.loads(owner_record.read_text()) == {
        "pid": os.getpid(), "saved": {"sleep_millisecs": "200", "pages_to_scan": "100", "run": "0"}}
    sharing.domain_started()
    assert read(ksm, "pages_to_scan") == "900"
    assert sharing.describe() == "on: ksmd started by the hypervisor, scanning fast until the domains' pages are merged"
    (ksm / "full_scans").write_text("9\n")               # two full scans after the start
    for _ in range(200):
        if read(ksm, "pages_to_scan") == "90":
            break
        await asyncio.sleep(0.01)
    assert read(ksm, "pages_to_scan") == "90" and not sharing.tuner.boosting
    (ksm / "pages_sharing").write_text("20000\n")       # domains wrote merged pages: copies again
    for _ in range(200):
        if read(ksm, "pages_to_scan") == "900":
            break
        await asyncio.sleep(0.01)
    assert read(ksm, "pages_to_scan") == "900" and sharing.tuner.boosting
    await sharing.close()
    assert (read(ksm, "run"), read(ksm, "pages_to_scan"), read(ksm, "sleep_millisecs")) == \
        ("0", "100", "200")
    assert not sharing.owned and not owner_record.exists()


async def test_on_leaves_a_running_ksmd_alone(ksm):
    (ksm / "run").write_text("1\n")
    (ksm / "pages_to_scan").write_text("4242\n")
    sharing = PageSharing("on", ksm)
    sharing.start()
    sharing.domain_started()
    assert not sharing.owned and read(ksm, "pages_to_scan") == "4242"
    assert sharing.describe() == "on: ksmd running (the host's settings)"
    await sharing.close()
    assert read(ksm, "run") == "1" and read(ksm, "pages_to_scan") == "4242"


async def test_auto_offers_the_memory_and_never_touches_ksmd(ksm):
    sharing = PageSharing("auto", ksm)
    sharing.start()
    sharing.domain_started()
    assert sharing.offered and not sharing.owned
    assert read(ksm, "run") == "0" and read(ksm, "pages_to_scan") == "100"
    assert sharing.describe() == "auto: ksmd stopped"
    await sharing.close()


def test_off_offers_nothing(ksm):
    sharing = PageSharing("off", ksm)
    sharing.start()
    assert not sharing.offered and sharing.describe() == "off"


def test_figures_are_the_hosts_in_kib(ksm):
    assert PageSharing("auto", ksm).figures() == (25600 * 4, 512 * 4)
    assert PageSharing("auto", ksm / "missing").figures() == (0, 0)


def test_on_without_ksm_in_the_kernel_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="this kernel has no KSM") as err:
        PageSharing("on", tmp_path / "nothing").start()
    assert err.value.errno == errno.ENOENT and str(err.value).startswith("--page-sharing on: ")
    assert PageSharing("auto", tmp_path / "nothing").describe() == "auto: no KSM in this kernel"


def test_on_that_may_not_write_says_so_and_changes_nothing(ksm, monkeypatch):
    def write(self, name, value):       # as sysfs answers a user that is not root
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(PageSharing, "_write", write)
    with pytest.raises(OSError, match=r"cannot start ksmd \(.*run: Permission denied\); it needs root"):
        PageSharing("on", ksm).start()
    assert read(ksm, "run") == "0" and read(ksm, "pages_to_scan") == "100"


def test_on_that_fails_half_way_puts_back_what_it_wrote(ksm, monkeypatch):
    sharing = PageSharing("on", ksm)
    real = PageSharing._write

    def write(self, name, value):
        if name == "run":
            raise OSError(errno.EPERM, "Operation not permitted")
        real(self, name, value)
    monkeypatch.setattr(PageSharing, "_write", write)
    with pytest.raises(OSError, match="cannot start ksmd"):
        sharing.start()
    monkeypatch.setattr(PageSharing, "_write", real)
    assert not sharing.owned
    assert read(ksm, "sleep_millisecs") == "20" and read(ksm, "pages_to_scan") == "100"


def dead_pid() -> int:
    """A pid no process has: one past the kernel's limit."""
    return int(open("/proc/sys/kernel/pid_max").read()) + 1


async def test_on_takes_over_ksmd_from_a_hypervisor_that_died_without_putting_it_back(
        ksm, owner_record):
    """SIGKILLed while scanning fast: the next hypervisor with `on` finds
    its record, takes ksmd over at its own rates, and puts back the host's
    settings the dead one saved."""
    for name, value in (("run", 1), ("pages_to_scan", 1000), ("sleep_millisecs", 20)):
        (ksm / name).write_text(f"{value}\n")
    owner_record.parent.mkdir(parents=True)
    owner_record.write_text(json.dumps({"pid": dead_pid(), "saved": {
        "sleep_millisecs": "200", "pages_to_scan": "100", "run": "0"}}))
    sharing = PageSharing("on", ksm, ScanTuner(idle_pages=20))
    sharing.start()
    assert sharing.owned and read(ksm, "pages_to_scan") == "20"
    assert json.loads(owner_record.read_text())["pid"] == os.getpid()
    await sharing.close()
    assert (read(ksm, "run"), read(ksm, "pages_to_scan"), read(ksm, "sleep_millisecs")) == \
        ("0", "100", "200")
    assert not owner_record.exists()


@pytest.mark.parametrize("record", [
    {"pid": os.getppid(), "saved": {"sleep_millisecs": "200", "pages_to_scan": "100", "run": "0"}},
    {"pid": 1, "saved": {"run": "0"}},
    "not json",
])
async def test_ksmd_of_a_living_hypervisor_or_a_bad_record_is_left_alone(ksm, owner_record, record):
    (ksm / "run").write_text("1\n")
    (ksm / "pages_to_scan").write_text("1000\n")
    owner_record.parent.mkdir(parents=True)
    owner_record.write_text(record if isinstance(record, str) else json.dumps(record))
    sharing = PageSharing("on", ksm)
    sharing.start()
    await sharing.close()
    assert not sharing.owned and read(ksm, "run") == "1" and read(ksm, "pages_to_scan") == "1000"
    assert owner_record.exists()
