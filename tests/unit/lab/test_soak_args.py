"""`xenlab soak`'s arguments: a length and a flood it can run, or a clear error."""
from __future__ import annotations

import argparse

import pytest

from xenlab.lab import soak


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xenlab soak")
    soak.add_arguments(p)
    return p


@pytest.mark.parametrize("argv, says", [
    (["--minutes", "-1"], "--minutes: -1: the soak needs a finite length above 0"),
    (["--seconds", "0"], "--seconds: 0: the soak needs a finite length above 0"),
    (["--seconds", "inf"], "finite length above 0"),
    (["--seconds", "nan"], "finite length above 0"),
    (["--minutes", "abc"], "--minutes: 'abc' is not a number"),
    (["--flood", "-5"], "--flood: -5 frames: 0 (no flood) or more"),
    (["--flood", "1e6"], "--flood: '1e6' is not a whole number"),
    (["--minutes", "1", "--seconds", "5"], "not allowed with argument"),
])
def test_a_length_or_flood_it_cannot_run_is_refused(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(argv)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_good_arguments_parse():
    args = parser().parse_args(["--seconds", "2.5", "--flood", "0"])
    assert (args.seconds, args.minutes, args.flood) == (2.5, None, 0)
