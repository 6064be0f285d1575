"""xenlab.testing.eventually: the first true value of a check, or a failure
that says what was awaited and what the check last saw."""
from __future__ import annotations

import asyncio
import threading

import pytest

from xenlab.testing import Unmet, eventually, eventually_blocking


async def test_it_returns_the_first_true_value_another_task_brings_about():
    box: list[str] = []
    asyncio.get_running_loop().call_later(0.05, box.append, "eth0")
    assert await eventually(lambda: box and box[0], "eth0 to appear") == "eth0"


async def test_an_awaitable_check_is_awaited():
    calls = []

    async def check():
        calls.append(1)
        return len(calls) >= 3 and "third"
    assert await eventually(check, "a third call") == "third"


async def test_it_fails_naming_what_it_awaited_and_the_last_value():
    with pytest.raises(Unmet) as info:
        await eventually(lambda: [], "d3's eth0 to connect", timeout=0.05)
    assert isinstance(info.value, AssertionError)        # pytest reports an assertion
    assert str(info.value) == ("timed out after 0.05s waiting for d3's eth0 to connect "
                               "(the check last returned [])")
    assert (info.value.what, info.value.last) == ("d3's eth0 to connect", [])


async def test_a_description_function_is_asked_at_the_failure():
    state = {"sent": 0}

    def check():
        state["sent"] += 1
        return False
    with pytest.raises(Unmet, match=r"waiting for every frame \(sent [1-9]\d*\)"):
        await eventually(check, lambda: f"every frame (sent {state['sent']})", timeout=0.05)


async def test_an_exception_in_the_check_is_not_retried():
    calls = []

    def check():
        calls.append(1)
        raise KeyError("vif9.0")
    with pytest.raises(KeyError):
        await eventually(check, "vif9.0")
    assert len(calls) == 1


@pytest.mark.parametrize("kw", [{"timeout": 0}, {"timeout": -1}, {"every": 0}])
async def test_a_wait_needs_a_positive_timeout_and_period(kw):
    with pytest.raises(ValueError):
        await eventually(lambda: True, "anything", **kw)


def test_the_blocking_form_waits_for_another_thread():
    box: list[int] = []
    threading.Timer(0.05, box.append, (7,)).start()
    assert eventually_blocking(lambda: box and box[0], "the thread's 7", every=0.01) == 7
    with pytest.raises(Unmet, match="waiting for nothing"):
        eventually_blocking(lambda: None, "nothing", timeout=0.05)


def test_the_blocking_form_refuses_an_async_check():
    async def check():
        return True
    with pytest.raises(TypeError, match="use eventually"):
        eventually_blocking(check, "an async check")
