"""A running lab's topology as a graph, and its renderings: Graphviz dot
and Mermaid (`xenlab graph`, for docs), and the element list the web view
hands to Cytoscape. Pure: built from what ``view.gather`` returns.

The nodes are what Xen's network has on a host in bridge mode:
- each domU, with its interfaces (ethN: MAC and IP);
- in each driver domain (Domain-0), netback's ``vifD.N`` and the Domain-0
  end of the veth pair hotplug made for it (``vethD.N``);
- the bridges, and what else is plugged into them: an uplink (a TAP) and
  the cables between bridges (a lab's ``[[link]]``s, ports ``to-PEER``).

The edges are the links between them: the shared ring of netfront and
netback (domU ethN to vifD.N), netback handing frames to its veth end
(vifD.N to vethD.N), the veth pair to the bridge port named after the vif
(vethD.N to the bridge), a cable between two bridges, a TAP uplink. An edge
that ends on a bridge names that port (``bridge``, ``port``): what the web
view counts, and captures at, on a click.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

from xenlab.drivers.hotplug import veth_name


@dataclass(frozen=True)
class Node:
    id: str
    kind: str                   # domain, vif, veth, bridge, uplink
    label: str
    parent: str = ""            # the driver domain (drv:NAME) a vif or veth lives in
    data: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Edge:
    id: str
    kind: str                   # ring, netback, veth, patch, uplink
    source: str
    target: str
    label: str = ""
    bridge: str = ""            # the bridge port this edge ends on, if any
    port: str = ""
    netem: str = ""             # the netems (xenlab tc) on the devices of this link


@dataclass
class Topology:
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)


def _patch_peer(port: str, bridges: set[str]) -> str | None:
    """The bridge a `to-PEER[.N]` cable port leads to (names are cut to
    IFNAMSIZ-1, so the longest bridge name it begins with)."""
    if not port.startswith("to-"):
        return None
    name = re.sub(r"\.\d+$", "", port[3:])
    found = [b for b in bridges if b == name or (len(port) >= 14 and b.startswith(name))]
    return max(found, key=len) if found else None


def _shaped(edge: Edge, netem: list[str]) -> Edge:
    """The edge with its netems in its label and data."""
    if not netem:
        return edge
    text = "; ".join(netem)
    label = f"{edge.label} | {text}" if edge.label else text
    return dataclasses.replace(edge, label=label, netem=text)


def build(domains: list[dict], bridges: list[dict], qdiscs: dict[str, str] | None = None) -> Topology:
    """`domains` and `bridges`: view.LabView's lists (`xenlab status --json`);
    `qdiscs`: its netems by device (vifD.N, vethD.N, BRIDGE:PORT)."""
    qdiscs = qdiscs or {}
    topo = Topology()
    names = {d["domid"]: d["name"] for d in domains}
    ports = {(br["name"], p["name"]): p for br in bridges for p in br["ports"]}
    for dom in domains:
        if dom["domid"] == 0 or any(v.get("backend_id", 0) == dom["domid"]
                                    for d in domains for v in d["vifs"]):
            topo.nodes.append(Node(f"drv:{dom['name']}", "driver", dom["name"],
                                   data={"domid": dom["domid"], "state": dom["state"]}))
    for dom in domains:
        if dom["domid"] == 0:
            continue
        topo.nodes.append(Node(f"dom:{dom['name']}", "domain", dom["name"],
                               data={"domid": dom["domid"], "state": dom["state"],
                                     "memory_kb": dom.get("memory_kb", 0)}))
        for vif in dom["vifs"]:
            backend = names.get(vif.get("backend_id", 0), "Domain-0")
            parent = f"drv:{backend}"
            vif_id, veth = f"vif:{vif['vifname']}", veth_name(vif["vifname"])
            iface = f"eth{vif['devid']}"
            topo.nodes.append(Node(vif_id, "vif", vif["vifname"], parent,
                                   data={"domid": dom["domid"], "devid": vif["devid"]}))
            topo.nodes.append(Node(f"veth:{veth}", "veth", veth, parent))
            # netem on the vif shapes what goes down the ring to the guest.
            down = qdiscs.get(vif["vifname"])
            topo.edges.append(_shaped(
                Edge(f"ring:{vif['vifname']}", "ring", f"dom:{dom['name']}", vif_id,
                     " ".join(x for x in (iface, vif["mac"], vif.get("ip", "")) if x)),
                [f"netem to {dom['name']}: {down}"] if down else []))
            topo.edges.append(Edge(f"netback:{vif['vifname']}", "netback", vif_id, f"veth:{veth}"))
            if vif.get("bridge") and (vif["bridge"], vif["vifname"]) in ports:
                up, out = qdiscs.get(veth), qdiscs.get(f"{vif['bridge']}:{vif['vifname']}")
                topo.edges.append(_shaped(
                    Edge(f"port:{vif['bridge']}:{vif['vifname']}", "veth", f"veth:{veth}",
                         f"br:{vif['bridge']}", f"port {vif['vifname']}", vif["bridge"],
                         vif["vifname"]),
                    ([f"netem from {dom['name']}: {up}"] if up else [])
                    + ([f"netem out of {vif['bridge']}: {out}"] if out else [])))
    names_of_bridges = {br["name"] for br in bridges}
    cables: dict[tuple[str, str], list[str]] = {}
    for br in bridges:
        topo.nodes.append(Node(f"br:{br['name']}", "bridge", br["name"],
                               data={"stp": br.get("stp", False),
                                     "vlan_filtering": br.get("vlan_filtering", False)}))
        for port in br["ports"]:
            if port.get("link") in ("tap", "vxlan"):
                kind = port["link"]
                topo.nodes.append(Node(f"{kind}:{port['name']}", "uplink", port["name"]))
                out = qdiscs.get(f"{br['name']}:{port['name']}")
                topo.edges.append(_shaped(
                    Edge(f"port:{br['name']}:{port['name']}", "uplink", f"br:{br['name']}",
                         f"{kind}:{port['name']}", f"port {port['name']} ({kind.upper()})",
                         br["name"], port["name"]),
                    [f"netem out of {br['name']}: {out}"] if out else []))
            elif port.get("link") == "patch":
                peer = _patch_peer(port["name"], names_of_bridges)
                if peer is not None:
                    cables.setdefault((br["name"], peer), []).append(port["name"])
    for (a, b), a_ports in sorted(cables.items()):
        if a > b:
            continue
        # The n-th cable from a to b is the n-th from b to a (bridge/server.py names them in pairs).
        for i, (pa, pb) in enumerate(zip(sorted(a_ports), sorted(cables.get((b, a), [])))):
            ends = [(a, pa), (b, pb)]
            topo.edges.append(_shaped(
                Edge(f"patch:{a}:{pa}", "patch", f"br:{a}", f"br:{b}", f"{pa} - {pb}", a, pa),
                [f"netem out of {br_}: {qdiscs[f'{br_}:{p_}']}" for br_, p_ in ends
                 if qdiscs.get(f"{br_}:{p_}")]))
    return topo


# -- renderings -------------------------------------------------------------------------
_DOT_SHAPES = {"domain": "box3d", "vif": "box", "veth": "box", "bridge": "hexagon",
               "uplink": "cds"}
_DOT_STYLE = {"ring": 'style=bold', "netback": 'style=dotted', "veth": "",
              "patch": 'style=dashed', "uplink": ""}


def _dot_id(text: str) -> str:
    return json.dumps(text)        # a double-quoted ID: dot's escapes are JSON's \" and \\


def to_dot(topo: Topology, name: str = "lab") -> str:
    lines = [f"graph {_dot_id(name)} {{", "  rankdir=LR;", '  fontname="Helvetica";',
             '  node [fontname="Helvetica"];', '  edge [fontname="Helvetica", fontsize=10];']
    for node in topo.nodes:
        if node.kind in ("domain", "bridge", "uplink"):
            lines.append(f"  {_dot_id(node.id)} [label={_dot_id(node.label)}, "
                         f"shape={_DOT_SHAPES[node.kind]}];")
    for driver in (n for n in topo.nodes if n.kind == "driver"):
        lines.append(f"  subgraph {_dot_id('cluster_' + driver.id)} {{")
        lines.append(f"    label={_dot_id(driver.label)};")
        for node in topo.nodes:
            if node.parent == driver.id:
                lines.append(f"    {_dot_id(node.id)} [label={_dot_id(node.label)}, "
                             f"shape={_DOT_SHAPES[node.kind]}];")
        lines.append("  }")
    for edge in topo.edges:
        attrs = [f"label={_dot_id(edge.label)}"] if edge.label else []
        attrs += [_DOT_STYLE[edge.kind]] if _DOT_STYLE[edge.kind] else []
        lines.append(f"  {_dot_id(edge.source)} -- {_dot_id(edge.target)}"
                     + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


_MERMAID_SHAPES = {"domain": ('[["', '"]]'), "vif": ('["', '"]'), "veth": ('["', '"]'),
                   "bridge": ('{{"', '"}}'), "uplink": ('>"', '"]')}
_MERMAID_LINKS = {"ring": "===", "netback": "-.-", "veth": "---", "patch": "-.-", "uplink": "---"}


def _mermaid_text(text: str) -> str:
    # Mermaid's entity codes: a quote would end the label.
    return text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def to_mermaid(topo: Topology) -> str:
    ids = {node.id: f"n{i}" for i, node in enumerate(topo.nodes)}
    lines = ["flowchart LR"]

    def node_line(node: Node, indent: str) -> str:
        left, right = _MERMAID_SHAPES[node.kind]
        return f"{indent}{ids[node.id]}{left}{_mermaid_text(node.label)}{right}"

    for node in topo.nodes:
        if node.kind in ("domain", "bridge", "uplink"):
            lines.append(node_line(node, "  "))
    for driver in (n for n in topo.nodes if n.kind == "driver"):
        lines.append(f'  subgraph {ids[driver.id]}["{_mermaid_text(driver.label)}"]')
        for node in topo.nodes:
            if node.parent == driver.id:
                lines.append(node_line(node, "    "))
        lines.append("  end")
    for edge in topo.edges:
        link = _MERMAID_LINKS[edge.kind]
        label = f'|"{_mermaid_text(edge.label)}"|' if edge.label else ""
        lines.append(f"  {ids[edge.source]} {link}{label} {ids[edge.target]}")
    return "\n".join(lines) + "\n"


def to_cytoscape(topo: Topology) -> list[dict]:
    """Cytoscape.js elements: nodes (compound: a vif's parent is its driver
    domain) and edges, each with its kind; an edge on a bridge port names it."""
    out = []
    for node in topo.nodes:
        data = {"id": node.id, "label": node.label, "kind": node.kind, **node.data}
        if node.parent:
            data["parent"] = node.parent
        out.append({"group": "nodes", "data": data})
    for edge in topo.edges:
        out.append({"group": "edges", "data": {
            "id": edge.id, "source": edge.source, "target": edge.target, "kind": edge.kind,
            "label": edge.label, "bridge": edge.bridge, "port": edge.port, "netem": edge.netem}})
    return out
