// The live view: fetches /ui/state every second and redraws. Everything the server sends
// is put on the page as text, never as markup.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "title") e.title = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

const fmt = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

// Work in flight, in seconds at the replica's capacity.
function queuedSeconds(r) {
  const perSecond = r.capacity_mu_per_min / 60;
  return perSecond > 0 ? (r.inflight_mu + r.peer_mu) / perSecond : 0;
}

function level(seconds) {
  if (seconds < 0.05) return "l0";
  if (seconds < 0.5) return "l1";
  if (seconds < 1.5) return "l2";
  if (seconds < 4) return "l3";
  return "l4";
}

// The model whose fleet is shown (a node serving several has a tab for each).
let shown = new URLSearchParams(location.search).get("model") || "";

function renderModels(s) {
  const models = s.models || [];
  $("models").hidden = models.length < 2;
  $("model").hidden = models.length >= 2;
  const tabs = models.map((m) => {
    const b = el("button", { class: "tab" + (m === s.model ? " active" : ""), "data-model": m }, m);
    b.addEventListener("click", () => { shown = m; refresh(); });
    return b;
  });
  $("models").replaceChildren(...tabs);
}

function renderHeader(s) {
  $("model").textContent = "model " + (s.model || "(not known yet)");
  renderModels(s);
  const c = s.cluster;
  $("whoami").textContent = c ? "node " + c.node : "standalone";
  $("leader").hidden = !c;
  $("leader").textContent = c ? (c.leader ? "leader node " + c.leader + " · term " + c.term : "no leader") : "";
  $("leader").dataset.leader = c && c.leader ? String(c.leader) : "";
  $("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
}

function renderReplicas(s) {
  const byRack = new Map();
  for (const r of s.replicas) {
    if (!byRack.has(r.rack)) byRack.set(r.rack, []);
    byRack.get(r.rack).push(r);
  }
  const racks = [...byRack.keys()].sort();
  // Cells as large as the fleet allows: a few replicas show their ids, a thousand fit.
  const n = s.replicas.length;
  const size = n <= 64 ? "big" : n <= 400 ? "mid" : "small";
  const out = [];
  let available = 0, inflight = 0, capacity = 0;
  for (const rack of racks) {
    const rows = byRack.get(rack).sort((a, b) => a.id - b.id);
    const cells = rows.map((r) => {
      const q = queuedSeconds(r);
      available += r.available ? 1 : 0;
      inflight += r.inflight_mu + r.peer_mu;
      capacity += r.capacity_mu_per_min;
      const where = r.node != null ? " on node " + r.node : "";
      const health = r.health ? " · registry: " + r.health : "";
      const title = "replica " + r.label + " (id " + r.id + ")" + where + " · " + (r.available ? "in service" : "out of service") + health +
        "\n" + fmt(r.inflight_mu + r.peer_mu) + " MU in flight (" + r.requests + " requests from this router)" +
        "\n" + fmt(q) + " s of work at " + fmt(r.capacity_mu_per_min) + " MU/min";
      const cell = el("div", {
        class: "replica " + size + " " + (r.available ? level(q) : "down"),
        "data-id": String(r.id), "data-available": String(r.available), title,
      });
      if (size === "big") cell.textContent = r.label;
      return cell;
    });
    const up = rows.filter((r) => r.available).length;
    out.push(el("div", { class: "rack", "data-rack": rack },
      el("h3", {}, "rack " + rack + " — " + up + "/" + rows.length + " in service"),
      el("div", { class: "cells" }, ...cells)));
  }
  $("racks").replaceChildren(...out);
  $("fleet-summary").textContent = available + " of " + s.replicas.length + " in service · " +
    fmt(inflight) + " MU in flight · " + fmt(capacity) + " MU/min capacity";
}

// A stable colour per replica subset (by its first replica), so that neighbouring slices on
// different replicas stand apart.
function subsetColour(first) {
  const h = (first * 137.508) % 360;
  return "hsl(" + h + ", 55%, 62%)";
}

function renderKeyspace(s) {
  const k = s.keyspace;
  const labels = new Map(s.replicas.map((r) => [r.id, r.label]));
  const moved = new Set(k.moved);
  $("keyspace-summary").textContent = "generation " + k.generation + " · " + k.slices + " slices · " +
    k.moved.length + " moved by the last round";
  $("keyspace-summary").dataset.generation = String(k.generation);
  const canvas = $("band");
  const width = canvas.clientWidth || 800;
  canvas.width = width;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, canvas.height);
  for (let i = 0; i < k.starts.length; i++) {
    const x0 = k.starts[i] * width;
    const x1 = (i + 1 < k.starts.length ? k.starts[i + 1] : 1) * width;
    ctx.fillStyle = subsetColour(k.firsts[i]);
    ctx.fillRect(x0, 12, Math.max(1, x1 - x0 - 0.5), 32);
    if (moved.has(i)) {
      ctx.fillStyle = "#d9534f";
      ctx.fillRect(x0, 2, Math.max(2, x1 - x0 - 0.5), 7);
    }
  }
  // The slices the last round moved first, then the rest in key order.
  const order = k.subsets.map((_, i) => i).sort((a, b) => (moved.has(b) - moved.has(a)) || a - b);
  const rows = order.map((i) => el("tr",
    { class: moved.has(i) ? "moved" : "", "data-slice": String(i) },
    el("td", {}, String(i) + (moved.has(i) ? " (moved)" : "")),
    el("td", {}, (k.starts[i] * 100).toFixed(2) + "%"),
    el("td", {}, k.subsets[i].map((id) => labels.get(id) || String(id)).join(", "))));
  $("slices").tBodies[0].replaceChildren(...rows);
}

