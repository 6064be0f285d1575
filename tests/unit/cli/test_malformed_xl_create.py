"""`xenlab xl create` with every kind of bad xl.cfg (issue "Hostile input and
faults", part 6), against an in-process hypervisor.

Each bad file is one line on stderr, naming the file and the line, exit
status 1, and nothing created: no domain, no xenstore node, no memory (the
whole hypervisor is compared before and after). Mistakes only the
hypervisor can see (a MAC already on the bridge, a bridge nobody runs, a
backend domain that does not exist, more memory than the host has) are the
hypervisor's one-line answer, with nothing created either.
"""
from __future__ import annotations

import asyncio

import pytest

from xenlab.cli.main import main
from xenlab.proto import common_pb2, xenstore_pb2
from xenlab.testing import check_invariants

GOOD = 'name = "web"\nmemory = 16\nvif = [ "mac=00:16:3e:00:00:01" ]\n'

# (config, line the error is reported on, words the message must contain)
BAD_CONFIGS = {
    # the syntax
    "unterminated string": ('name = "web\nmemory = 16\n', 1, "unterminated string"),
    "unclosed list": ('name = "web"\nvif = [ "mac=00:16:3e:00:00:01"\nmemory = 16\n', 3,
                      "the '[' on line 2"),
    "unterminated list": ('name = "web"\nvif = [ "mac=00:16:3e:00:00:01",\n', 3,
                          "'[' on line 2 has no ']'"),
    "missing =": ('name "web"\n', 1, "expected '='"),
    "missing value": ('name = "web"\nmemory =\n', 2, "expected a value"),
    "bare word": ('name = web\n', 1, "quote strings"),
    "bad escape": ('name = "w\\qb"\n', 1, "invalid escape"),
    "two values": ('name = "web" "db"\n', 1, "expected a newline"),
    "list separator": ('name = "web"\nvif = [ "a" "b" ]\n', 2, "expected ',' or ']'"),
    "+= on a number": ('name = "web"\nmemory = 16\nmemory += 16\n', 3, "'+='"),
    "a setting name that is a number": ('name = "web"\n12 = 3\n', 2, "expected a setting name"),
    # the domain
    "no name": ('memory = 16\n', None, "needs a name"),
    "empty name": ('name = ""\n', 1, "name is empty"),
    "digits for a name": ('name = "42"\n', 1, "all digits"),
    "memory zero": ('name = "web"\nmemory = 0\n', 2, "at least 1"),
    "memory not a number": ('name = "web"\nmemory = "lots"\n', 2, "must be a number"),
    "memory a list": ('name = "web"\nmemory = [16]\n', 2, "not a list"),
    "memory above maxmem": ('name = "web"\nmemory = 64\nmaxmem = 32\n', 3, "larger than maxmem"),
    "no vcpus": ('name = "web"\nvcpus = 0\n', 2, "at least 1"),
    "maxvcpus below vcpus": ('name = "web"\nvcpus = 4\nmaxvcpus = 2\n', 3, "smaller than vcpus"),
    "unknown action": ('name = "web"\non_crash = "explode"\n', 2, "expected one of"),
    "bad uuid": ('name = "web"\nuuid = "1234"\n', 2, "not a UUID"),
    "unknown launcher": ('name = "web"\nlauncher = "teleport"\n', 2, "expected one of"),
    # the vifs
    "vif not a list": ('name = "web"\nvif = "mac=00:16:3e:00:00:01"\n', 2, "must be a list"),
    "vif entry a list": ('name = "web"\nvif = [ ["mac=00:16:3e:00:00:01"] ]\n', 2,
                         "must be a string"),
    "vif not key=value": ('name = "web"\nvif = [ "bridge" ]\n', 2, "is not key=value"),
    "unknown vif key": ('name = "web"\nvif = [ "colour=blue" ]\n', 2, "unknown vif key"),
    "short mac": ('name = "web"\nvif = [ "mac=00:16:3e:00:01" ]\n', 2, "not a MAC address"),
    "non-hex mac": ('name = "web"\nvif = [ "mac=00:16:3e:00:00:zz" ]\n', 2, "not a MAC address"),
    "seven octets": ('name = "web"\nvif = [ "mac=00:16:3e:00:00:01:02" ]\n', 2,
                     "not a MAC address"),
    "multicast mac": ('name = "web"\nvif = [ "mac=01:00:5e:00:00:01" ]\n', 2, "multicast"),
    "broadcast mac": ('name = "web"\nvif = [ "mac=ff:ff:ff:ff:ff:ff" ]\n', 2, "multicast"),
    "mtu too small": ('name = "web"\nvif = [ "mtu=67" ]\n', 2, "out of range"),
    "mtu not a number": ('name = "web"\nvif = [ "mtu=big" ]\n', 2, "not a number"),
    "bad rate": ('name = "web"\nvif = [ "rate=fast" ]\n', 2, "invalid rate"),
    "zero rate": ('name = "web"\nvif = [ "rate=0Mb/s" ]\n', 2, "rate overflow"),
    "bad rate interval": ('name = "web"\nvif = [ "rate=1Mb/s@soon" ]\n', 2,
                          "replenishment interval"),
    "bad ip": ('name = "web"\nvif = [ "ip=10.0.0.256" ]\n', 2, "not an IPv4 address"),
    "ipv6": ('name = "web"\nvif = [ "ip=fe80::1" ]\n', 2, "not an IPv4 address"),
    "bridge with a slash": ('name = "web"\nvif = [ "bridge=br/0" ]\n', 2, "bridge"),
    "bridge too long": ('name = "web"\nvif = [ "bridge=abcdefghijklmnop" ]\n', 2, "bridge"),
    "vifname with a space": ('name = "web"\nvif = [ "vifname=vif 1" ]\n', 2, "interface name"),
    "duplicate devid": ('name = "web"\nvif = [ "devid=1", "devid=1" ]\n', 2, "already used"),
    "empty backend": ('name = "web"\nvif = [ "backend=" ]\n', 2, "is empty"),
    "the second vif is bad": ('name = "web"\nvif = [ "mac=00:16:3e:00:00:01",\n'
                              '        "mac=zz" ]\n', 3, "vif 1"),
}


