"""`xenlab graph` on a running lab: the demo lab's domains, vifs, veths and
bridge, as dot that Graphviz draws and as Mermaid."""
import asyncio
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


async def graph(lab, *args) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xenlab.cli.main", "graph", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "XENLAB_RUNDIR": str(lab.rundir)})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_graph_draws_every_domain_of_the_demo_lab(lab_factory, tmp_path):
    lab = await lab_factory()
    dot, mermaid = await graph(lab), await graph(lab, "--format", "mermaid")
    for name in ("web", "db", "cache", "xenbr0", "Domain-0"):
        assert f'"{name}"' in dot and f'"{name}"' in mermaid, name
    for domid in (lab.domid("web"), lab.domid("db"), lab.domid("cache")):
        assert f'"veth:veth{domid}.0" -- "br:xenbr0" [label="port vif{domid}.0"];' in dot
    assert mermaid.startswith("flowchart LR\n")
    if shutil.which("dot") is not None:
        done = subprocess.run(["dot", "-Tsvg"], input=dot.encode(), capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
    out = tmp_path / "lab.mmd"
    await graph(lab, "-f", "mermaid", "-o", str(out))
    assert out.read_text() == mermaid


def test_graph_without_a_lab_says_so_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    done = subprocess.run([sys.executable, "-m", "xenlab.cli.main", "graph", "--rundir", str(run)],
                          capture_output=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.decode().count("\n") == 1 and "no lab" in done.stderr.decode()
