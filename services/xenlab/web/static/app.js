// The live view of a lab: the topology from /api/topology, drawn with
// Cytoscape.js; then everything from the lab's event stream (/api/events,
// the same messages as its MQTT topics: docs/EVENTS.md).
"use strict";

const xenlab = (window.xenlab = {
  cy: null,
  domains: new Map(),      // name -> {domid, state}
  links: new Map(),        // "bridge:port" -> {bridge, port, state, carrier, link, rates}
  rings: new Map(),        // vifname -> its vif.link message (either side set down)
  fdb: new Map(),          // "bridge mac vlan" -> entry
  events: [],
  captureAt,
});

const STATE_COLOURS = { running: "#2da44e", paused: "#d4a72c", created: "#8c959f",
                        shutdown: "#8c959f", crashed: "#cf222e", dying: "#cf222e" };

function bits(bytesPerSecond) {
  const b = (bytesPerSecond || 0) * 8;
  if (b >= 1e9) return (b / 1e9).toFixed(2) + " Gbit/s";
  if (b >= 1e6) return (b / 1e6).toFixed(2) + " Mbit/s";
  if (b >= 1e3) return (b / 1e3).toFixed(1) + " kbit/s";
  return b.toFixed(0) + " bit/s";
}

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// -- the graph ------------------------------------------------------------------------
function draw(elements) {
  const style = [
    { selector: "node", style: { label: "data(label)", "font-size": 11, "text-valign": "center",
                                 "background-color": "#ddf4ff", "border-width": 1,
                                 "border-color": "#54aeff", shape: "round-rectangle",
                                 width: (n) => 12 + 7 * String(n.data("label")).length,
                                 height: 24 } },
    { selector: "node[kind = 'domain']", style: { "background-color": "data(colour)", color: "#fff",
                                                  "font-weight": "bold", shape: "round-rectangle" } },
    { selector: "node[kind = 'driver']", style: { "background-color": "#f6f8fa", "text-valign": "top",
                                                  "border-color": "#8c959f", shape: "round-rectangle" } },
    { selector: "node[kind = 'bridge']", style: { shape: "hexagon", "background-color": "#fff8c5",
                                                  "border-color": "#d4a72c", height: 36 } },
    { selector: "node[kind = 'uplink']", style: { shape: "tag", "background-color": "#fbefff" } },
    { selector: "edge", style: { width: "data(width)", "line-color": "#8c959f", "curve-style": "bezier",
                                 label: "data(rateLabel)", "font-size": 9, "text-rotation": "autorotate",
                                 "text-background-color": "#fff", "text-background-opacity": 0.8 } },
    { selector: "edge[kind = 'ring']", style: { "line-color": "#0969da", "line-style": "solid" } },
    { selector: "edge[kind = 'netback']", style: { "line-style": "dotted" } },
    { selector: "edge[kind = 'patch']", style: { "line-style": "dashed" } },
    { selector: "edge[?port]", style: { "line-color": "#1a7f37" } },
    { selector: "edge[?netem]", style: { "line-color": "#bc4c00", "target-arrow-shape": "none" } },
    { selector: "edge.down", style: { "line-color": "#cf222e", "line-style": "dashed" } },
  ];
  for (const e of elements) {
    if (e.group === "nodes" && e.data.kind === "domain") e.data.colour = STATE_COLOURS[e.data.state] || "#8c959f";
    // A port's edge shows its rates (paintLink); the others what they join (eth0, MAC, IP).
    if (e.group === "edges") Object.assign(e.data, { width: 2, rateLabel: e.data.port ? e.data.netem || "" : e.data.label });
  }
  if (xenlab.cy) xenlab.cy.destroy();
  const positions = place(elements);
  xenlab.cy = cytoscape({ container: document.getElementById("graph"), elements, style,
                          layout: { name: "preset", positions: (n) => positions[n.id()], padding: 20 } });
  xenlab.cy.on("tap", "edge[?port]", (evt) => captureAt(evt.target.data("bridge"), evt.target.data("port")));
  for (const link of xenlab.links.values()) paintLink(link);
  for (const ring of xenlab.rings.values()) paintRing(ring);
}

