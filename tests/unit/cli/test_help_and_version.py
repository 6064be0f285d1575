"""`xenlab --version`, and a line of --help for every option and argument of
every command (issue 19: capture --direction, hypervisor --max-domains,
dom0 --vcpus and xl vcpu-set's N had none)."""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from xenlab.cli.main import DELEGATES, RAW_ARGV, build_parser


def test_version_is_the_installed_packages():
    result = subprocess.run([sys.executable, "-m", "xenlab.cli.main", "--version"],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, f"xenlab {version('xenlab')}\n")


def _command_parsers():
    for name, (target, _) in DELEGATES.items():
        if name in RAW_ARGV:        # iproute2's and brctl's own syntax: tested below
            continue
        module_name, _, entry = target.partition(":")
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"xenlab {name}")
        getattr(module, f"{entry}_arguments" if entry else "add_arguments")(parser)
        yield f"xenlab {name}", parser
    root = build_parser()
    (commands,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    for name in ("xl", "xenstore"):
        (sub,) = [a for a in commands.choices[name]._actions if isinstance(a, argparse._SubParsersAction)]
        for verb, parser in sub.choices.items():
            yield f"xenlab {name} {verb}", parser


@pytest.mark.parametrize("command, parser", list(_command_parsers()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_and_argument_has_help(command, parser):
    silent = [a.option_strings[0] if a.option_strings else a.metavar or a.dest for a in parser._actions
              if not isinstance(a, argparse._HelpAction) and not a.help]
    assert silent == [], f"{command}: no help for {', '.join(map(str, silent))}"


@pytest.mark.parametrize("argv, says", [
    (["capture", "--help"], "which frames: tx"),
    (["hypervisor", "--help"], "domains the host may run at once"),
    (["dom0", "--help"], "Domain-0's vCPUs"),
    (["xl", "vcpu-set", "--help"], "vCPUs to have online"),
])
def test_the_help_a_new_user_asked_for_is_printed(argv, says):
    result = subprocess.run([sys.executable, "-m", "xenlab.cli.main", *argv],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and says in " ".join(result.stdout.split())


@pytest.mark.parametrize("argv, says", [
    (["bridge", "help"], "Usage: bridge [ OPTIONS ] OBJECT { COMMAND | help }"),
    (["brctl", "--help"], "Usage: brctl [commands]"),
])
def test_bridge_and_brctl_say_how_to_use_them_without_a_lab(argv, says, tmp_path):
    result = subprocess.run([sys.executable, "-m", "xenlab.cli.main", *argv], capture_output=True,
                            text=True, timeout=60,
                            env=dict(os.environ, XENLAB_RUNDIR=str(tmp_path / "none")))
    assert result.returncode == 0, result.stderr
    assert says in result.stdout
