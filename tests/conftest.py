"""Fixtures every test folder can use."""
from __future__ import annotations

import shutil

import pytest

from xenlab.testing import short_tempdir


@pytest.fixture
def sock_dir():
    """A directory short enough for unix socket paths (108 bytes), removed after the test."""
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
