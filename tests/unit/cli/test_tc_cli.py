"""`xenlab tc`'s command line: tc's syntax for the qdisc subset, one line
naming whatever is not supported, before any lab is reached."""
from __future__ import annotations

import pytest

from xenlab.cli.tc import TcCommand, Usage, format_qdisc, parse_tc, tc_main
from xenlab.proto import qdisc_pb2


@pytest.mark.parametrize("argv,command", [
    ("qdisc add dev vif1.0 root netem delay 20ms 5ms distribution normal loss 1% duplicate 0.1% "
     "corrupt 0.1% reorder 25% rate 10mbit limit 1000",
     TcCommand("add", "vif1.0", "delay 20ms 5ms distribution normal loss 1% duplicate 0.1% corrupt 0.1% "
                                "reorder 25% rate 10mbit limit 1000".split())),
    ("qdisc change dev veth1.0 root netem loss random 5%",
     TcCommand("change", "veth1.0", ["loss", "random", "5%"])),
    ("qdisc replace dev xenbr0:to-xenbr1 netem delay 1ms",
     TcCommand("replace", "xenbr0:to-xenbr1", ["delay", "1ms"])),
    ("qdisc del dev vif1.0 root", TcCommand("del", "vif1.0")),
    ("qdisc delete dev vif1.0 root netem", TcCommand("del", "vif1.0")),
    ("qdisc show", TcCommand("show")),
    ("qdisc", TcCommand("show")),
    ("qdisc ls dev vif1.0", TcCommand("show", "vif1.0")),
    ("-s qdisc show dev vif1.0", TcCommand("show", "vif1.0", stats=True)),
])
def test_good_command_lines(argv, command):
    assert parse_tc(argv.split()) == command


def test_rundir_may_come_anywhere(tmp_path):
    cmd = parse_tc(["qdisc", "show", "--rundir", str(tmp_path)])
    assert cmd.rundir == tmp_path and cmd.op == "show"


@pytest.mark.parametrize("argv,message", [
    ("filter add dev vif1.0", 'object "filter" is not supported (only qdisc)'),
    ("qdisc add dev vif1.0 root tbf rate 1mbit", 'qdisc kind "tbf" is not supported (only netem)'),
    ("qdisc add dev vif1.0 parent 1:1 netem delay 1ms", '"parent" is not supported'),
    ("qdisc add dev vif1.0 handle 1: netem delay 1ms", '"handle" is not supported'),
    ("qdisc add root netem delay 1ms", "qdisc add needs a device: dev NAME"),
    ("qdisc add dev", '"dev" needs a device name'),
    ("qdisc frob dev vif1.0", 'command "frob" is unknown'),
    ("qdisc del", "qdisc del needs a device"),
    ("qdisc del dev vif1.0 root netem delay 1ms", "qdisc del takes no netem options"),
    ("qdisc show dev vif1.0 netem delay 1ms", "qdisc show takes no qdisc options"),
    ("qdisc add dev vif1.0 root netem delay 20ms 5ms 25%", "delay: correlation is not supported"),
    ("qdisc add dev vif1.0 root netem loss gemodel 1%", "loss gemodel (Gilbert-Elliott) is not supported"),
    ("qdisc add dev vif1.0 root netem rate 10%", "a share of the device's speed is not supported"),
    ("qdisc add dev vif1.0 root netem slot 1ms", "slot is not supported"),
    ("-x qdisc show", 'option "-x" is unknown'),
])
def test_bad_command_lines_get_one_line(argv, message):
    with pytest.raises(Usage) as err:
        parse_tc(argv.split())
    assert message in str(err.value) and "\n" not in str(err.value)
    assert err.value.status == 1


def test_help_says_the_syntax_and_needs_no_lab(capsys):
    assert tc_main(["--help"], {"XENLAB_RUNDIR": "/nonexistent"}) == 0
    out = capsys.readouterr().out
    assert "qdisc { add | change | replace | del | show }" in out
    assert "[ delay TIME [ JITTER ] ]" in out and "[ rate RATE ]" in out


def test_a_bad_option_fails_before_looking_for_a_lab(capsys):
    assert tc_main(["qdisc", "add", "dev", "vif1.0", "root", "netem", "ecn"],
                   {"XENLAB_RUNDIR": "/nonexistent"}) == 1
    assert capsys.readouterr().err == "xenlab tc: ecn is not supported\n"


def test_no_lab_is_one_line(capsys, tmp_path):
    assert tc_main(["qdisc", "show"], {"XENLAB_RUNDIR": str(tmp_path / "none")}) == 2
    err = capsys.readouterr().err
    assert err.startswith("xenlab tc: ") and err.count("\n") == 1


def test_show_prints_tcs_layout():
    info = qdisc_pb2.QdiscInfo(dev="vif1.0", line="qdisc netem 8001: root refcnt 2 limit 1000 "
                                                  "delay 20ms  5ms loss 1%",
                               stats={"sent": 90, "loss": 10, "limit": 0, "backlog": 2, "duplicated": 1})
    assert format_qdisc(info) == "qdisc netem 8001: root refcnt 2 limit 1000 delay 20ms  5ms loss 1%"
    assert format_qdisc(info, dev=True).startswith("qdisc netem 8001: dev vif1.0 root refcnt 2 limit")
    assert format_qdisc(info, stats=True).splitlines()[1:] == [
        " Sent 90 pkt (dropped 10, overlimits 0 requeues 0)", " backlog 2p",
        " duplicated 1 corrupted 0 reordered 0"]
