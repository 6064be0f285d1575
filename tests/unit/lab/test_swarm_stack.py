"""`xenlab swarm-stack`: the stack file of a pool of N hosts. The deploy
itself (three hosts on a single-node swarm) is tests/e2e/test_swarm.py."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from xenlab.cli.main import main
from xenlab.lab.swarm import StackError, make_hosts, parse_labs, render

ROOT = Path(__file__).resolve().parents[3]
DEMO_LABS = {"a": ["/etc/xenlab/lab/web.cfg", "/etc/xenlab/lab/cache.cfg"], "b": ["/etc/xenlab/lab/db.cfg"]}


def substitute(text: str, env: dict[str, str]) -> str:
    """What `docker stack deploy` does to ${VAR:-default} and ${VAR:?error}."""
    def one(match):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env:
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg
    return re.sub(r"\$\{([A-Z0-9_]+)(:-|:\?)([^}]*)\}", one, text)


def test_the_repositorys_stack_file_is_what_the_command_writes_for_hosts_a_and_b():
    expected = render(make_hosts(["a", "b"], DEMO_LABS), "docker-stack.yml")
    assert (ROOT / "docker-stack.yml").read_text() == expected, (
        "docker-stack.yml differs from `xenlab swarm-stack`'s; write it again with the command "
        "its first lines name")


def test_three_hosts_each_get_their_services_volumes_ports_and_a_vxlan_to_both_others():
    env = {f"XENLAB_{h}_ADDR": f"192.0.2.{i}" for i, h in enumerate("ABC", 10)}
    stack = yaml.safe_load(substitute(render(make_hosts(["a", "b", "c"], {"a": ["/x.cfg"]})), env))
    services = stack["services"]
    assert set(services) == {"mosquitto", "lab-a", *(f"{kind}-{h}" for kind in ("hypervisor", "bridge", "dom0", "web")
                                                     for h in "abc")}
    assert set(stack["volumes"]) == {f"{h}-{kind}" for h in "abc" for kind in ("rundir", "domains", "shm")}
    published = {}
    for i, h in enumerate("abc"):
        placement = services[f"hypervisor-{h}"]["deploy"]["placement"]["constraints"]
        assert placement == [f"node.labels.xenlab-{h} == true"]
        bridge = services[f"bridge-{h}"]
        assert bridge["deploy"]["placement"]["constraints"] == placement
        remotes = re.findall(r"remote=([\d.]+):(\d+)", bridge["command"])
        others = [(f"192.0.2.{j}", str(14789 + j - 10)) for j in range(10, 13) if j != 10 + i]
        assert remotes == others, bridge["command"]
        assert "learning=off" in bridge["command"]          # XENLAB_VXLAN_LEARNING unset
        published[h] = (services[f"hypervisor-{h}"]["ports"][0]["published"],
                        bridge["ports"][0]["published"], services[f"web-{h}"]["ports"][0]["published"])
        assert f"--docker-volume xenlab-{h}-domains:/run/xenlab-domains" in services[f"hypervisor-{h}"]["command"]
        assert f"--host-name xenlab-{h}" in services[f"dom0-{h}"]["command"]
    assert published == {"a": ("9770", "14789", "8090"), "b": ("9771", "14790", "8091"),
                         "c": ("9772", "14791", "8092")}
    assert services["lab-a"]["command"] == "/x.cfg"


def test_a_deploy_without_an_address_for_each_host_is_refused():
    text = render(make_hosts(["a", "b", "c"]))
    with pytest.raises(KeyError, match="XENLAB_C_ADDR: set XENLAB_C_ADDR to the address of host c's node"):
        substitute(text, {"XENLAB_A_ADDR": "192.0.2.1", "XENLAB_B_ADDR": "192.0.2.2"})


def test_one_host_has_no_uplink_and_the_settings_override_the_defaults():
    stack = yaml.safe_load(substitute(render(make_hosts(["solo"], {"solo": ["/etc/xenlab/lab"]})),
                                      {"XENLAB_SOLO_PORT": "9900", "XENLAB_SOLO_LAB": "/l/one.cfg"}))
    assert "--uplink" not in stack["services"]["bridge-solo"]["command"]
    assert "ports" not in stack["services"]["bridge-solo"]
    assert stack["services"]["hypervisor-solo"]["ports"][0]["published"] == "9900"
    assert stack["services"]["lab-solo"]["command"] == "/l/one.cfg"


@pytest.mark.parametrize("names, labs, error", [
    ([], {}, "at least one host"),
    (["A"], {}, "host name 'A'"),
    (["a-b"], {}, "host name 'a-b'"),
    (["a", "a"], {}, "named twice"),
    (["a"], {"b": ["/x.cfg"]}, "b is not one of the hosts"),
    (["a"], {"a": ["x.cfg"]}, "absolute paths inside the image"),
    (["a"], {"a": ["/x${Y}.cfg"]}, "absolute paths inside the image"),
    ([f"h{i}" for i in range(65)], {}, "at most 64"),
])
def test_bad_hosts_and_labs_are_refused(names, labs, error):
    with pytest.raises(StackError, match=re.escape(error)):
        make_hosts(names, labs)


def test_lab_options_parse_and_refuse():
    assert parse_labs(["a=/x.cfg /y.cfg", "b=/z"]) == {"a": ["/x.cfg", "/y.cfg"], "b": ["/z"]}
    for bad in (["a"], ["a="], ["a=/x", "a=/y"]):
        with pytest.raises(StackError):
            parse_labs(bad)


def test_the_command_writes_the_file_and_says_how_to_deploy_it(tmp_path, capsys):
    out = tmp_path / "pool.yml"
    assert main(["swarm-stack", "--lab", "a=/etc/xenlab/lab/web.cfg", "a", "b", "-o", str(out)]) == 0
    assert "docker stack deploy -c pool.yml xenlab" in out.read_text()
    err = capsys.readouterr().err
    assert "XENLAB_A_ADDR=... XENLAB_B_ADDR=..." in err and str(out) in err
    assert main(["swarm-stack", "a", "Bad"]) == 2
    assert "host name 'Bad'" in capsys.readouterr().err
    assert main(["swarm-stack", "a", "-o", str(tmp_path / "missing" / "x.yml")]) == 1
    assert "cannot write" in capsys.readouterr().err
