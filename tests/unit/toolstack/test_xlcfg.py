"""xl.cfg(5) and xl-network-configuration(5) parsing."""
from __future__ import annotations

import pytest

from xenlab.toolstack.xlcfg import (ACTIONS, COMMAND_LINE_KEYS, IGNORED_XL_KEYS, KNOWN_XL_KEYS, VifConfig, XlConfig,
                                    load_xl_config, parse_settings, parse_vif_spec,
                                    parse_xl_config, SCHED_KEYS)
from xenlab.xen.errors import ConfigError
from xenlab.xen.paging import PagingMode


def cfg(text: str, **kw) -> XlConfig:
    return parse_xl_config(text, "t.cfg", **kw)


def config_error(text: str, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_xl_config(text, "t.cfg", **kw)
    return info.value


# --------------------------------------------------------------------------
# Syntax

def test_minimal_config_takes_xl_defaults():
    c = cfg('name = "web"\n')
    assert (c.name, c.memory_mb, c.maxmem_mb, c.vcpus, c.maxvcpus) == ("web", 128, 128, 1, 1)
    assert (c.on_poweroff, c.on_reboot, c.on_crash) == ("destroy", "restart", "destroy")
    assert c.vifs == () and c.uuid is None and c.launcher is None
    assert dict(c.extra) == {} and c.warnings == ()
    assert c.text == 'name = "web"\n'


def test_both_quote_styles_and_escapes():
    c = cfg("name = 'web'\nkernel = \"/boot/k\"\ncmdline = 'a\\tb \\'q\\' \\\"d\\\" \\x41\\101\\\\'\n")
    assert c.name == "web"
    assert c.extra["kernel"] == "/boot/k"
    assert c.extra["cmdline"] == "a\tb 'q' \"d\" AA\\"


def test_comments_semicolons_and_no_final_newline():
    c = cfg("# a domain\nname='x' # trailing comment\nmemory = 64; vcpus = 2;maxvcpus=3")
    assert (c.name, c.memory_mb, c.vcpus, c.maxvcpus) == ("x", 64, 2, 3)


def test_hash_inside_a_string_is_not_a_comment():
    assert cfg("name = 'a#b'").name == "a#b"


def test_list_spanning_lines_with_comments_and_trailing_comma():
    c = cfg("""name = "x"
vif = [
    # the first one
    'mac=00:16:3e:00:00:01',   # comment after an item

    'bridge=xenbr1',
]
""")
    assert [v.mac for v in c.vifs] == ["00:16:3e:00:00:01", None]
    assert [v.bridge for v in c.vifs] == ["xenbr0", "xenbr1"]
    assert [v.devid for v in c.vifs] == [0, 1]


def test_numbers_decimal_hex_and_quoted():
    c = cfg("name='x'\nmemory = 0x40\nmaxmem = '256'\n")
    assert (c.memory_mb, c.maxmem_mb) == (64, 256)


def test_plus_equals_appends_strings_and_lists():
    c = cfg("name='x'\nextra = 'console=hvc0'\nextra += ' quiet'\n"
            "vif = ['']\nvif += ['bridge=br1']\n")
    assert c.extra["extra"] == "console=hvc0 quiet"
    assert [v.bridge for v in c.vifs] == ["xenbr0", "br1"]


def test_plus_equals_on_a_number_is_an_error():
    err = config_error("name='x'\nmemory = 1\nmemory += 2\n")
    assert err.line == 3 and "'+='" in err.message


def test_parse_settings_keeps_lines_and_nested_lists():
    settings = parse_settings("a = 1\n\nb = [ 'x',\n  [2, 'y'] ]\n")
    assert [(s.key, s.line) for s in settings] == [("a", 1), ("b", 3)]
    inner = settings[1].value.items[1]
    assert [i.value for i in inner.items] == [2, "y"] and inner.line == 4


def test_empty_file_has_no_settings():
    assert parse_settings("") == [] and parse_settings("\n# only\n;\n") == []


# --------------------------------------------------------------------------
# Syntax errors, each with its line

@pytest.mark.parametrize("text, line, words", [
    ("name = 'x'\nkernel = 'abc\n", 2, "unterminated string"),
    ("name = 'x'\nkernel = \"abc'\n", 2, "unterminated string"),
    ("name = 'x'\nkernel = 'abc\\\n", 2, "unterminated string"),
    ("name = 'x'\nvif = [ 'a',\n 'b'\n", 4, "unterminated list"),
    ("name = 'x'\nvif = [ 'a' 'b' ]\n", 2, "bad list"),
    ("name = 'x'\nvif = [ 'a',\n ; ]\n", 3, "expected a value"),
    ("name = 'x'\nmemory = big\n", 2, "unknown value type 'big'"),
    ("name = 'x'\n\nmemory = -5\n", 3, "unknown value type '-5'"),
    ("name = 'x'\nmemory = 1.5\n", 2, "unknown value type '1.5'"),
    ("name = 'x'\nmemory 5\n", 2, "expected '='"),
    ("name = 'x'\nmemory =\n5\n", 2, "expected a value"),
    ("name = 'x'\nmemory = 5 6\n", 2, "expected a newline or ';'"),
    ("name = 'x'\n= 5\n", 2, "expected a setting name"),
    ("name = 'x'\non-crash = 'destroy'\n", 2, "expected a setting name"),
    ("name = 'x'\nkernel = 'a\\qb'\n", 2, "invalid escape"),
    ("name = {'a': 1}\n", 1, "unknown value type '{'"),
])
def test_syntax_errors_name_the_line(text, line, words):
    err = config_error(text)
    assert err.line == line
    assert words in err.message
    assert err.message.startswith(f"t.cfg:{line}: ")


def test_unterminated_list_names_the_opening_line():
    err = config_error("name = 'x'\nvif = [\n 'a',\n")
    assert "'[' on line 2" in err.message


def test_error_without_a_path_still_has_the_line():
    with pytest.raises(ConfigError) as info:
        parse_xl_config("name = 'x\n")
    assert info.value.line == 1 and info.value.message.startswith("1: ")


# --------------------------------------------------------------------------
# Keys

def test_name_is_required():
    err = config_error("memory = 64\n")
    assert "needs a name" in err.message and err.line is None
    assert err.message.startswith("t.cfg: ")


@pytest.mark.parametrize("text, words", [
    ("name = ''\n", "name is empty"),
    ("name = '42'\n", "all digits"),
    ("name = 42\n", "all digits"),
    ("name = ['a']\n", "must be a string, not a list"),
])
def test_bad_names(text, words):
    err = config_error(text)
    assert words in err.message and err.line == 1


def test_duplicate_key_warns_and_the_last_wins():
    c = cfg("name='x'\nmemory = 64\nvcpus = 1\nmemory = 96\n")
    assert c.memory_mb == 96
    assert c.warnings == ("t.cfg:4: warning: duplicate key 'memory' (first set on line 2); "
                          "the last value is used",)


def test_maxmem_defaults_to_memory():
    assert cfg("name='x'\nmemory=300\n").maxmem_mb == 300


def test_memory_above_maxmem_is_an_error_on_the_maxmem_line():
    err = config_error("name='x'\nmaxmem = 64\nmemory = 128\n")
    assert err.line == 2 and "larger than maxmem" in err.message


def test_memory_above_maxmem_reports_memory_line_when_maxmem_comes_from_nowhere():
    # maxmem defaults to memory, so only an override can trip this.
    err = config_error("name='x'\nmemory = 64\n", overrides=["maxmem=32"])
    assert err.message.startswith("<command line>:1: ")


@pytest.mark.parametrize("text, line, words", [
    ("name='x'\nmemory = 0\n", 2, "at least 1"),
    ("name='x'\nvcpus = 0\n", 2, "at least 1"),
    ("name='x'\nmemory = 'lots'\n", 2, "must be a number"),
    ("name='x'\nmemory = [1]\n", 2, "not a list"),
    ("name='x'\nvcpus = 4\nmaxvcpus = 2\n", 3, "smaller than vcpus"),
    ("name='x'\non_crash = 'explode'\n", 2, "expected one of"),
    ("name='x'\nuuid = 'not-a-uuid'\n", 2, "not a UUID"),
    ("name='x'\nlauncher = 'qemu'\n", 2, "expected one of local, none, docker"),
    ("name='x'\nvif = 'bridge=xenbr0'\n", 2, "must be a list"),
    ("name='x'\nvif = [['a']]\n", 2, "must be a string, not a list"),
])
def test_key_errors_name_the_line(text, line, words):
    err = config_error(text)
    assert err.line == line and words in err.message


def test_maxvcpus_defaults_to_vcpus():
    c = cfg("name='x'\nvcpus = 3\n")
    assert (c.vcpus, c.maxvcpus) == (3, 3)


@pytest.mark.parametrize("action", [a for a in ACTIONS if a != "soft-reset"])
def test_every_xl_action_xenlab_carries_out_is_accepted(action):
    c = cfg(f"name='x'\non_poweroff='{action}'\non_reboot='{action}'\non_crash='{action}'\n"
            f"on_watchdog='{action}'\n")
    assert (c.on_poweroff, c.on_reboot, c.on_crash, c.on_watchdog) == (action,) * 4


def test_on_watchdog_is_read_not_dropped():
    """on_watchdog went to `extra` unread: a watchdog shutdown got on_crash's action."""
    assert cfg("name='x'\n").on_watchdog == "destroy"
    c = cfg("name='x'\non_watchdog = 'preserve'\n")
    assert c.on_watchdog == "preserve" and "on_watchdog" not in c.extra


@pytest.mark.parametrize("key", ["on_poweroff", "on_reboot", "on_crash", "on_watchdog"])
def test_soft_reset_is_refused_by_name(key):
    err = config_error(f"name='x'\n{key} = 'soft-reset'\n")
    assert err.line == 2 and "soft reset" in err.message and "not emulated" in err.message


def test_uuid_is_normalised_and_launcher_kept():
    c = cfg("name='x'\nuuid = 'AAAAAAAA-bbbb-cccc-dddd-eeeeeeeeeeee'\nlauncher='docker'\n")
    assert c.uuid == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee" and c.launcher == "docker"


def test_xl_keys_xenlab_does_not_honour_are_warned_about_by_name():
    """They went to `extra` without a word: a user's disk= or kernel= was
    silently dropped. Each is still kept (xl list -l shows the config)."""
    c = cfg("name='x'\ntype = 'pv'\nkernel = '/k'\nramdisk='/r'\nextra='quiet'\nroot='/dev/xvda1'\n"
            "builder='generic'\nbootloader='pygrub'\ndisk = ['phy:/dev/vg/x,xvda,w', 'file:/y,xvdb,r']\n"
            "max_grant_frames = 64\ncpus = '0-1'\nvnc = 1\n")
    assert c.extra == {"kernel": "/k", "ramdisk": "/r", "extra": "quiet",
                       "root": "/dev/xvda1", "bootloader": "pygrub",
                       "disk": "['phy:/dev/vg/x,xvda,w', 'file:/y,xvdb,r']",
                       "max_grant_frames": "64", "cpus": "0-1", "vnc": "1"}
    warned = {w.split(": ")[2].split("=")[0]: w for w in c.warnings}
    # The kernel command line (extra=, root=) is the guest's, cpus= the
    # toolstack's (toolstack.sched_cfg): kept, not warned about.
    assert sorted(warned) == sorted(set(c.extra) - {"extra", "root", "cpus"})
    assert warned["disk"] == "t.cfg:9: warning: disk= is not emulated (xenlab's guests have vifs only); ignored"
    assert "guest kernel" in warned["kernel"] and "ignored" in warned["kernel"]
    assert "hypervisor's own limit" in warned["max_grant_frames"]
    assert "HVM" in warned["vnc"]


def test_every_xl_cfg_key_is_read_or_warned_about():
    for key in sorted(KNOWN_XL_KEYS):
        value = {"name": "'x'", "vif": "['']", "uuid": "'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee'",
                 "type": "'pv'", "builder": "'generic'", "launcher": "'none'",
                 "on_poweroff": "'destroy'", "on_reboot": "'destroy'", "on_crash": "'destroy'",
                 "on_watchdog": "'destroy'", "memory": "16", "maxmem": "256",
                 "hap": "0"}.get(key, "1")
        # hap= and shadow_memory= are an HVM or PVH guest's (a PV one's are warned about).
        kind = "type = 'hvm'\n" if key in ("hap", "shadow_memory") else ""
        c = cfg(f"name = 'x'\n{key} = {value}\n{kind}" if key != "name" else f"name = {value}\n")
        if key in IGNORED_XL_KEYS:
            assert c.warnings and c.warnings[0].startswith(f"t.cfg:2: warning: {key}= "), key
        elif key in COMMAND_LINE_KEYS or key in SCHED_KEYS:
            # the guest's, or the scheduler's: kept for kernel_cmdline or sched_cfg, no warning
            assert c.warnings == () and c.extra == {key: "1"}, key
        else:
            assert c.warnings == () and key not in c.extra, key


@pytest.mark.parametrize("text, words", [
    ("type = 'vm'", "expected one of pv, pvh, hvm"),
    ("type = 'pv'\nbuilder = 'hvm'", "builder = 'hvm' contradicts type = 'pv'"),
    ("type = 'hvm'\nbuilder = 'generic'", "builder = 'generic' contradicts type = 'hvm'"),
])
def test_an_unknown_or_contradicting_guest_type_is_refused(text, words):
    err = config_error(f"name='x'\n{text}\n")
    assert err.line == text.count("\n") + 2 and words in err.message


def test_type_pv_and_builder_generic_are_honoured_quietly():
    assert cfg("name='x'\ntype='pv'\nbuilder='generic'\n").warnings == ()


# --------------------------------------------------------------------------
# Paging: type=, hap=, shadow_memory=

def test_a_guest_is_pv_on_direct_paging_with_no_pool_by_default():
    c = cfg("name='x'\n")
    assert (c.type, c.hap, c.shadow_memory_mb) == ("pv", None, None)
    assert c.paging_mode is PagingMode.DIRECT and c.paging_pool_mb == 0


@pytest.mark.parametrize("text, kind, mode", [
    ("type = 'hvm'", "hvm", PagingMode.HAP),
    ("type = 'pvh'", "pvh", PagingMode.HAP),
    ("builder = 'hvm'", "hvm", PagingMode.HAP),
    ("type = 'hvm'\nhap = 1", "hvm", PagingMode.HAP),
    ("type = 'pvh'\nhap = 0", "pvh", PagingMode.SHADOW),
    ("type = 'hvm'\nhap = '0'", "hvm", PagingMode.SHADOW),
    ("type = 'hvm'\nhap = 7", "hvm", PagingMode.HAP),       # xlu_cfg_get_defbool: any non-zero
])
def test_hvm_and_pvh_run_on_hap_unless_hap_is_0(text, kind, mode):
    c = cfg(f"name='x'\n{text}\n")
    assert c.type == kind and c.paging_mode is mode and c.warnings == ()


@pytest.mark.parametrize("text, pool_mb", [
    # libxl__get_required_paging_memory: 1 MiB per vCPU, a page per MiB of
    # maxmem for the P2M, another per MiB for shadows; rounded up to a MiB.
    ("type='hvm'\nmemory=128", 2),                        # 4 * (256 + 128) KiB = 1.5 MiB
    ("type='hvm'\nhap=0\nmemory=128", 2),                 # 4 * (256 + 256) KiB = 2 MiB
    ("type='pvh'\nhap=0\nvcpus=2\nmemory=64\nmaxmem=512", 6),   # 4 * (512 + 1024) KiB
    ("type='hvm'\nvcpus=1\nmaxvcpus=4\nmemory=1024", 8),  # maxvcpus counts: 4 * (1024 + 1024)
    ("type='hvm'\nshadow_memory=16", 16),
    ("type='pvh'\nhap=0\nshadow_memory=1", 1),
])
def test_the_paging_pool_is_shadow_memory_or_libxls_default(text, pool_mb):
    assert cfg(f"name='x'\n{text}\n").paging_pool_mb == pool_mb


def test_hap_1_on_a_pv_guest_is_refused_saying_what_xen_and_xl_do():
    err = config_error("name='x'\ntype='pv'\nhap=1\n")
    assert err.line == 3
    assert "hap = 1 with type = 'pv'" in err.message
    assert "Xen refuses HAP for a non-HVM guest" in err.message
    assert "xl silently ignores hap= for PV" in err.message
    assert "type = 'pvh' or 'hvm'" in err.message
    assert config_error("name='x'\nhap=1\n").line == 2        # pv by default


def test_hap_0_and_shadow_memory_on_a_pv_guest_are_warned_about_and_dropped():
    c = cfg("name='x'\nhap=0\nshadow_memory=8\n")
    assert (c.hap, c.shadow_memory_mb, c.paging_mode, c.paging_pool_mb) == \
        (None, None, PagingMode.DIRECT, 0)
    assert [w.split(" does nothing")[0] for w in c.warnings] == \
        ["t.cfg:2: warning: hap=", "t.cfg:3: warning: shadow_memory="]
    assert all("direct paging" in w and "hap = 0" in w and w.endswith("ignored")
               for w in c.warnings)
    assert "hap" not in c.extra and "shadow_memory" not in c.extra


@pytest.mark.parametrize("text, line, words", [
    ("type='hvm'\nshadow_memory=0", 3, "shadow_memory = 0: a hvm guest's paging pool needs at "
                                       "least 1 MiB"),
    ("type='hvm'\nshadow_memory='big'", 3, "'shadow_memory' must be a number"),
    ("type='hvm'\nhap='yes'", 3, "'hap' must be a number"),
    ("type='hvm'\nhap=[1]", 3, "'hap' must be a number, not a list"),
])
def test_bad_paging_values_are_refused_on_their_line(text, line, words):
    err = config_error(f"name='x'\n{text}\n")
    assert err.line == line and words in err.message


def test_paging_keys_given_on_the_command_line_win():
    c = parse_xl_config("name='x'\ntype='hvm'\n", "t.cfg", ["hap=0", "shadow_memory=4"])
    assert c.paging_mode is PagingMode.SHADOW and c.paging_pool_mb == 4


@pytest.mark.parametrize("vif, words", [
    ("script=vif-route", "script=vif-route is not run: xenlab's hotplug does what vif-bridge does"),
    ("model=e1000", "model=e1000 is an HVM guest's emulated NIC"),
])
def test_vif_keys_kept_but_not_acted_on_are_warned_about(vif, words):
    c = cfg(f"name='x'\nvif = ['{vif}']\n")
    assert len(c.warnings) == 1 and words in c.warnings[0]


def test_script_vif_bridge_is_what_hotplug_does():
    assert cfg("name='x'\nvif = ['script=/etc/xen/scripts/vif-bridge']\n").warnings == ()


def test_unknown_keys_go_to_extra_with_a_warning():
    c = cfg("name='x'\n\nfoo = 1\nbar = ['a', [2]]\n")
    assert c.extra == {"foo": "1", "bar": "['a', [2]]"}
    assert c.warnings == ("t.cfg:3: warning: unknown key 'foo' ignored",
                          "t.cfg:4: warning: unknown key 'bar' ignored")


def test_extra_lists_reparse_to_the_same_value():
    c = cfg("name='x'\ndisk = ['it\\'s', 7]\n")
    again = parse_settings(f"disk = {c.extra['disk']}")[0].value
    assert [i.value for i in again.items] == ["it's", 7]


def test_config_is_frozen():
    c = cfg("name='x'\nfoo=1\n")
    with pytest.raises(AttributeError):
        c.memory_mb = 1
    with pytest.raises(TypeError):
        c.extra["foo"] = "2"


# --------------------------------------------------------------------------
# Command-line overrides (xl create FILE key=value ...)

def test_overrides_win_without_duplicate_warnings_and_join_the_text():
    c = cfg("name='x'\nmemory=64", overrides=["memory=96", "vcpus = 2"])
    assert (c.memory_mb, c.vcpus, c.warnings) == (96, 2, ())
    assert c.text == "name='x'\nmemory=64\nmemory=96\nvcpus = 2\n"


def test_override_errors_name_the_command_line():
    err = config_error("name='x'\n", overrides=["vcpus=2", "memory='"])
    assert err.message.startswith("<command line>:2: ") and "unterminated string" in err.message


def test_override_can_supply_the_name():
    assert cfg("memory=64\n", overrides=["name='y'"]).name == "y"


# --------------------------------------------------------------------------
# Vifs

def test_full_vif_spec():
    vif = parse_vif_spec("mac=00:16:3E:01:02:03, bridge=xenbr1,ip=10.0.0.2/24,vifname=web0,"
                         "rate=10Mb/s,mtu=9000,backend=netdom,script=vif-bridge,model=e1000", 3)
    assert vif == VifConfig(devid=3, mac="00:16:3e:01:02:03", bridge="xenbr1", ip="10.0.0.2/24",
                            vifname="web0", rate="10Mb/s", mtu=9000, backend="netdom",
                            script="vif-bridge", model="e1000")


@pytest.mark.parametrize("spec", ["", " ", ",", " , "])
def test_empty_vif_spec_is_all_defaults(spec):
    assert parse_vif_spec(spec, 0) == VifConfig(devid=0, mac=None, bridge="xenbr0", ip=None,
                                                vifname=None, rate=None, mtu=1500, backend=None,
                                                script=None, model=None)


def test_vif_devid_key_overrides_position_and_duplicates_are_errors():
    c = cfg("name='x'\nvif = ['devid=5', '']\n")
    assert [v.devid for v in c.vifs] == [5, 1]
    err = config_error("name='x'\nvif = ['devid=1',\n 'bridge=b']\n")
    assert err.line == 3 and "devid 1 is already used by vif 0" in err.message


def test_netdev_is_xls_old_name_for_bridge():
    assert parse_vif_spec("netdev=br9", 0).bridge == "br9"


def test_ignored_vif_keys_warn():
    c = cfg("name='x'\nvif = ['type=ioemu,bridge=b']\n")
    assert c.vifs[0].bridge == "b"
    assert c.warnings == ("t.cfg:2: warning: vif 0: type=ioemu is not supported by xenlab; ignored",)


def test_all_zero_mac_means_random_as_libxl():
    assert parse_vif_spec("mac=00:00:00:00:00:00", 0).mac is None


@pytest.mark.parametrize("spec, words", [
    ("colour=red", "unknown vif key 'colour'"),
    ("bridge", "'bridge' is not key=value"),
    ("mac=00:16:3e:01:02", "not a MAC address"),
    ("mac=00:16:3e:01:02:03:04", "not a MAC address"),
    ("mac=00-16-3e-01-02-03", "not a MAC address"),
    ("mac=0:16:3e:1:2:3", "not a MAC address"),
    ("mac=00:16:3g:01:02:03", "not a MAC address"),
    ("mac=01:00:5e:00:00:01", "multicast"),
    ("mac=ff:ff:ff:ff:ff:ff", "multicast"),
    ("ip=10.0.0.300", "not an IPv4 address"),
    ("ip=10.0.0.1/33", "not an IPv4 address"),
    ("ip=fe80::1", "not an IPv4 address"),
    ("ip=", "ip= is empty"),
    ("rate=fast", "invalid rate"),
    ("mtu=67", "out of range 68..65535"),
    ("mtu=65536", "out of range 68..65535"),
    ("mtu=big", "not a number"),
    ("vifname=averyveryverylongname", "not a valid interface name"),
    # One interface-name rule (Linux's dev_valid_name) for xl.cfg, the API and the bridge:
    ("vifname=eth:0", "not a valid interface name"),
    ("vifname=..", "not a valid interface name"),
    ("bridge=a/b", "not a valid interface name"),
    ("bridge=", "not a valid interface name"),
    ("backend=", "is empty"),
    ("devid=x", "not a number"),
])
def test_vif_errors(spec, words):
    with pytest.raises(ConfigError) as info:
        parse_vif_spec(spec, 0)
    assert words in info.value.message


def test_vif_errors_in_a_config_carry_the_item_line_and_index():
    err = config_error("name='x'\nvif = [\n  '',\n  'mac=00:16:3e:01:02:03,colour=red',\n]\n")
    assert err.line == 4
    assert err.message.startswith("t.cfg:4: vif 1: unknown vif key 'colour'")


@pytest.mark.parametrize("mtu", [68, 1500, 65535])
def test_mtu_bounds(mtu):
    assert parse_vif_spec(f"mtu={mtu}", 0).mtu == mtu


def test_several_ip_addresses_are_kept_space_separated():
    assert parse_vif_spec("ip=10.0.0.2   10.0.1.2/16", 0).ip == "10.0.0.2 10.0.1.2/16"


# --------------------------------------------------------------------------
# Files

def test_load_xl_config_names_the_file_in_errors(tmp_path):
    path = tmp_path / "web.cfg"
    path.write_text("name = 'web'\nmemory = 64\n")
    assert load_xl_config(path).memory_mb == 64
    path.write_text("name = 'web'\nmemory = x\n")
    with pytest.raises(ConfigError) as info:
        load_xl_config(path)
    assert info.value.message.startswith(f"{path}:2: ")


def test_load_xl_config_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_xl_config(tmp_path / "nope.cfg")


def test_vlan_is_a_vif_key():
    cfg = parse_xl_config('name = "x"\nvif = ["mac=00:16:3e:00:00:01,vlan=10p/20"]\n')
    assert cfg.vifs[0].vlan == "10p/20"
    with pytest.raises(ConfigError, match="vlan"):
        parse_xl_config('name = "x"\nvif = ["vlan=10/20"]\n')
