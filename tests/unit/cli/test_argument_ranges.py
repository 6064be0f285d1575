"""Numbers a command cannot use are refused when the command line is parsed
(exit status 2, a message naming the flag), before any lab is reached: not
turned into a default (ping -c 0 used to send 4, soak --minutes 0 ran 5
minutes) and not passed on to fail later (ping -c -1 and capture -c -1 ended
in a protobuf traceback or "Value out of range")."""
from __future__ import annotations

import argparse

import pytest

from xenlab import argtypes
from xenlab.cli.main import main

ENV = {"XENLAB_RUNDIR": "/nonexistent/xenlab-test"}   # nothing is ever reached


@pytest.mark.parametrize("argv, says", [
    (["ping", "web", "10.0.0.2", "-c", "0"], "-c/--count: 0 is out of range (1..100,000)"),
    (["ping", "web", "10.0.0.2", "-c", "-1"], "-c/--count: -1 is out of range"),
    (["ping", "web", "10.0.0.2", "-s", "0"], "-s/--size: 0 is out of range (1..65,507)"),
    (["ping", "web", "10.0.0.2", "-s", "70000"], "-s/--size: 70,000 is out of range"),
    (["ping", "web", "10.0.0.2", "-i", "0"], "-i/--interval: 0 s is out of range (at least 0.0001"),
    (["ping", "web", "10.0.0.2", "-i", "nan"], "-i/--interval: nan s is out of range"),
    (["ping", "web", "10.0.0.2", "-W", "0"], "-W/--timeout: 0 s is out of range (above 0"),
    (["ping", "web", "web.example"], "dest: 'web.example' is not an IPv4 address"),
    (["inject", "web:eth0", "--timeout", "0"], "--timeout: 0 s is out of range (above 0"),
    (["capture", "web:eth0", "-w", "x.pcap", "-c", "5", "--timeout", "-1"], "--timeout: -1 s is out of range"),
    (["capture", "web:eth0", "-w", "x.pcap", "-c", "-1"], "-c/--count: -1 is out of range (at least 1)"),
    (["capture", "web:eth0", "-w", "x.pcap", "--duration", "-1"], "--duration: -1 s is out of range"),
    (["capture", "web:eth0", "-w", "x.pcap", "--duration", "inf"], "--duration: inf s is out of range"),
    (["inject", "web:eth0", "--count", "0"], "--count: 0 is out of range (at least 1)"),
    (["inject", "web:eth0", "--rate", "-5"], "--rate: -5: a rate is a finite number above 0"),
    (["inject", "web:eth0", "--rate", "0"], "--rate: 0: a rate is a finite number above 0"),
    (["soak", "--minutes", "0"], "--minutes: 0 min is out of range (above 0 min)"),
    (["soak", "--seconds", "nan"], "--seconds: nan s is out of range"),
    (["soak", "--minutes", "abc"], "--minutes: 'abc' is not a number"),
    (["soak", "--flood", "-5"], "--flood: -5 is out of range (at least 0)"),
    (["soak", "--minutes", "1", "--seconds", "5"], "not allowed with argument"),
    (["bench", "--pings", "0"], "--pings: 0 is out of range (1..100,000)"),
    (["bench", "--count", "1.5"], "--count: '1.5' is not a whole number"),
    (["bench", "--sizes", "10"], "frame size(s) 10 out of range 18..1514"),
    (["bench", "--sizes", "64,99999"], "frame size(s) 99999 out of range"),
    (["bench", "--interval", "-1"], "--interval: -1 s is out of range"),
    (["bench", "--batch", "5000"], "--batch: 5,000 is out of range (1..1,024)"),
])
def test_a_number_out_of_range_is_refused_before_anything_runs(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv, ENV)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"xenlab {argv[0]}: error: argument " in err and says in err


def test_the_types_take_what_is_in_range():
    assert argtypes.whole(1, 10)("10") == 10 and argtypes.whole(0)("0") == 0
    assert argtypes.seconds(0.5, 2)("0.5") == 0.5
    assert argtypes.seconds(0, above=True)("0.001") == 0.001
    assert argtypes.rate("1e3") == 1000.0
    for parse, text in [(argtypes.whole(1), "1.0"), (argtypes.seconds(0), "-0.1"),
                        (argtypes.seconds(0, 2), "2.5"), (argtypes.rate, "inf"), (argtypes.rate, "x")]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
