"""What `xenlab xl` and `xenlab xenstore` print, their argument types, and
the dispatch in main that needs no hypervisor. A few handlers also run
against the in-process hypervisor fixture."""
from __future__ import annotations

import argparse
import json
import sys
import types

import grpc
import pytest

from xenlab.cli import main as cli_main
from xenlab.cli import output, xenstore, xl
from xenlab.proto import common_pb2, domains_pb2, xenstore_pb2


def dom(**kw) -> domains_pb2.DomainInfo:
    return domains_pb2.DomainInfo(**kw)


# --------------------------------------------------------------------------
# xl list

def test_list_header_is_xls():
    assert output.XL_LIST_HEADER == "Name" + " " * 40 + "ID   Mem VCPUs\tState\tTime(s)"


def test_list_row_layout():
    row = output.format_domain_row(dom(name="Domain-0", domid=0, memory_kb=1024 * 1024, vcpus=4,
                                       state="r-----", cpu_time=12.345))
    assert row == "Domain-0" + " " * 32 + "     0  1024     4     r-----      12.3"


def test_list_row_columns_line_up_with_the_header():
    row = output.format_domain_row(dom(name="web", domid=12, memory_kb=65536, vcpus=2,
                                       state="-b----", cpu_time=0))
    header = output.XL_LIST_HEADER
    assert row.index("   12") + 5 == header.index("ID") + 2
    assert row[:46].rstrip().endswith("12") and row[46:52] == "    64"


def test_list_row_without_state_prints_dashes_and_rounds_memory_down():
    row = output.format_domain_row(dom(name="x", domid=3, memory_kb=2047, vcpus=1))
    assert "     1     ------       0.0" in row


def test_list_row_long_name_is_not_truncated():
    name = "n" * 50
    assert output.format_domain_row(dom(name=name, domid=1)).startswith(name + "     1")


def test_domain_list():
    text = output.format_domain_list([dom(name="a", domid=0), dom(name="b", domid=1)])
    lines = text.splitlines()
    assert lines[0] == output.XL_LIST_HEADER
    assert [line.split()[0] for line in lines[1:]] == ["a", "b"]
    assert text.endswith("\n")


def test_domain_long_is_json_with_domid_and_config_and_numeric_sizes():
    spec = domains_pb2.DomainSpec(name="web", memory_mb=64, vif=[domains_pb2.VifSpec(devid=0, mtu=1500)],
                                  extra={"kernel": "/k"})
    data = json.loads(output.format_domain_long([dom(domid=4, spec=spec)]))
    assert data[0]["domid"] == 4
    config = data[0]["config"]
    assert config["name"] == "web" and config["memory_mb"] == 64 and config["maxmem_mb"] == 0
    assert config["vif"][0]["mtu"] == 1500 and config["vif"][0]["mac"] == ""
    assert config["extra"] == {"kernel": "/k"}


def test_message_to_dict_keeps_64_bit_integers_numeric():
    info = dom(domid=1, memory_kb=1 << 40, spec=domains_pb2.DomainSpec(maxmem_mb=5))
    data = output.message_to_dict(info)
    assert data["memory_kb"] == 1 << 40 and data["spec"]["maxmem_mb"] == 5 and data["pid"] == 0


# --------------------------------------------------------------------------
# xl info

def test_host_info_lines():
    text = output.format_host_info(domains_pb2.HostInfo(
        host="lab", release="6.1", xen_version="4.19-xenlab", nr_cpus=4,
        total_memory_kb=8 * 1024 * 1024, free_memory_kb=1024 * 1024 + 1023, nr_domains=2,
        xen_caps="xen-3.0-x86_64", rundir="/r", doorbell="/r/evtchn.sock", launcher="local",
        uptime=3.25, ops={"EventChannel/Send": 3, "doorbell/SEND": 40}))
    lines = text.splitlines()
    assert lines[0] == "host                   : lab"
    assert all(line[23:25] == ": " for line in lines)
    values = dict((line[:23].rstrip(), line[25:]) for line in lines)
    assert values["total_memory"] == "8192" and values["free_memory"] == "1024"
    assert (values["xen_major"], values["xen_minor"], values["xen_extra"]) == ("4", "19", "-xenlab")
    assert values["xen_version"] == "4.19-xenlab" and values["nr_cpus"] == "4"
    assert values["xen_caps"] == "xen-3.0-x86_64" and values["uptime"] == "3.2"
    assert list(values)[:5] == ["host", "release", "nr_cpus", "total_memory", "free_memory"]
    assert values["hypervisor_ops"] == "43"
    assert values["hypervisor_ops_by_op"] == "EventChannel/Send=3 doorbell/SEND=40"