function renderMembers(s) {
  const c = s.cluster;
  $("standalone").hidden = !!c;
  $("members").hidden = !c;
  if (!c) return;
  const rows = c.members.map((m) => el("tr", { "data-node": String(m.id), "data-role": m.role },
    el("td", {}, String(m.id)), el("td", {}, m.role), el("td", {}, m.rack), el("td", {}, m.http)));
  $("members").tBodies[0].replaceChildren(...rows);
}

function renderTenants(s) {
  $("no-tenants").hidden = s.tenants.length > 0;
  const rows = s.tenants.map((t) => {
    const share = t.reserved_mu_per_min > 0 ? t.used_mu_per_min / t.reserved_mu_per_min : 0;
    const fill = el("span", {});
    fill.style.width = Math.min(100, share * 100).toFixed(0) + "%";
    return el("tr", { "data-tenant": t.tenant },
      el("td", {}, t.tenant), el("td", {}, fmt(t.used_mu_per_min)), el("td", {}, fmt(t.reserved_mu_per_min)),
      el("td", {}, el("div", { class: "bar" + (share > 1 ? " over" : "") }, fill)));
  });
  $("tenants").tBodies[0].replaceChildren(...rows);
}

function renderEvents(s) {
  const items = s.events.slice(-100).reverse().map((e) => el("li",
    { class: "event", "data-kind": e.kind, "data-seq": String(e.seq) },
    el("time", {}, new Date(e.at_ms).toLocaleTimeString()),
    el("span", { class: "kind" }, e.kind.replace("_", " ")),
    e.detail));
  $("events").replaceChildren(...items);
}

async function refresh() {
  try {
    const query = shown ? "?model=" + encodeURIComponent(shown) : "";
    const r = await fetch("/ui/state" + query, { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    document.body.classList.remove("stale");
    renderHeader(s);
    renderReplicas(s);
    renderKeyspace(s);
    renderMembers(s);
    renderTenants(s);
    renderEvents(s);
    document.body.dataset.ready = "true";
  } catch (err) {
    document.body.classList.add("stale");
    $("refreshed").textContent = "not updated: " + err.message;
  }
}

refresh();
setInterval(refresh, 1000);
