"""A lab file's mistakes name the file, the exact line and, for a key
nobody knows, the key it most resembles (issue 19: `memroy = 32` inside
[[domain]] was ignored and the domain got 128 MiB; a bad mac= on line 3 was
reported as line 2)."""
from __future__ import annotations

import re
import textwrap
from ipaddress import IPv4Address, IPv4Interface

import pytest

from xenlab.cli.main import main
from xenlab.lab.spec import parse_lab
from xenlab.lab.tomllines import KeyPosition, key_lines
from xenlab.net.ipconfig import parse_cmdline
from xenlab.xen.cmdline import kernel_cmdline
from xenlab.xen.errors import ConfigError


def lab(text: str):
    return parse_lab(textwrap.dedent(text).lstrip("\n"), "lab.toml")


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        lab(text)
    return err.value.message


def test_a_typo_inside_domain_is_refused_with_its_line_and_the_key_it_resembles():
    message = refused("""
        [[domain]]
        name = "web"
        memroy = 32
        """)
    assert message.startswith("lab.toml:3: unknown key 'memroy' (did you mean 'memory'?)")


def test_a_malformed_mac_is_reported_on_the_line_it_is_on():
    message = refused("""
        [[domain]]
        name = "web"
        vif = ["mac=00:16:3e:zz:00:01"]
        """)
    assert message.startswith("lab.toml:3: vif 0: mac=00:16:3e:zz:00:01 is not a MAC address")


def test_each_vif_of_a_list_spanning_lines_is_reported_on_its_own_line():
    message = refused("""
        [lab]
        name = "l"   # a comment

        [[domain]]
        name = "a"

        [[domain]]
        name = "b"
        memory = 32
        vif = [
            "ip=10.0.0.2/24",   # fine
            # a comment between items
            "mac=00:16:3e:00:00:0g",
        ]
        """)
    assert message.startswith("lab.toml:13: vif 1: mac=00:16:3e:00:00:0g")


@pytest.mark.parametrize("text, line, says", [
    ("[lab]\nnmae = 'x'\n", 2, "[lab]: unknown key 'nmae' (did you mean 'name'?)"),
    ("[hypervisor]\nmemory = 64\nlaucher = 'local'\n", 3,
     "[hypervisor]: unknown key 'laucher' (did you mean 'launcher'?)"),
    ("[[bridge]]\nname = 'xenbr0'\n\n[[bridge]]\nname = 'xenbr1'\nfdbmax = 4\n", 6,
     "bridge #2: unknown key 'fdbmax' (did you mean 'fdb_max'?)"),
    ("[mqtt]\nbrokr = 'none'\n", 2, "[mqtt]: unknown key 'brokr' (did you mean 'broker'?)"),
    ("[hypervisor]\nmemory = 64\npage_sharing = 'yes'\n", 3,
     "[hypervisor] page_sharing = 'yes': expected one of 'auto', 'on', 'off'"),
    ("[lab]\nname = 'x'\n\n[[domains]]\nname = 'web'\n", 4, "top level: unknown table 'domains' (did you mean 'domain'?)"),
    ("[mqtt]\nbroker = 'none'\ninterval = -1\n", 3, "[mqtt] interval must be a positive number"),
    ("[[bridge]]\nname = 'xenbr0'\nuplink = 'eth0'\n", 3, "bridge xenbr0: uplink must be \"tap:NAME\""),
    ("[[bridge]]\nname = 'xenbr0'\nuplink = 'vxlan:vni=42'\n", 3,
     "bridge xenbr0: uplink 'vxlan:vni=42': vxlan: at least one remote=HOST[:PORT] is needed"),
    ("[[bridge]]\nname = 'xenbr0'\nuplink = 'vxlan:vni=99999999,remote=192.0.2.2'\n", 3,
     "bridge xenbr0: uplink 'vxlan:vni=99999999,remote=192.0.2.2': a VNI is 0..16777215"),
])
def test_every_table_names_the_line_of_its_mistake(text, line, says):
    assert refused(text).startswith(f"lab.toml:{line}: {says}")


def test_page_sharing_reaches_the_spec_and_is_auto_by_default():
    assert lab("[hypervisor]\npage_sharing = 'off'\n").page_sharing == "off"
    assert lab("[hypervisor]\nmemory = 64\n").page_sharing == "auto"


