"""`xenlab status` prints the XENSTORED_PATH line a user exports to point
Xen's own xenstore tools at the lab."""
from __future__ import annotations

import argparse
import json
import os
import socket

from xenlab.client import Rundir
from xenlab.lab import cli


def test_status_prints_the_xenstored_path_to_export(sock_dir, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr("xenlab.cli.main.main", lambda argv: calls.append(argv))
    (sock_dir / "lab.json").write_text(json.dumps(
        {"name": "t", "pid": os.getpid(), "services": {}, "domains": {}}))
    path = Rundir(sock_dir).xenstored_socket
    path.parent.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    try:
        assert cli.status(argparse.Namespace(rundir=sock_dir)) == 0
    finally:
        listener.close()
    assert f"\nXENSTORED_PATH={path}\n" in capsys.readouterr().out
    assert calls                            # and the rest of the status still follows


def test_status_says_nothing_of_a_socket_that_is_not_there(sock_dir, capsys, monkeypatch):
    monkeypatch.setattr("xenlab.cli.main.main", lambda argv: None)
    (sock_dir / "lab.json").write_text(json.dumps({"name": "t", "pid": os.getpid()}))
    cli.status(argparse.Namespace(rundir=sock_dir))
    assert "XENSTORED_PATH" not in capsys.readouterr().out
