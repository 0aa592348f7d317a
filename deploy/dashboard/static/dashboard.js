// edgefleet dashboard: poll the page's JSON twin and update the page in place.
// Tables name their rows' JSON path (data-rows) and each column's key and format (<th data-key data-kind>);
// single values name theirs with data-path (and data-kind). Charts (<svg data-series>) plot the device's series.
// Formats mirror format_value() in app.py.
"use strict";

function fmt(value, kind) {
  if (value === null || value === undefined || value === "") return "-";
  if (kind === "num") {
    const x = Number(value), m = Math.abs(x);
    return m >= 100 ? x.toFixed(0) : m >= 10 ? x.toFixed(1) : m >= 1 ? x.toFixed(2) : x.toFixed(3);
  }
  if (kind === "bool") return value ? "yes" : "no";
  if (kind === "time") return new Date(value * 1000).toISOString().slice(0, 19).replace("T", " ");
  if (kind === "pct") return (Number(value) * 100).toFixed(0) + "%";
  if (kind === "counts") return Object.entries(value).map(([k, n]) => `${k} ${n}`).join(", ") || "-";
  if (kind === "labels") return Object.keys(value).sort().map((k) => `${k}=${value[k]}`).join(" ") || "-";
  return String(value);
}

function lookup(data, path) {
  return path.split(".").reduce((v, k) => (v === null || v === undefined ? undefined : v[k]), data);
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function cell(value, kind) {
  const td = el("td", {});
  if (kind === "device" || kind === "rollout") {
    td.append(el("a", { href: `/${kind}s/${encodeURIComponent(value)}` }, value));
  } else if (kind === "status") {
    td.append(el("span", { class: `badge ${value}` }, value));
  } else if (kind === "progress") {
    td.append(el("progress", { max: "1", value: String(value) }), " " + fmt(value, "pct"));
  } else {
    td.textContent = fmt(value, kind);
  }
  if (["num", "pct", "progress"].includes(kind)) td.className = "num";
  return td;
}

function updateTable(table, data) {
  const rows = lookup(data, table.dataset.rows);
  if (!Array.isArray(rows)) return;
  const cols = [...table.querySelectorAll("thead th")].map((th) => [th.dataset.key, th.dataset.kind]);
  const ordered = table.dataset.rows === "series" ? [...rows].reverse() : rows;  // newest benchmark first
  const body = el("tbody", {});
  for (const row of ordered) {
    const tr = el("tr", { "data-id": String(row[cols[0][0]]) });
    for (const [key, kind] of cols) {
      const td = cell(row[key], kind);
      td.dataset.key = key;
      tr.append(td);
    }
    body.append(tr);
  }
  table.tBodies[0].replaceWith(body);
}

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#2563eb", "#d97706", "#dc2626", "#059669"];

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function drawChart(chart, series) {
  const keys = chart.dataset.series.split(",");
  const W = 400, H = 160, L = 44, R = 8, T = 8, B = 20;
  const points = series.filter((p) => keys.some((k) => p[k] !== null && p[k] !== undefined));
  chart.replaceChildren();
  chart.append(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "frame" }));
  if (points.length === 0) {
    chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "nodata" }, "no data"));
    return;
  }
  const values = points.flatMap((p) => keys.map((k) => p[k]).filter((v) => v !== null && v !== undefined));
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi === lo) { lo = lo - 1; hi = hi + 1; }
  const t0 = points[0].ts, t1 = points[points.length - 1].ts;
  const x = (t) => L + (t1 === t0 ? (W - L - R) / 2 : ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  chart.append(svg("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, fmt(hi, "num")));
  chart.append(svg("text", { x: L - 4, y: H - B, "text-anchor": "end" }, fmt(lo, "num")));
  chart.append(svg("text", { x: L, y: H - 4 }, fmt(t0, "time").slice(11)));
  chart.append(svg("text", { x: W - R, y: H - 4, "text-anchor": "end" }, fmt(t1, "time").slice(11)));
  keys.forEach((key, i) => {
    const pts = points.filter((p) => p[key] !== null && p[key] !== undefined);
    const colour = COLOURS[i % COLOURS.length];
    const line = svg("polyline", { points: pts.map((p) => `${x(p.ts).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "),
                                   fill: "none", stroke: colour, "stroke-width": "1.5", "data-key": key });
    chart.append(line);
    for (const p of pts) chart.append(svg("circle", { cx: x(p.ts).toFixed(1), cy: y(p[key]).toFixed(1), r: "2", fill: colour }));
    if (keys.length > 1) chart.append(svg("text", { x: W / 2 - 50 + i * 40, y: H - 4, style: `fill: ${colour}` }, key.replace("_ms", "")));
  });
}

function update(data) {
  // A page listing a variable number of sections (models, rollouts) reloads when that number changes.
  for (const box of document.querySelectorAll("[data-count]")) {
    const list = lookup(data, box.dataset.count);
    if (Array.isArray(list) && String(list.length) !== box.dataset.length) { location.reload(); return; }
  }
  for (const table of document.querySelectorAll("table[data-rows]")) updateTable(table, data);
  for (const node of document.querySelectorAll("[data-path]")) {
    const value = lookup(data, node.dataset.path);
    node.textContent = fmt(value, node.dataset.kind || "text");
    if (node.classList.contains("badge")) node.className = `badge ${value}`;
  }
  if (Array.isArray(data.series)) for (const chart of document.querySelectorAll("svg.chart")) drawChart(chart, data.series);
}

async function poll() {
  const live = document.getElementById("live");
  try {
    const response = await fetch(document.body.dataset.json, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    update(await response.json());
    live.className = "ok";
    live.title = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    live.className = "stale";
    live.title = `cannot update: ${err}`;
  }
}

const period = Number(document.body.dataset.poll) || 3000;
poll();
setInterval(poll, period);
