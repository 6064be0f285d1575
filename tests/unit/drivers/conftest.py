"""The ``vif`` fixture: both ends of one vif on plain memory (vif_pair)."""
from __future__ import annotations

import pytest

from vif_pair import Vif, make_vif


@pytest.fixture
def vif() -> Vif:
    return make_vif()
