"""xenlab.eventloop.wait_for: asyncio.wait_for's contract (the result, the
error, TimeoutError), without 3.11's loss of a cancellation that comes as
the awaited thing finishes; and the services use it, not asyncio's."""
from __future__ import annotations

import asyncio
import errno
import pathlib

import pytest

from xenlab import eventloop
from xenlab.xen.errors import XenError

pytestmark = pytest.mark.timeout(30)

SERVICES = pathlib.Path(__file__).resolve().parents[2] / "services" / "xenlab"


async def test_it_hands_back_the_result_and_the_error():
    async def answer():
        return 42

    async def refuse():
        raise XenError(errno.ESRCH, "d3 is gone")

    assert await eventloop.wait_for(answer(), 1) == 42
    with pytest.raises(XenError):
        await eventloop.wait_for(refuse(), 1)
    assert await eventloop.wait_for(answer(), None) == 42


async def test_it_times_out_and_cancels_what_it_waited_for():
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await eventloop.wait_for(never, 0.05)
    assert never.cancelled()


@pytest.mark.parametrize("outcome", ["result", "error"])
async def test_a_cancellation_that_comes_as_the_awaited_finishes_is_not_lost(outcome):
    """The hang of a kernel closing its devices while their domain is
    destroyed: a device task unwatching (its store refusing, the domain
    gone) is cancelled in the same turn of the loop as the refusal comes.
    It must end cancelled; with 3.11's asyncio.wait_for it took the
    refusal, went on to wait for its next event, and its closer waited
    for ever."""
    reply = asyncio.get_running_loop().create_future()
    went_on = []

    async def device():
        try:
            await eventloop.wait_for(reply, 2.0)
        except XenError:
            pass                                  # "the store may be gone with the domain"
        went_on.append(True)
        await asyncio.Event().wait()              # its next wait for work

    task = asyncio.get_running_loop().create_task(device())
    await asyncio.sleep(0)
    if outcome == "result":
        reply.set_result(None)
    else:
        reply.set_exception(XenError(errno.ESRCH, "d3 is gone"))
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.cancelled()
    assert went_on == []


async def test_an_outer_cancellation_is_not_taken_for_the_timeout():
    started = asyncio.Event()

    async def waiter():
        started.set()
        await eventloop.wait_for(asyncio.Event().wait(), 10)

    task = asyncio.get_running_loop().create_task(waiter())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_services_use_it_not_asyncios():
    users = sorted(str(path.relative_to(SERVICES)) for path in SERVICES.rglob("*.py")
                   if "asyncio.wait_for(" in path.read_text())
    assert users == [], f"asyncio.wait_for in {users}: use xenlab.eventloop.wait_for"
