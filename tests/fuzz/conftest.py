"""Fixtures for the fuzzers: ``seed`` (printed; XENLAB_FUZZ_SEED replays one,
"random" draws one) and ``netlab`` (fuzz_helpers.NetLab, Domain-0 booted)."""
from __future__ import annotations

import os
import random

import pytest

from fuzz_helpers import NetLab

DEFAULT_SEED = 20240611


@pytest.fixture
def seed() -> int:
    text = os.environ.get("XENLAB_FUZZ_SEED", str(DEFAULT_SEED))
    value = random.SystemRandom().randrange(1 << 32) if text == "random" else int(text)
    print(f"\nfuzz seed {value} (XENLAB_FUZZ_SEED={value} replays it)")
    return value


@pytest.fixture
async def netlab(hypervisor):
    lab = NetLab(hypervisor)
    await lab.boot_dom0()
    return lab
