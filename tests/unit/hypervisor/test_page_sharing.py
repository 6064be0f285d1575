"""Page sharing: ksmd's scan rate as domains start (ScanTuner, no I/O), and
the hypervisor's handling of the host's KSM switches, on a directory that
stands in for /sys/kernel/mm/ksm."""
from __future__ import annotations

import asyncio
import errno

import pytest

from xenlab.hypervisor import page_sharing
from xenlab.hypervisor.page_sharing import PageSharing, ScanTuner


# -- the tuner -------------------------------------------------------------------
def test_a_start_boosts_until_the_scans_after_the_last_start_are_done():
    tuner = ScanTuner(boost_pages=1000, idle_pages=100, boost_scans=3)
    assert tuner.rate() == 100 and not tuner.boosting
    assert tuner.started(full_scans=10) == 1000
    assert tuner.scanned(12) is None and tuner.boosting
    assert tuner.started(full_scans=12) is None        # boosting already: nothing to write
    assert tuner.scanned(14) is None                   # three scans after 12, not after 10
    assert tuner.scanned(15) == 100 and not tuner.boosting
    assert tuner.scanned(16) is None                   # idle: nothing more to write


def test_a_start_after_the_boost_ended_boosts_again():
    tuner = ScanTuner(boost_pages=500, idle_pages=50, boost_scans=1)
    tuner.started(0)
    assert tuner.scanned(1) == 50
    assert tuner.started(1) == 500 and tuner.rate() == 500


# -- the host's switches -------------------------------------------------------------
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


async def test_on_starts_a_stopped_ksmd_boosts_per_domain_and_puts_back_the_hosts_settings(ksm):
    (ksm / "sleep_millisecs").write_text("200\n")
    sharing = PageSharing("on", ksm, ScanTuner(boost_pages=900, idle_pages=90, boost_scans=2),
                          check_interval=0.01)
    sharing.start()
    assert (read(ksm, "run"), read(ksm, "pages_to_scan"), read(ksm, "sleep_millisecs")) == \
        ("1", "90", str(page_sharing.SLEEP_MS))
    assert sharing.owned and sharing.describe() == "on: ksmd started by the hypervisor"
    sharing.domain_started()
    assert read(ksm, "pages_to_scan") == "900"
    assert sharing.describe() == "on: ksmd started by the hypervisor, scanning fast while domains start"
    (ksm / "full_scans").write_text("9\n")               # two full scans after the start
    for _ in range(200):
        if read(ksm, "pages_to_scan") == "90":
            break
        await asyncio.sleep(0.01)
    assert read(ksm, "pages_to_scan") == "90" and not sharing.tuner.boosting
    await sharing.close()
    assert (read(ksm, "run"), read(ksm, "pages_to_scan"), read(ksm, "sleep_millisecs")) == \
        ("0", "100", "200")
    assert not sharing.owned


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
    assert err.value.errno == errno.ENOENT
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