def test_host_info_without_a_dotted_version_has_no_major_minor():
    text = output.format_host_info(domains_pb2.HostInfo(xen_version="dev"))
    assert "xen_major" not in text and "xen_version            : dev" in text
    assert "page_sharing" not in text       # a hypervisor that does not say


# --------------------------------------------------------------------------
# xenstore values and trees

@pytest.mark.parametrize("raw, shown", [
    (b"plain text", "plain text"),
    (b"a\tb\nc\rd\fe", "a\\tb\\nc\\rd\\fe"),
    (b"back\\slash", "back\\\\slash"),
    (b"\x00\x01\x7f\xff", "\\000\\001\\177\\377"),
    (b'"quoted"', '"quoted"'),
    (b"", ""),
])
def test_sanitise_value(raw, shown):
    assert output.sanitise_value(raw) == shown
    assert output.unsanitise_value(shown) == raw


def test_unsanitise_keeps_unknown_escapes_and_a_trailing_backslash():
    assert output.unsanitise_value("a\\qb\\") == b"aqb\\"


def test_ls_tree_indents_one_space_per_level():
    perms = (xenstore_pb2.Perm(domid=0, perm="n"), xenstore_pb2.Perm(domid=5, perm="r"))
    text = output.format_ls([
        output.LsEntry(0, "local", b""),
        output.LsEntry(1, "domain", b""),
        output.LsEntry(2, "0", b""),
        output.LsEntry(3, "name", b"Domain-0"),
        output.LsEntry(3, "secret", None),
        output.LsEntry(3, "bin", b"\x01\n", perms),
    ])
    assert text == ('local = ""\n'
                    ' domain = ""\n'
                    '  0 = ""\n'
                    '   name = "Domain-0"\n'
                    '   secret:\n'
                    '   bin = "\\001\\n"  (n0,r5)\n')


def test_format_perms():
    assert output.format_perms([xenstore_pb2.Perm(domid=1, perm="b"),
                                xenstore_pb2.Perm(domid=0, perm="r")]) == "b1,r0"


@pytest.mark.parametrize("text, perm, domid", [("n0", "n", 0), ("r5", "r", 5), ("w12", "w", 12),
                                               ("b7", "b", 7)])
def test_parse_perm(text, perm, domid):
    assert xenstore.parse_perm(text) == xenstore_pb2.Perm(perm=perm, domid=domid)


@pytest.mark.parametrize("text", ["x1", "r", "5", "rw1", "r-1", ""])
def test_parse_perm_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        xenstore.parse_perm(text)


def test_child_path():
    assert xenstore.child_path("/", "local") == "/local"
    assert xenstore.child_path("/local/domain", "0") == "/local/domain/0"
    assert xenstore.child_path("/local/", "x") == "/local/x"


# --------------------------------------------------------------------------
# xl argument types

@pytest.mark.parametrize("text, kib", [
    ("512", 512 * 1024),        # no suffix: MiB, as xl's parse_mem_size_kb
    ("512m", 512 * 1024), ("512M", 512 * 1024),
    ("2g", 2 * 1024 * 1024), ("1t", 1 << 30),
    ("4096k", 4096), ("4096K", 4096),
    ("1048576b", 1024), ("1000b", 0),
])
def test_parse_memory_kb(text, kib):
    assert xl.parse_memory_kb(text) == kib


@pytest.mark.parametrize("text", ["", "m", "12q", "1.5g", "-1", "12mb", "0x10"])
def test_parse_memory_kb_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        xl.parse_memory_kb(text)


def test_domain_ref_number_is_an_id_else_a_name():
    assert xl.domain_ref("7") == common_pb2.DomainRef(domid=7)
    assert xl.domain_ref("0") == common_pb2.DomainRef(domid=0)
    assert xl.domain_ref("web1") == common_pb2.DomainRef(name="web1")
    assert xl.describe_ref(xl.domain_ref("web1")) == "web1"
    assert xl.describe_ref(xl.domain_ref("3")) == "3"