def test_a_vxlan_uplink_is_taken_in_full_form():
    spec = lab("""
        [[bridge]]
        name = "xenbr0"
        uplink = "vxlan:vni=42,remote=192.0.2.2,remote=192.0.2.3:14789"
        """)
    assert spec.bridges[0].uplink == ("vxlan:vni=42,remote=192.0.2.2:4789,remote=192.0.2.3:14789,"
                                      "local=0.0.0.0:4789,mtu=1450")


def test_xls_own_keys_that_xenlab_does_not_use_are_still_accepted_in_a_domain():
    spec = lab("""
        [[domain]]
        name = "web"
        kernel = "/boot/vmlinuz"
        memory = 32
        """)
    assert spec.domains[0].memory_mb == 32 and spec.domains[0].extra["kernel"] == "/boot/vmlinuz"


def test_a_referenced_xl_cfg_names_its_own_lines_and_the_lab_its_own(tmp_path):
    (tmp_path / "web.cfg").write_text("name = 'web'\n\nvcpu = 2\n")
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text('[[domain]]\nconfig = "web.cfg"\n')
    from xenlab.lab.spec import load_lab
    with pytest.raises(ConfigError) as err:
        load_lab(lab_file)
    assert err.value.message == f"{tmp_path}/web.cfg:3: unknown key 'vcpu' (did you mean 'vcpus'?)"

    (tmp_path / "web.cfg").write_text("name = 'web'\nmemory = 64\n")
    lab_file.write_text('[[domain]]\nconfig = "web.cfg"\nmemory = 32\nvif = [\n  "mac=zz",\n]\n')
    with pytest.raises(ConfigError) as err:
        load_lab(lab_file)
    assert err.value.message.startswith(f"{lab_file}:5: vif 0: mac=zz is not a MAC address")

    lab_file.write_text('[[domain]]\nconfig = "web.cfg"\nmemory = 32\n')
    (web,) = load_lab(lab_file).domains
    assert web.memory_mb == 32 and "memory = 32" in web.text


def test_inline_settings_keep_their_values():
    (web,) = lab("""
        [[domain]]
        name = "web"
        memory = 48
        on_crash = "preserve"
        vif = ["mac=00:16:3e:00:00:01,ip=10.0.0.1/24", 'bridge=xenbr0']
        """).domains
    assert (web.name, web.memory_mb, web.on_crash) == ("web", 48, "preserve")
    assert [v.mac for v in web.vifs] == ["00:16:3e:00:00:01", None]
    assert web.text.splitlines()[0] == 'name = "web"'


def test_up_refuses_a_lab_file_with_a_typo_before_starting_anything(tmp_path, capsys):
    path = tmp_path / "typo.toml"
    path.write_text('[[domain]]\nname = "web"\nmemroy = 32\n')
    assert main(["up", str(path), "--rundir", str(tmp_path / "run")]) == 1
    assert f"xenlab up: {path}:3: unknown key 'memroy' (did you mean 'memory'?)" in capsys.readouterr().err


def test_key_lines_finds_keys_items_and_headers_past_strings_and_comments():
    lines = key_lines(textwrap.dedent('''\
        # [not] a header
        top = 1
        [lab]
        name = "a # not a comment"
        [[domain]]
        s = """multi
        line = "not a key"
        """
        vif = ['a', "b",
          # c
          """c"""]
        t = {x = [1,
          2]}
        [[domain]]
        "name" = 'b'
        '''))
    assert lines.line((), "top") == 2
    assert lines.line(("lab",)) == 3 and lines.line(("lab",), "name") == 4
    assert lines.table(("domain", 0)) == {"s": KeyPosition(6), "vif": KeyPosition(9, (9, 9, 11)),
                                          "t": KeyPosition(12)}
    assert lines.line(("domain", 1)) == 14 and lines.line(("domain", 1), "name") == 15


ROUTED = """
[[bridge]]
name = "xenbr0"
[[domain]]
name = "web"
vif = ["bridge=xenbr0,ip=10.0.1.2/24"]
extra = "{extra}"
"""


