"""Fixtures every test folder can use."""
from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, settings

from xenlab.testing import short_tempdir

# ./dev mutate runs the suite once per mutant (pytest --hypothesis-profile=mutate):
# the same examples every run, so that a score does not move between runs, and
# no deadline or health check, so that a loaded machine is not counted as a kill.
settings.register_profile("mutate", derandomize=True, database=None, deadline=None,
                          suppress_health_check=list(HealthCheck))


@pytest.fixture
def sock_dir():
    """A directory short enough for unix socket paths (108 bytes), removed after the test."""
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