@pytest.mark.parametrize("text", ["0", "-1", "x", ""])
def test_vcpu_count_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        xl.vcpu_count(text)


# --------------------------------------------------------------------------
# main: parsing and dispatch without a hypervisor

def test_every_command_has_help(capsys):
    for group, commands in (("xl", xl.COMMANDS), ("xenstore", xenstore.COMMANDS)):
        for name, (help_text, _, _) in commands.items():
            with pytest.raises(SystemExit) as info:
                cli_main.main([group, name, "--help"], env={})
            assert info.value.code == 0
            out = capsys.readouterr().out
            assert f"xenlab {group} {name}" in out and help_text[1:] in out
    with pytest.raises(SystemExit):
        cli_main.main(["--help"], env={})
    out = capsys.readouterr().out
    assert all(name in out for name in ("hypervisor", "domain", "demo", "xl", "xenstore"))


def test_missing_hypervisor_is_one_line_and_exit_1(tmp_path, capsys):
    assert cli_main.main(["xl", "list"], env={"XENLAB_RUNDIR": str(tmp_path)}) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"xenlab xl: no lab is running in {tmp_path} (start one with `xenlab up`")
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["xl", "--rundir", "{d}", "list"],
    ["xl", "list", "--rundir", "{d}"],
    ["-v", "xl", "list", "--rundir={d}"],
    ["xenstore", "--rundir", "{d}", "ls"],
])
def test_rundir_flag_anywhere_beats_the_environment(tmp_path, capsys, argv):
    argv = [a.replace("{d}", str(tmp_path / "flag")) for a in argv]
    assert cli_main.main(argv, env={"XENLAB_RUNDIR": str(tmp_path / "env")}) == 1
    assert f"no lab is running in {tmp_path / 'flag'} " in capsys.readouterr().err


def test_default_rundir():
    assert str(cli_main.default_rundir({"XENLAB_RUNDIR": "/x"})) == "/x"
    assert str(cli_main.default_rundir({})).startswith("/tmp/xenlab-")


def test_create_dry_run_parses_and_prints_the_spec(tmp_path, capsys):
    path = tmp_path / "web.cfg"
    path.write_text("name = 'web'\nmemory = 32\nfoo = 1\nvif = ['bridge=br1']\n")
    assert cli_main.main(["xl", "create", "-n", str(path), "memory=48"], env={}) == 0
    captured = capsys.readouterr()
    spec = json.loads(captured.out)
    assert spec["name"] == "web" and spec["memory_mb"] == 48 and spec["vif"][0]["bridge"] == "br1"
    assert captured.err.splitlines() == [f"Parsing config from {path}",
                                         f"{path}:3: warning: unknown key 'foo' ignored"]


def test_create_config_error_prints_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.cfg"
    path.write_text("name = 'web'\nmemory = 64\nmaxmem = 32\n")
    assert cli_main.main(["xl", "create", "-q", str(path)], env={}) == 1
    assert capsys.readouterr().err == f"{path}:3: memory (64 MiB) is larger than maxmem (32 MiB)\n"


def test_create_missing_file_and_bad_overrides(tmp_path, capsys):
    assert cli_main.main(["xl", "create", "-q", str(tmp_path / "no.cfg")], env={}) == 1
    assert "xenlab xl: create: cannot read" in capsys.readouterr().err
    assert cli_main.main(["xl", "create", "-q", "memory=3"], env={}) == 1
    assert "no config file given" in capsys.readouterr().err
    assert cli_main.main(["xl", "create", "-q", "a.cfg", "junk"], env={}) == 1
    assert "'junk' is not a key=value override" in capsys.readouterr().err


def test_create_with_defconfig_flag(tmp_path, capsys):
    path = tmp_path / "x.cfg"
    path.write_text("memory = 32\n")
    assert cli_main.main(["xl", "create", "-q", "-n", "-f", str(path), "name='x'"], env={}) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "x"


def test_bad_arguments_exit_2_with_usage(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main.main(["xl", "mem-set", "web", "12q"], env={})
    assert info.value.code == 2 and "invalid memory size" in capsys.readouterr().err


def test_rpc_errors_are_one_line_with_the_status(capsys):
    async def fails():
        raise grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(), details="no domain named 'x'")
    assert xl.run_command("xenlab xl", "destroy", fails) == 1
    assert capsys.readouterr().err == "xenlab xl: destroy: no domain named 'x' (NOT_FOUND)\n"


