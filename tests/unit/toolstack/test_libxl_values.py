"""The xenstore values libxl writes (and xenstored makes), read back as a
user reads them: `xenlab xenstore read` and `xenlab xenstore rm`."""
from __future__ import annotations

import asyncio

import pytest

from xenlab.cli.main import main
from xenlab.hypervisor.xenstored_ring import STORE_GFN
from xenlab.proto import domains_pb2


async def xenstore(lab, capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = await asyncio.to_thread(main, ["xenstore", *argv], {"XENLAB_RUNDIR": str(lab.rundir)})
    out = capsys.readouterr()
    return rc, out.out, out.err


async def read(lab, capsys, path: str) -> str:
    rc, out, err = await xenstore(lab, capsys, "read", path)
    assert rc == 0, err
    return out.rstrip("\n")


async def web(lab, **vif) -> int:
    domid, _ = await lab.create_domain(
        "web", vif=[domains_pb2.VifSpec(mac="00:16:3e:00:00:07", **vif)])
    return domid


@pytest.mark.parametrize("rate, node", [
    ("10Mb/s@20ms", "25000,20000"),      # 1,250,000 B/s for 20 ms
    ("10Mb/s", "62500,50000"),           # libxlu_vif.c's default interval: 50 ms
    ("1MB/s@1s", "1000000,1000000"),
])
async def test_the_rate_node_is_bytes_comma_usec_as_libxl_writes_it(hypervisor, capsys, rate, node):
    """It held the text as typed (10Mb/s@20ms)."""
    domid = await web(hypervisor, rate=rate)
    assert await read(hypervisor, capsys, f"/local/domain/0/backend/vif/{domid}/0/rate") == node


@pytest.mark.parametrize("script, node", [
    ("", "/etc/xen/scripts/vif-bridge"),
    ("vif-route", "/etc/xen/scripts/vif-route"),
    ("/usr/local/lib/xen/vif-mine", "/usr/local/lib/xen/vif-mine"),
])
async def test_script_is_an_absolute_path_under_xens_script_dir(hypervisor, capsys, script, node):
    """It was 'vif-bridge'; libxl__abs_path puts a bare name under XEN_SCRIPT_DIR."""
    domid = await web(hypervisor, script=script)
    assert await read(hypervisor, capsys, f"/local/domain/0/backend/vif/{domid}/0/script") == node


async def test_store_nodes_name_the_store_ring_and_the_port_xenstored_bound(hypervisor, capsys):
    domid = await web(hypervisor)
    assert await read(hypervisor, capsys, f"/local/domain/{domid}/store/ring-ref") == str(STORE_GFN)
    port = int(await read(hypervisor, capsys, f"/local/domain/{domid}/store/port"))
    assert port == hypervisor.hv.xenstored.domains[domid].port and port > 0


async def test_the_toolstack_records_the_domain_type(hypervisor, capsys):
    """/libxl/D/type was missing (libxl__domain_make writes it)."""
    domid = await web(hypervisor)
    assert await read(hypervisor, capsys, f"/libxl/{domid}/type") == "pv"


async def test_xenstored_has_its_tool_node(hypervisor, capsys):
    rc, out, err = await xenstore(hypervisor, capsys, "ls", "/tool")
    assert rc == 0, err
    assert "xenstored" in out.split()


async def test_rm_of_a_missing_node_whose_parent_exists_succeeds(hypervisor, capsys):
    """It failed with ENOENT; C xenstored acknowledges it (do_rm)."""
    domid = await web(hypervisor)
    rc, _, err = await xenstore(hypervisor, capsys, "rm", f"/local/domain/{domid}/data/never")
    assert (rc, err) == (0, "")
    rc, _, err = await xenstore(hypervisor, capsys, "rm", f"/local/domain/{domid}/data/no/never")
    assert rc == 1 and len(err.splitlines()) == 1 and "does not exist" in err, err