def snapshot(hv) -> dict:
    return {"domains": [(d.domid, d.name) for d in hv.domains],
            "xenstore": dict(hv.xenstore.nodes()), "free": hv.memory.free_pages,
            "shm": hv.memory.shm_files()}


async def xl(hypervisor, capsys, *argv: str) -> tuple[int, str]:
    """`xenlab xl ARGV` against the fixture's hypervisor, from another thread
    (the hypervisor runs on this one's loop); its exit status and stderr."""
    capsys.readouterr()
    rc = await asyncio.to_thread(main, ["xl", *argv],
                                 {"XENLAB_RUNDIR": str(hypervisor.rundir)})
    return rc, capsys.readouterr().err


async def create_fails(hypervisor, capsys, path, *words: str) -> str:
    before = snapshot(hypervisor.hv)
    rc, err = await xl(hypervisor, capsys, "create", "-q", str(path))
    assert rc == 1, err
    lines = [line for line in err.splitlines() if "warning" not in line]
    assert len(lines) == 1, f"not one line: {err!r}"
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert snapshot(hypervisor.hv) == before, "a refused create left something behind"
    check_invariants(hypervisor.hv)
    return lines[0]


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
async def test_a_bad_config_is_one_line_naming_the_line_and_creates_nothing(
        hypervisor, capsys, tmp_path, kind):
    text, line, words = BAD_CONFIGS[kind]
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    where = f"{path}:{line}:" if line is not None else str(path)
    await create_fails(hypervisor, capsys, path, where, words)


async def test_a_good_config_creates_the_domain(hypervisor, capsys, tmp_path):
    path = tmp_path / "good.cfg"
    path.write_text(GOOD)
    rc, err = await xl(hypervisor, capsys, "create", "-q", str(path))
    assert rc == 0, err
    assert [d.name for d in hypervisor.hv.domains] == ["Domain-0", "web"]


async def test_mistakes_only_the_hypervisor_can_see(hypervisor, capsys, tmp_path):
    good = tmp_path / "good.cfg"
    good.write_text(GOOD)
    assert (await xl(hypervisor, capsys, "create", "-q", str(good)))[0] == 0
    cases = {
        "the same MAC on the same bridge": (
            'name = "db"\nvif = [ "mac=00:16:3E:00:00:01" ]\n', ("already used", "xenbr0")),
        "a backend domain that does not exist": (
            'name = "db"\nvif = [ "backend=netdom" ]\n', ("netdom",)),
        "more memory than the host has": ('name = "db"\nmemory = 4000\n', ("free",)),
        "a name in use": (GOOD.replace("00:00:01", "00:00:02"), ("already exists",)),
    }
    for kind, (text, words) in cases.items():
        path = tmp_path / "db.cfg"
        path.write_text(text)
        await create_fails(hypervisor, capsys, path, *words)
    # Once bridges have registered, a vif on a bridge nobody runs is refused too.
    await hypervisor.dom0.xenstore.Write(xenstore_pb2.WriteRequest(
        path="/tool/xenlab/bridges/xenbr0/address", value=b"unix:/nonexistent"))
    path = tmp_path / "db.cfg"
    path.write_text('name = "db"\nvif = [ "bridge=xenbr9" ]\n')
    await create_fails(hypervisor, capsys, path, "xenbr9", "xenbr0")


async def test_network_attach_with_bad_settings_attaches_nothing(hypervisor, capsys, tmp_path):
    good = tmp_path / "good.cfg"
    good.write_text(GOOD)
    assert (await xl(hypervisor, capsys, "create", "-q", str(good)))[0] == 0
    for settings, word in ((["mac=zz"], "MAC"), (["mac=00:16:3e:00:00:01"], "already used"),
                           (["rate=fast"], "rate"), (["bridge=a/b"], "bridge"),
                           (["colour=blue"], "unknown vif key")):
        before = snapshot(hypervisor.hv)
        rc, err = await xl(hypervisor, capsys, "network-attach", "web", *settings)
        assert rc == 1 and word in err, (settings, err)
        assert snapshot(hypervisor.hv) == before
    listing = await hypervisor.dom0.domains.NetworkList(common_pb2.DomainRef(name="web"))
    assert [v.mac for v in listing.vifs] == ["00:16:3e:00:00:01"]


@pytest.mark.parametrize("name", ["²", "٣", "é"])
async def test_xl_commands_take_a_name_python_calls_a_digit(hypervisor, capsys, tmp_path, name):
    """'²'.isdigit() is True: `xl create` refused the name as all digits and
    every other command failed on int('²'). xl reads a DOM as an id only when
    it is all ASCII digits (C's isdigit()), so each of these is a name."""
    path = tmp_path / "odd.cfg"
    path.write_text(f'name = "{name}"\nmemory = 16\n')
    for argv in (["create", "-q", str(path)], ["list", name], ["pause", name], ["unpause", name],
                 ["network-attach", name, "mac=00:16:3e:00:00:07"], ["network-list", name],
                 ["vcpu-set", name, "1"],
                 ["mem-set", name, "16m"], ["destroy", name]):
        rc, err = await xl(hypervisor, capsys, *argv)
        assert rc == 0, (argv, err)
    assert [d.name for d in hypervisor.hv.domains] == ["Domain-0"]
    check_invariants(hypervisor.hv)