// Left to right as a frame goes, as `xenlab graph` ranks it for dot: domUs,
// then in their driver domain each vif and its veth end, then the bridges
// (each beside the middle of its ports), then the uplinks.
function place(elements) {
  const COLUMN = { domain: 0, vif: 1, veth: 2, bridge: 3, uplink: 4 };
  const nodes = elements.filter((e) => e.group === "nodes");
  const edges = elements.filter((e) => e.group === "edges").map((e) => e.data);
  const row = {};
  let next = 0;
  for (const e of edges.filter((d) => d.kind === "ring")) {
    if (row[e.source] === undefined) row[e.source] = next;
    row[e.target] = next++;
  }
  for (const e of edges.filter((d) => d.kind === "netback")) row[e.target] = row[e.source];
  for (const n of nodes) if (n.data.kind === "domain" && row[n.data.id] === undefined) row[n.data.id] = next++;
  const taken = new Set();
  for (const n of nodes.filter((n) => n.data.kind === "bridge")) {
    const ends = edges.filter((d) => d.target === n.data.id && row[d.source] !== undefined)
                      .map((d) => row[d.source]);
    let r = ends.length ? Math.round(ends.reduce((a, b) => a + b, 0) / ends.length) : next++;
    while (taken.has(r)) r++;
    taken.add(r);
    row[n.data.id] = r;
  }
  for (const e of edges.filter((d) => d.kind === "uplink")) row[e.target] = row[e.source];
  const out = {};
  for (const n of nodes) {
    if (n.data.kind in COLUMN) out[n.data.id] = { x: COLUMN[n.data.kind] * 190, y: (row[n.data.id] || 0) * 80 };
  }
  return out;
}

// -- tables ---------------------------------------------------------------------------
function renderDomains() {
  const body = document.querySelector("#domains tbody");
  body.replaceChildren(...[...xenlab.domains.entries()]
    .sort((a, b) => a[1].domid - b[1].domid)
    .map(([name, d]) => {
      const row = el("tr", undefined, { "data-domain": name, "data-state": d.state });
      row.append(el("td", name), el("td", String(d.domid)), el("td", d.state));
      return row;
    }));
}

function linkDown(link) { return link.carrier === false || link.state === "disabled"; }

function paintLink(link) {
  const edge = xenlab.cy && xenlab.cy.edges().filter(
    (e) => e.data("bridge") === link.bridge && e.data("port") === link.port);
  if (!edge || edge.empty()) return;
  const r = link.rates || {};
  const total = (r.rx_bytes || 0) + (r.tx_bytes || 0);
  const rates = link.rates ? `in ${bits(r.rx_bytes)} / out ${bits(r.tx_bytes)}` : "";
  // A shaped link (xenlab tc) says how, beside its rates.
  const netem = edge.data("netem") || "";
  edge.data("rateLabel", [rates, netem].filter(Boolean).join(" | "));
  edge.data("width", Math.min(12, 2 + Math.log10(1 + total * 8)));
  edge.toggleClass("down", linkDown(link));
}

// A vif's link (vif.link): its ring, guest to driver domain, is down when
// either side set it down.
function paintRing(ring) {
  const edge = xenlab.cy && xenlab.cy.getElementById(`ring:${ring.vifname}`);
  if (edge && !edge.empty()) edge.toggleClass("down", ring.link === "down");
}

