"""The lab's topology graph and its renderings: dot checked by Graphviz's
own parser, Mermaid by its structure, Cytoscape's elements by what the web
view relies on."""
import re
import shutil
import subprocess

import pytest

from xenlab.lab import topology

DOMAINS = [
    {"domid": 0, "name": "Domain-0", "state": "running", "vifs": []},
    {"domid": 1, "name": "web", "state": "running", "vifs": [
        {"devid": 0, "vifname": "vif1.0", "mac": "00:16:3e:00:00:01", "bridge": "xenbr0",
         "ip": "10.0.0.1/24", "backend_id": 0}]},
    {"domid": 2, "name": 'db "main"', "state": "paused", "vifs": [
        {"devid": 0, "vifname": "vif2.0", "mac": "00:16:3e:00:00:02", "bridge": "xenbr1",
         "ip": "", "backend_id": 0},
        {"devid": 1, "vifname": "vif2.1", "mac": "00:16:3e:00:00:03", "bridge": "xenbr0",
         "ip": "10.0.0.3", "backend_id": 0}]},
]


def port(name, link="veth"):
    return {"name": name, "link": link, "state": "forwarding", "carrier": True}


BRIDGES = [
    {"name": "xenbr0", "ports": [port("vif1.0"), port("vif2.1"), port("xl0", "tap"),
                                 port("to-xenbr1", "patch")]},
    {"name": "xenbr1", "ports": [port("vif2.0"), port("to-xenbr0", "patch")]},
]


@pytest.fixture
def topo():
    return topology.build(DOMAINS, BRIDGES)


def test_each_vif_is_a_ring_to_netback_a_veth_pair_and_a_bridge_port(topo):
    kinds = {n.id: n.kind for n in topo.nodes}
    assert kinds["dom:web"] == "domain" and kinds["drv:Domain-0"] == "driver"
    assert kinds["vif:vif1.0"] == "vif" and kinds["veth:veth1.0"] == "veth"
    assert topo.node("vif:vif2.1").parent == topo.node("veth:veth2.1").parent == "drv:Domain-0"
    path = {(e.kind, e.source, e.target) for e in topo.edges}
    assert {("ring", "dom:web", "vif:vif1.0"), ("netback", "vif:vif1.0", "veth:veth1.0"),
            ("veth", "veth:veth1.0", "br:xenbr0"), ("veth", "veth:veth2.0", "br:xenbr1"),
            ("uplink", "br:xenbr0", "tap:xl0"), ("patch", "br:xenbr0", "br:xenbr1")} <= path
    ring = next(e for e in topo.edges if e.id == "ring:vif1.0")
    assert ring.label == "eth0 00:16:3e:00:00:01 10.0.0.1/24"
    # An edge on a bridge port names it: what the web view counts and captures at.
    on_port = {(e.bridge, e.port) for e in topo.edges if e.port}
    assert on_port == {("xenbr0", "vif1.0"), ("xenbr0", "vif2.1"), ("xenbr1", "vif2.0"),
                       ("xenbr0", "xl0"), ("xenbr0", "to-xenbr1")}
    # One cable, drawn once.
    assert sum(e.kind == "patch" for e in topo.edges) == 1


def test_a_vif_whose_bridge_port_is_not_there_yet_has_no_port_edge():
    topo = topology.build(DOMAINS[:2], [{"name": "xenbr0", "ports": []}])
    assert not [e for e in topo.edges if e.kind == "veth"]


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz's dot is not installed (Debian package graphviz; ./dev setup "
                           "installs it as root)")
def test_dot_output_is_accepted_by_graphviz(topo, tmp_path):
    text = topology.to_dot(topo, 'my "lab"')
    done = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    svg = done.stdout.decode()
    # Every domain, vif, veth and bridge is drawn, the quoted name too.
    for label in ("web", "db &quot;main&quot;", "vif2.1", "veth1.0", "xenbr1", "xl0", "Domain&#45;0"):
        assert label in svg, label


def test_dot_has_one_cluster_per_driver_domain_and_every_edge(topo):
    text = topology.to_dot(topo)
    assert text.count("subgraph") == 1 and '"cluster_drv:Domain-0"' in text
    assert text.count(" -- ") == len(topo.edges)


def test_mermaid_is_a_well_formed_flowchart(topo):
    lines = topology.to_mermaid(topo).splitlines()
    assert lines[0] == "flowchart LR"
    declared, depth, edges = set(), 0, 0
    node = re.compile(r'^\s*(n\d+)(\[\["|\["|\{\{"|>")([^"]*)("\]\]|"\]|"\}\}|"\])$')
    edge = re.compile(r'^\s*(n\d+) (===|---|-\.-)(\|"[^"]*"\|)? (n\d+)$')
    for line in lines[1:]:
        if m := re.match(r'^\s*subgraph (n\d+)\["([^"]*)"\]$', line):
            depth += 1
            declared.add(m.group(1))
        elif line.strip() == "end":
            depth -= 1
        elif m := node.match(line):
            assert m.group(1) not in declared, f"declared twice: {line}"
            declared.add(m.group(1))
        elif m := edge.match(line):
            assert m.group(1) in declared and m.group(4) in declared, line
            edges += 1
        else:
            pytest.fail(f"not a Mermaid flowchart line: {line!r}")
        assert depth in (0, 1)
    assert depth == 0 and edges == len(topo.edges)
    text = "\n".join(lines)
    assert "db #quot;main#quot;" in text        # a quote would end the label


def test_cytoscape_elements_have_unique_ids_and_compound_parents(topo):
    elements = topology.to_cytoscape(topo)
    ids = [e["data"]["id"] for e in elements]
    assert len(ids) == len(set(ids))
    nodes = {e["data"]["id"] for e in elements if e["group"] == "nodes"}
    for e in elements:
        if e["group"] == "edges":
            assert {e["data"]["source"], e["data"]["target"]} <= nodes
        elif "parent" in e["data"]:
            assert e["data"]["parent"] in nodes


def test_netems_show_on_the_links_they_shape():
    qdiscs = {"vif1.0": "limit 1000 delay 20ms", "veth1.0": "limit 1000 loss 1%",
              "xenbr0:to-xenbr1": "limit 1000 rate 10Mbit", "xenbr0:xl0": "limit 1000 delay 1ms"}
    topo = topology.build(DOMAINS, BRIDGES, qdiscs)
    edges = {e.id: e for e in topo.edges}
    assert edges["ring:vif1.0"].netem == "netem to web: limit 1000 delay 20ms"
    assert edges["ring:vif1.0"].label.endswith("| netem to web: limit 1000 delay 20ms")
    assert edges["port:xenbr0:vif1.0"].netem == "netem from web: limit 1000 loss 1%"
    assert edges["patch:xenbr0:to-xenbr1"].netem == "netem out of xenbr0: limit 1000 rate 10Mbit"
    assert edges["port:xenbr0:xl0"].netem == "netem out of xenbr0: limit 1000 delay 1ms"
    assert not edges["ring:vif2.0"].netem
    assert "netem to web: limit 1000 delay 20ms" in topology.to_dot(topo)
    assert "netem from web" in topology.to_mermaid(topo)
    shaped = [e["data"] for e in topology.to_cytoscape(topo) if e["data"].get("netem")]
    assert len(shaped) == 4