@pytest.fixture
def fake_delegate(monkeypatch):
    module = types.ModuleType("xenlab_fake_delegate")
    seen = {}

    def add_arguments(parser):
        parser.add_argument("--rundir", default=None)
        parser.add_argument("--port", type=int)
        parser.add_argument("word", nargs="?")

    def run(args):
        seen["args"] = args
        return 3

    module.add_arguments, module.run = add_arguments, run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli_main.DELEGATES, "fake", (module.__name__, "a fake command"))
    return seen


def test_delegated_command_gets_its_own_arguments_and_the_rundir(fake_delegate):
    assert cli_main.main(["fake", "--port", "5", "hello"], env={"XENLAB_RUNDIR": "/r"}) == 3
    args = fake_delegate["args"]
    assert (args.port, args.word, str(args.rundir)) == (5, "hello", "/r")


def test_delegated_command_keeps_an_explicit_rundir(fake_delegate):
    cli_main.main(["-v", "fake", "--rundir", "/mine"], env={"XENLAB_RUNDIR": "/r"})
    assert fake_delegate["args"].rundir == "/mine"


def test_delegated_help_comes_from_the_module(fake_delegate, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main.main(["fake", "--help"], env={})
    assert info.value.code == 0 and "--port" in capsys.readouterr().out


def test_delegated_coroutine_run_is_awaited(monkeypatch, fake_delegate):
    module = sys.modules["xenlab_fake_delegate"]

    async def run(args):
        return 4
    monkeypatch.setattr(module, "run", run)
    assert cli_main.main(["fake"], env={}) == 4


def test_missing_delegate_module_breaks_only_itself(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(cli_main.DELEGATES, "ghost", ("xenlab.no_such_module", "gone"))
    assert cli_main.main(["ghost", "--anything"], env={}) == 1
    assert "xenlab ghost: not available" in capsys.readouterr().err
    assert cli_main.main(["xl", "list"], env={"XENLAB_RUNDIR": str(tmp_path)}) == 1
    assert "no lab is running" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Handlers against the in-process hypervisor (no asyncio.run: the handlers
# are awaited directly on the test's loop)

def parse(argv):
    return cli_main.build_parser().parse_args(argv)


async def xl_run(lab, *argv):
    args = parse(["xl", *argv])
    return await args.xl_handler(args, xl.Toolstack(rundir=lab.rundir))


async def xs_run(lab, *argv):
    args = parse(["xenstore", *argv])
    return await args.xs_handler(args, xl.Toolstack(rundir=lab.rundir))


async def test_xl_create_list_and_destroy(hypervisor, tmp_path, capsys):
    path = tmp_path / "web.cfg"
    path.write_text("name = 'web'\nmemory = 16\nvcpus = 2\nlauncher = 'none'\n")
    assert await xl_run(hypervisor, "create", "-q", str(path)) == 0
    await xl_run(hypervisor, "list")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == output.XL_LIST_HEADER
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["web"][2:4] == ["16", "2"] and "Domain-0" in rows

    await xl_run(hypervisor, "list", "-l", "web")
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["config"]["name"] == "web" and entry["config"]["vcpus"] == 2

    await xl_run(hypervisor, "destroy", "web")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await xl_run(hypervisor, "list", "web")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_xl_info(hypervisor, capsys):
    await xl_run(hypervisor, "info")
    out = capsys.readouterr().out
    assert out.startswith("host                   : ") and "nr_domains             : 1" in out


async def test_xenstore_write_read_ls(hypervisor, capsys):
    await xs_run(hypervisor, "write", "/test/a", "1\\t2", "/test/b/c", "x")
    await xs_run(hypervisor, "read", "/test/a", "/test/b/c")
    assert capsys.readouterr().out == "1\\t2\nx\n"
    await xs_run(hypervisor, "ls", "/test")
    assert capsys.readouterr().out == 'a = "1\\t2"\nb = ""\n c = "x"\n'
    await xs_run(hypervisor, "list", "/test")
    assert capsys.readouterr().out == "a\nb\n"
    await xs_run(hypervisor, "rm", "/test/b")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await xs_run(hypervisor, "read", "/test/b/c")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