function renderLinks() {
  const body = document.querySelector("#links tbody");
  body.replaceChildren(...[...xenlab.links.values()]
    .sort((a, b) => (a.bridge + a.port).localeCompare(b.bridge + b.port))
    .map((link) => {
      const r = link.rates || {};
      const key = `${link.bridge}:${link.port}`;
      const row = el("tr", undefined, { "data-link": key, "data-in-pps": String(r.rx_packets || 0),
                                        "data-out-pps": String(r.tx_packets || 0) });
      if (linkDown(link)) row.className = "down";
      const button = el("button", "pcap", { title: `capture at ${key}`, "data-capture": key });
      button.addEventListener("click", () => captureAt(link.bridge, link.port));
      const capture = el("td");
      capture.append(button);
      row.append(el("td", key), el("td", linkDown(link) ? "down" : link.state || ""),
                 el("td", bits(r.rx_bytes), { class: "rate" }), el("td", bits(r.tx_bytes), { class: "rate" }),
                 capture);
      return row;
    }));
}

function fdbKey(e) { return `${e.bridge} ${e.mac} ${e.vlan || 0}`; }

function renderFdb() {
  const body = document.querySelector("#fdb tbody");
  body.replaceChildren(...[...xenlab.fdb.values()]
    .sort((a, b) => fdbKey(a).localeCompare(fdbKey(b)))
    .map((e) => {
      const row = el("tr", undefined, { "data-mac": e.mac });
      row.append(el("td", e.bridge), el("td", e.mac), el("td", e.port), el("td", e.vlan ? String(e.vlan) : ""),
                 el("td", e.permanent ? "permanent" : e.static ? "static" : ""));
      return row;
    }));
}

function logEvent(topic, p) {
  const what = { "domain.state": () => `${p.name} ${p.state}`,
                 "vif.state": () => `${p.vifname} front ${p.frontend_state_name} back ${p.backend_state_name}` +
                                    (p.present ? "" : " (gone)"),
                 "vif.hotplug": () => `${p.vifname} hotplug ${p.hotplug_status} ${p.hotplug_error}`,
                 "vif.link": () => `${p.vifname} link ${p.link} (backend ${p.backend}, frontend ${p.frontend})`,
                 "fdb.event": () => p.monitor || `${p.kind} ${p.mac} ${p.port}`,
                 "port.state": () => p.monitor || `${p.port} ${p.state}` }[p.type];
  if (!what) return;
  const time = new Date(p.time * 1000).toLocaleTimeString();
  const item = el("li", `${time} ${p.type} ${what()}`, { "data-type": p.type });
  const list = document.getElementById("events");
  list.prepend(item);
  while (list.children.length > 200) list.lastChild.remove();
}

// -- loading and following ------------------------------------------------------------
async function getJSON(url) {
  const reply = await fetch(url, { credentials: "same-origin" });
  if (!reply.ok) throw new Error(`${url}: ${reply.status} ${await reply.text()}`);
  return reply.json();
}

async function loadTopology() {
  const topo = await getJSON("/api/topology");
  document.getElementById("lab").textContent = topo.lab;
  for (const d of topo.domains) {
    const known = xenlab.domains.get(d.name);
    xenlab.domains.set(d.name, { domid: d.domid, state: known ? known.state : d.state });
  }
  const present = new Set(topo.domains.map((d) => d.name));
  for (const name of [...xenlab.domains.keys()]) if (!present.has(name)) xenlab.domains.delete(name);
  const ports = new Set();
  for (const p of topo.ports) {
    const key = `${p.bridge}:${p.name}`;
    ports.add(key);
    xenlab.links.set(key, { ...(xenlab.links.get(key) || {}), bridge: p.bridge, port: p.name,
                            state: p.state, carrier: p.carrier, link: p.link });
  }
  for (const key of [...xenlab.links.keys()]) if (!ports.has(key)) xenlab.links.delete(key);
  for (const e of topo.elements) {
    if (e.group === "nodes" && e.data.kind === "domain") {
      const d = xenlab.domains.get(e.data.label);
      if (d) e.data.state = d.state;
    }
  }
  draw(topo.elements);
  renderDomains();
  renderLinks();
}

