"""xl migrate's transport command (xl's "rune"): SSHCOMMAND HOST and the
receiver, or HOST itself when SSHCOMMAND is empty; and which HOST is
reached directly (a host of this pool, a rundir) rather than through one."""
from __future__ import annotations

import pytest

from xenlab.cli.xl import CliError, _migration_target, migration_rune


def test_the_rune_is_sshcommand_host_and_migrate_receive():
    assert migration_rune("ssh", "h2", False) == "exec ssh h2 xenlab xl migrate-receive"
    assert migration_rune("ssh -p 2222", "root@h2", True) == \
        "exec ssh -p 2222 root@h2 xenlab xl migrate-receive -p"
    assert migration_rune("", "nc h2 9999", False) == "nc h2 9999"


def test_a_pool_host_or_a_rundir_is_reached_directly_and_anything_else_is_not(tmp_path):
    hosts = tmp_path / "pool" / "hosts"
    (hosts / "a").mkdir(parents=True)
    (hosts / "b").mkdir()
    assert _migration_target(hosts / "a", "b") == (hosts / "b").resolve()
    assert _migration_target(hosts / "a", str(tmp_path)) == tmp_path.resolve()
    assert _migration_target(hosts / "a", "h2.example.org") is None
    with pytest.raises(CliError, match="is this host"):
        _migration_target(hosts / "a", "a")
