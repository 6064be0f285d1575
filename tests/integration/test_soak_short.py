"""The soak in short (`xenlab soak` runs it for minutes, with a MAC flood of
1,000,000 frames): mixed traffic, a vif detached and attached, a domU killed
and restarted, a MAC flood, and at the end every frame accounted for at
every hop of every path."""
import shutil

import pytest

from xenlab.lab.soak import run_soak
from xenlab.testing import short_tempdir

pytestmark = pytest.mark.integration


def print_logs(rundir) -> None:
    for log in sorted((rundir / "logs").glob("*.log")):
        print(f"---- {log.name} ----\n" + log.read_text(errors="replace")[-4000:])


async def test_a_short_soak_accounts_for_every_frame():
    rundir = short_tempdir("xl-soak-")
    try:
        result = await run_soak(rundir, seconds=20, flood_frames=20_000, progress=lambda s: None,
                                log_level="DEBUG")
        print(result.report())
        assert result.errors == []
        assert min(result.faults.values()) >= 1, result.faults
        assert result.traffic.get("ping replies", 0) > 0 and result.traffic.get("udp echoes", 0) > 0
        assert result.traffic.get("injected", 0) > 0 and result.traffic.get("blasted", 0) > 0
        checked = [h for h in result.hops if h.checked]
        assert len(checked) > 30 and sum(h.sent for h in checked) > 10_000
        assert result.unaccounted == [], "\n".join(
            f"{h.path} {h.name}: {h.unaccounted}" for h in result.unaccounted)
        # The killed domain's ring hops are reported as such, not silently passed.
        assert any(not h.checked and "killed" in h.note for h in result.hops)
    except BaseException:
        print_logs(rundir)
        raise
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
