"""XenbusClient.transaction: a body that fails ends its transaction
without committing, and the caller sees the body's failure even when the
abort fails too (the domain's xenstore connection gone with it)."""
from __future__ import annotations

import asyncio
import errno

import pytest

from xenlab.domain.xenbus import XenbusClient
from xenlab.xen.errors import XenStoreError


class Store:
    """The transaction calls of a xenstore transport; once ``gone``, every
    call is refused as xenstored refuses a destroyed domain's."""

    def __init__(self):
        self.gone = False
        self.ended: list[tuple[int, bool]] = []
        self.body_started = asyncio.Event()

    def _check(self) -> None:
        if self.gone:
            raise XenStoreError(errno.EACCES, "bad credentials for d3")

    async def transaction_start(self) -> int:
        self._check()
        return 7

    async def transaction_end(self, tx: int, commit: bool) -> None:
        self._check()
        self.ended.append((tx, commit))


async def test_a_failed_body_aborts_its_transaction():
    store = Store()
    client = XenbusClient(store, 3)

    async def body(tx):
        raise XenStoreError(errno.EINVAL, "no")

    with pytest.raises(XenStoreError) as err:
        await client.transaction(body)
    assert err.value.errno == errno.EINVAL
    assert store.ended == [(7, False)]


async def test_the_bodys_failure_is_seen_when_the_abort_fails_too():
    store = Store()
    client = XenbusClient(store, 3)

    async def body(tx):
        store.gone = True
        raise XenStoreError(errno.EINVAL, "the body's own error")

    with pytest.raises(XenStoreError) as err:
        await client.transaction(body)
    assert (err.value.errno, err.value.message) == (errno.EINVAL, "the body's own error")
    assert store.ended == []


async def test_a_cancelled_body_stays_cancelled_when_the_abort_is_refused():
    """The report's hang: a device task writing its state in a transaction
    is cancelled (its kernel closing) just as its domain is destroyed. The
    abort is refused; the task must still end as cancelled, not go on with
    the refusal in place of its cancellation (and its closer wait for ever)."""
    store = Store()
    client = XenbusClient(store, 3)
    went_on = []

    async def body(tx):
        store.body_started.set()
        await asyncio.Event().wait()

    async def device_step():
        try:
            await client.transaction(body)
        except XenStoreError:
            went_on.append("refusal caught")     # what switch_state does with a refusal
        await asyncio.Event().wait()              # the device's next wait for work

    task = asyncio.get_running_loop().create_task(device_step())
    await store.body_started.wait()
    store.gone = True
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    assert task.cancelled()
    assert went_on == []