@pytest.mark.parametrize("extra, says", [
    ("ip=::10.0.9.1", "domain web: ip=: gateway 10.0.9.1 is not a neighbour on eth0's network 10.0.1.0/24"),
    ("ip=10.0.3.2::10.0.3.1:255.255.255.0::eth1:off", "domain web: ip=: the guest has no eth1"),
    ("ip=10.0.1.300", "client-ip '10.0.1.300' is not an IPv4 address"),
    ("sysctl.net.ipv4.ip_forward=on", "expected a number"),
])
def test_a_guests_kernel_command_line_is_checked_when_the_lab_is_read(extra, says):
    with pytest.raises(ConfigError, match=re.escape(says)) as err:
        parse_lab(ROUTED.format(extra=extra), "routed.toml")
    assert str(err.value.message).startswith("routed.toml:")


def test_a_gateway_from_the_command_line_with_the_vifs_address_is_accepted():
    # The vif's address goes into the guest's own command line, with the
    # gateway its ip= gave: the last ip= of eth0, so the one Linux takes.
    spec = parse_lab(ROUTED.format(extra="ip=::10.0.1.1 sysctl.net.ipv4.ip_forward=0"), "routed.toml")
    assert spec.domain("web").extra["extra"] == (
        "ip=::10.0.1.1 sysctl.net.ipv4.ip_forward=0 ip=10.0.1.2::10.0.1.1:255.255.255.0:web:eth0:off")
    net = parse_cmdline(kernel_cmdline(spec.domain("web").extra))
    assert net.address_for("eth0") == IPv4Interface("10.0.1.2/24")
    assert net.gateway_for("eth0", IPv4Interface("10.0.1.2/24")) == IPv4Address("10.0.1.1")


TWO_VIFS = """
[[bridge]]
name = "xenbr0"
[[domain]]
name = "{name}"
vif = ["mac=00:16:3e:00:00:01,ip=10.0.1.2", "mac=00:16:3e:00:00:02"{more}]
{keys}
"""


@pytest.mark.parametrize("keys, key, cmdline", [
    # no command line: extra= is made, for the vif that has an ip= only
    ("", "extra", "ip=10.0.1.2:::255.255.255.0:web:eth0:off"),
    # root= stays root=; extra= grows
    ('root = "/dev/xvda1"\nextra = "quiet"', "extra", "quiet ip=10.0.1.2:::255.255.255.0:web:eth0:off"),
    # cmdline= wins over extra= in xl: the address goes where the guest reads it
    ('cmdline = "console=hvc0"\nextra = "ignored"', "cmdline",
     "console=hvc0 ip=10.0.1.2:::255.255.255.0:web:eth0:off"),
    # ip=dhcp asks for an address: the one the lab's vif names
    ('extra = "ip=dhcp"', "extra", "ip=dhcp ip=10.0.1.2:::255.255.255.0:web:eth0:off"),
    # an ip= with no address keeps its gateway and hostname
    ('extra = "ip=::10.0.1.1:255.255.0.0:box"', "extra",
     "ip=::10.0.1.1:255.255.0.0:box ip=10.0.1.2::10.0.1.1:255.255.255.0:box:eth0:off"),
])
def test_a_vif_ip_is_written_into_the_guests_command_line(keys, key, cmdline):
    extra = parse_lab(TWO_VIFS.format(name="web", more="", keys=keys), "two.toml").domain("web").extra
    assert extra[key] == cmdline
    net = parse_cmdline(kernel_cmdline(extra))
    assert net.address_for("eth0") == IPv4Interface("10.0.1.2/24")
    assert net.address_for("eth1") is None


@pytest.mark.parametrize("extra", [
    "ip=10.0.1.9:::255.255.255.0::eth0:off",     # the guest's own address wins
    "ip=:::::eth0:off",                          # eth0 turned off
    "ip=off",                                    # ipconfig turned off
])
def test_the_guests_own_ip_choice_is_left_as_it_is(extra):
    text = TWO_VIFS.format(name="web", more="", keys=f'extra = "{extra}"')
    assert parse_lab(text, "two.toml").domain("web").extra["extra"] == extra


def test_a_name_that_is_no_hostname_leaves_the_hostname_out():
    text = TWO_VIFS.format(name="web_1", more="", keys="")
    assert parse_lab(text, "two.toml").domain("web_1").extra["extra"] == \
        "ip=10.0.1.2:::255.255.255.0::eth0:off"


