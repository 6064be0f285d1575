"""A domain's life with a real guest, through `xenlab xl`: xl shutdown of a
paused domain writes control/shutdown and returns, the guest acts on it
once every pause is undone, `-w` waits and says how the domain ended, and
a guest process that dies is a crash that gets on_crash."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from xenlab.cli.main import main
from xenlab.hypervisor.caller import DOM0

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def wait_for(condition, what: str, timeout: float = 30.0):
    for _ in range(int(timeout / 0.05)):
        if (value := condition()):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read(hv, path: str) -> bytes | None:
    try:
        return hv.xenstore.read(DOM0, path)
    except Exception:
        return None


async def xl(lab, capsys, *argv: str) -> tuple[int, str, str]:
    """`xenlab xl ARGV` against the fixture's hypervisor, from another
    thread; its exit status, stdout and stderr."""
    capsys.readouterr()
    rc = await asyncio.to_thread(main, ["xl", *argv], {"XENLAB_RUNDIR": str(lab.rundir)})
    out = capsys.readouterr()
    return rc, out.out, out.err


async def state(lab, capsys, name: str) -> str:
    rc, out, err = await xl(lab, capsys, "list", name)
    assert rc == 0, err
    return out.splitlines()[1].split()[4]


async def booted(lab, name: str, **spec) -> int:
    domid, _ = await lab.create_domain(name, memory_mb=32, launcher="local", **spec)
    await wait_for(lambda: read(lab.hv, f"/local/domain/{domid}/control/feature-poweroff") == b"1",
                   f"{name} to boot")
    return domid


async def test_shutdown_of_a_paused_domain_is_written_and_acted_on_once_unpaused(hypervisor, capsys):
    """xl shutdown of a paused domain was refused with EBUSY; and one
    unpause after two pauses let the domain run."""
    domid = await booted(hypervisor, "web", on_poweroff="preserve")
    for _ in range(2):
        assert (await xl(hypervisor, capsys, "pause", "web"))[0] == 0
    rc, _, err = await xl(hypervisor, capsys, "shutdown", "web")
    assert (rc, err) == (0, f"Shutting down domain {domid}\n")
    assert read(hypervisor.hv, f"/local/domain/{domid}/control/shutdown") == b"poweroff"
    assert (await xl(hypervisor, capsys, "unpause", "web"))[0] == 0
    assert await state(hypervisor, capsys, "web") == "--p---"          # paused once more
    assert read(hypervisor.hv, f"/local/domain/{domid}/control/shutdown") == b"poweroff"
    assert (await xl(hypervisor, capsys, "unpause", "web"))[0] == 0
    dom = hypervisor.hv.domains.get(domid)
    await hypervisor.hv.wait_gone_or_stopped(dom, 30.0)
    assert await state(hypervisor, capsys, "web") == "---s--"
    assert dom.shutdown_reason == "poweroff"
    # The guest acknowledged the request by clearing it, as Linux's shutdown_handler does.
    assert read(hypervisor.hv, f"/local/domain/{domid}/control/shutdown") == b""
    rc, _, err = await xl(hypervisor, capsys, "unpause", "web")
    assert rc == 1 and len(err.splitlines()) == 1


async def test_shutdown_w_says_the_domain_shut_down_with_its_reason_code(hypervisor, capsys):
    domid = await booted(hypervisor, "web", on_poweroff="preserve")
    rc, _, err = await xl(hypervisor, capsys, "shutdown", "-w", "web")
    assert rc == 0, err
    assert err.splitlines() == [f"Shutting down domain {domid}", "Waiting for 1 domains",
                                f"Domain {domid} has been shut down, reason code 0"]


async def test_reboot_w_waits_for_the_old_domain_and_a_new_one_runs(hypervisor, capsys):
    domid = await booted(hypervisor, "web")            # on_reboot defaults to restart
    rc, _, err = await xl(hypervisor, capsys, "reboot", "-w", "web")
    assert rc == 0, err
    assert err.splitlines() == [f"Rebooting domain {domid}", "Waiting for 1 domains",
                                f"Domain {domid} has been destroyed"]
    again = hypervisor.hv.domains.lookup(name="web")
    assert again.domid != domid and domid not in hypervisor.hv.domains


async def test_a_guest_that_dies_has_crashed_and_gets_on_crash(hypervisor, capsys):
    domid = await booted(hypervisor, "web", on_crash="preserve", on_poweroff="destroy")
    os.kill(hypervisor.hv.process(domid).pid, signal.SIGKILL)
    dom = hypervisor.hv.domains.get(domid)
    await hypervisor.hv.wait_gone_or_stopped(dom, 30.0)
    assert await state(hypervisor, capsys, "web") == "---sc-"
    assert dom.shutdown_reason == "crash"
