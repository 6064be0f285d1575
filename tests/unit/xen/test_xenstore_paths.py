"""The vif paths are read back as they are written: netback finds its
backend id, the frontend's domain and the device from its directory's path."""
from __future__ import annotations

import pytest

from xenlab.xen.xenstore_paths import backend_path, parse_backend_path


def test_a_backend_path_reads_back_its_ids():
    assert parse_backend_path(backend_path(0, 7, 2)) == (0, 7, 2)


@pytest.mark.parametrize("path", [
    "/local/domain/0/backend/vif/7", "/local/domain/0/backend/vif/7/2/x",
    "/local/domain/0/backend/vbd/7/2", "/local/domain/0/device/vif/2",
    "/local/domain/a/backend/vif/7/2", "local/domain/0/backend/vif/7/2",
])
def test_anything_else_is_not_a_vif_backend_path(path):
    assert parse_backend_path(path) is None