def test_each_vif_with_an_ip_gets_its_own_ip_param():
    text = TWO_VIFS.format(name="r", more=', "mac=00:16:3e:00:00:03,ip=10.0.3.1/16"', keys="")
    assert parse_lab(text, "two.toml").domain("r").extra["extra"] == \
        "ip=10.0.1.2:::255.255.255.0:r:eth0:off ip=10.0.3.1:::255.255.0.0:r:eth2:off"


POOL_HOSTS = "[[host]]\nname = 'a'\n\n[[host]]\nname = 'b'\n"


def test_a_pool_places_each_domain_and_gives_its_hosts_addresses():
    spec = lab(POOL_HOSTS + """
[[domain]]
name = "web"
host = "b"
memory = 32

[[domain]]
name = "db"
memory = 32
""")
    assert [(h.name, h.address) for h in spec.hosts] == [("a", "10.231.0.1"), ("b", "10.231.0.2")]
    assert dict(spec.placement) == {"web": "b", "db": "a"}      # the first host by default
    assert "host" not in spec.domain("web").extra               # a lab key, not xl.cfg's


def test_each_host_runs_its_domains_and_the_bridges_joined_by_vxlan():
    from xenlab.lab.spec import host_lab
    spec = lab(POOL_HOSTS + "\n[[host]]\nname = 'c'\naddress = '10.231.0.30'\n" + """
[[bridge]]
name = "xenbr0"

[[bridge]]
name = "xenbr1"

[[domain]]
name = "web"
host = "c"
memory = 32
""")
    c = host_lab(spec, "c")
    assert [d.name for d in c.domains] == ["web"] and host_lab(spec, "a").domains == ()
    assert [b.uplink for b in c.bridges] == [
        "vxlan:vni=100,remote=10.231.0.1:4789,remote=10.231.0.2:4789,local=10.231.0.30:4789,mtu=1450",
        "vxlan:vni=101,remote=10.231.0.1:4789,remote=10.231.0.2:4789,local=10.231.0.30:4789,mtu=1450"]
    assert c.hosts == () and c.mqtt.broker == "none" and c.name == f"{spec.name}-c"
    assert host_lab(spec, "a", "mqtt://10.231.0.254:1883").mqtt.broker == "mqtt://10.231.0.254:1883"


@pytest.mark.parametrize("text, says", [
    ("[[host]]\nname = 'a'\n", "a pool needs two [[host]] tables or more"),
    (POOL_HOSTS + "[[host]]\nname = 'a'\n", "host #3: a second host named 'a'"),
    ("[[host]]\nname = 'A'\n[[host]]\nname = 'b'\n", "host #1: needs a name of 1-12 lowercase"),
    (POOL_HOSTS.replace("name = 'b'", "name = 'b'\naddress = '10.9.0.1'"),
     "host b: address 10.9.0.1 is not on the /24 of host a"),
    (POOL_HOSTS.replace("name = 'b'", "name = 'b'\naddress = '10.231.0.1'"),
     "host b: address 10.231.0.1 is host a's too"),
    (POOL_HOSTS.replace("name = 'b'", "name = 'b'\naddress = 'x'"), "host b: address 'x' is not"),
    (POOL_HOSTS.replace("name = 'b'", "name = 'b'\naddress = '10.231.0.254'"),
     "host b: address 10.231.0.254 is this machine's on the underlay"),
    (POOL_HOSTS + "[[domain]]\nname = 'web'\nhost = 'z'\n", "domain web: host 'z' is not a [[host]]"),
    ("[[domain]]\nname = 'web'\nhost = 'a'\n", "domain web: host = 'a', but the lab has no [[host]]"),
    (POOL_HOSTS + "[[bridge]]\nname = 'xenbr0'\nuplink = 'tap:x0'\n",
     "bridge xenbr0: in a pool, a bridge's uplink is the VXLAN"),
    (POOL_HOSTS + "[[host]]\nname = 'c'\nrole = 'x'\n", "host #3: unknown key 'role'"),
])
def test_a_bad_pool_is_refused_with_what_is_wrong(text, says):
    assert says in refused(text)