async function loadFdb() {
  const table = await getJSON("/api/fdb");
  xenlab.fdb.clear();
  for (const e of table.entries) xenlab.fdb.set(fdbKey(e), e);
  renderFdb();
}

let reloading = null;
function reloadTopology() {      // several changes at once: one reload
  if (reloading) return;
  reloading = setTimeout(() => { reloading = null; loadTopology().catch(console.error); }, 300);
}

function apply(message) {
  const p = message.payload;
  if (!p) return;                  // a cleared state topic: the reload below has it gone
  xenlab.events.push(message);
  if (xenlab.events.length > 1000) xenlab.events.shift();
  if (!message.retained) logEvent(message.topic, p);
  switch (p.type) {
    case "domain.state": {
      const known = xenlab.domains.get(p.name);
      if (p.state === "destroyed" || !known) reloadTopology();
      if (p.state !== "destroyed") xenlab.domains.set(p.name, { domid: p.domid, state: p.state });
      else xenlab.domains.delete(p.name);
      const node = xenlab.cy && xenlab.cy.getElementById(`dom:${p.name}`);
      if (node && !node.empty()) node.data({ state: p.state, colour: STATE_COLOURS[p.state] || "#8c959f" });
      renderDomains();
      break;
    }
    case "vif.state":
      if (!message.retained) reloadTopology();
      break;
    case "vif.link":
      xenlab.rings.set(p.vifname, p);
      paintRing(p);
      break;
    case "port.state": {
      const key = `${p.bridge}:${p.port}`;
      if (!p.present) { xenlab.links.delete(key); reloadTopology(); }
      else {
        if (!xenlab.links.has(key)) reloadTopology();
        const link = { ...(xenlab.links.get(key) || {}), bridge: p.bridge, port: p.port,
                       state: p.state, carrier: p.carrier };
        xenlab.links.set(key, link);
        paintLink(link);
      }
      renderLinks();
      break;
    }
    case "port.stats": {
      const key = `${p.bridge}:${p.port}`;
      const link = { ...(xenlab.links.get(key) || { bridge: p.bridge, port: p.port }),
                     state: p.port_state, rates: p.rates };
      xenlab.links.set(key, link);
      paintLink(link);
      renderLinks();
      break;
    }
    case "fdb.event": {
      const key = fdbKey(p);
      if (["learn", "move", "static"].includes(p.kind)) xenlab.fdb.set(key, p);
      else xenlab.fdb.delete(key);
      renderFdb();
      break;
    }
  }
}

function follow() {
  const status = document.getElementById("stream");
  const source = new EventSource("/api/events");
  source.onopen = () => { status.textContent = "live"; status.className = "stream live"; };
  source.onmessage = (evt) => apply(JSON.parse(evt.data));
  source.addEventListener("ended", (evt) => {
    // A service's stream ended (it restarted): start over, states first.
    status.textContent = `reconnecting: ${JSON.parse(evt.data)}`;
    status.className = "stream down";
    source.close();
    setTimeout(() => { loadTopology().then(loadFdb).catch(console.error); follow(); }, 1000);
  });
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "stream down"; };
}

// -- capture --------------------------------------------------------------------------
function captureAt(bridge, port) {
  const seconds = Number(document.getElementById("capture-seconds").value) || 5;
  const status = document.getElementById("capture-status");
  const params = new URLSearchParams({ bridge, port, seconds: String(seconds) });
  const a = el("a", undefined, { href: `/api/capture?${params}`, download: `${bridge}-${port}.pcap` });
  document.body.append(a);
  a.click();
  a.remove();
  status.textContent = `capturing at ${bridge}:${port} for ${seconds} s: the pcap downloads as it runs`;
}

loadTopology().then(loadFdb).then(follow).catch((err) => {
  document.getElementById("stream").textContent = String(err);
  document.getElementById("stream").className = "stream down";
});
