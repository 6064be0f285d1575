"""netem in the lab file: [[domain]] netem / netem_tx and [[link]] netem,
checked as the file is read, and the devices `xenlab up` sets them on."""
from __future__ import annotations

import pytest

from xenlab.lab.spec import Shaping, link_ends, parse_lab, shaping_devices
from xenlab.xen.errors import ConfigError

LAB = """
[[bridge]]
name = "xenbr0"
[[bridge]]
name = "xenbr1"
[[link]]
bridges = ["xenbr0", "xenbr1"]
[[link]]
bridges = ["xenbr1", "xenbr0"]
netem = "delay 5ms"
[[domain]]
name = "web"
vif = ["ip=10.0.0.2/24", "ip=10.1.0.2/24,bridge=xenbr1"]
netem = "delay 20ms 5ms distribution normal loss 1%"
netem_tx = { eth1 = "rate 10mbit" }
[[domain]]
name = "db"
vif = ["ip=10.0.0.3/24"]
"""


def test_netems_are_read_with_the_devices_they_go_on():
    spec = parse_lab(LAB, "lab.toml")
    assert spec.shaping == (
        Shaping(("delay", "20ms", "5ms", "distribution", "normal", "loss", "1%"), "web", None, "rx"),
        Shaping(("rate", "10mbit"), "web", 1, "tx"),
        Shaping(("delay", "5ms"), link=1),
    )
    # web keeps its xl.cfg as it was: netem is the lab's key, not xl's.
    assert "netem" not in spec.domain("web").text
    assert link_ends(spec, 0) == ("xenbr0:to-xenbr1", "xenbr1:to-xenbr0")
    assert link_ends(spec, 1) == ("xenbr1:to-xenbr0.1", "xenbr0:to-xenbr1.1")
    assert shaping_devices(spec, {"web": 3, "db": 4}) == [
        ("vif3.0", ("delay", "20ms", "5ms", "distribution", "normal", "loss", "1%")),
        ("vif3.1", ("delay", "20ms", "5ms", "distribution", "normal", "loss", "1%")),
        ("veth3.1", ("rate", "10mbit")),
        ("xenbr1:to-xenbr0.1", ("delay", "5ms")), ("xenbr0:to-xenbr1.1", ("delay", "5ms")),
    ]


@pytest.mark.parametrize("change,message", [
    ('netem = "delay 20ms 5ms 25%"', "lab.toml:5: domain db: netem: delay: correlation is not supported"),
    ('netem = "loss lots"', 'lab.toml:5: domain db: netem: illegal percentage "lots"'),
    ('netem = 20', "lab.toml:5: domain db: netem must be tc's netem options as a string"),
    ('netem_tx = { eth3 = "delay 1ms" }', "lab.toml:5: domain db: netem_tx: no interface 'eth3' (the domain has eth0)"),
    ('netem = "slot 1ms"', "lab.toml:5: domain db: netem: slot is not supported"),
])
def test_a_bad_netem_is_an_error_naming_the_file_line_and_domain(change, message):
    text = f'[[domain]]\nname = "db"\nmemory = 32\nvif = ["ip=10.0.0.3/24"]\n{change}\n'
    with pytest.raises(ConfigError) as err:
        parse_lab(text, "lab.toml")
    assert err.value.message.startswith(message), err.value.message


def test_a_domain_without_a_vif_cannot_be_shaped():
    with pytest.raises(ConfigError) as err:
        parse_lab('[[domain]]\nname = "db"\nnetem = "delay 1ms"\n', "lab.toml")
    assert "needs a vif to shape" in err.value.message


def test_a_bad_link_netem_names_the_link():
    text = LAB.replace('netem = "delay 5ms"', 'netem = "reorder 5%"')
    with pytest.raises(ConfigError) as err:
        parse_lab(text, "lab.toml")
    assert err.value.message == ("lab.toml:10: link #2: netem: reordering not possible without "
                                 "specifying some delay")
