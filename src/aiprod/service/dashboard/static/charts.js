/* Small SVG charts for the aiprod console (no library: bars, stacked bars, lines, h-bars).
 * Each function replaces the content of `el` with one <svg> scaled to the element's width. */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmt(v) {
  if (Math.abs(v) >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k";
  if (Number.isInteger(v)) return String(v);
  return v.toFixed(Math.abs(v) < 1 ? 2 : 1);
}

function frame(el, height) {
  const width = Math.max(240, Math.round(el.clientWidth || 480));
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  el.replaceChildren(svg);
  return { svg, width, height, left: 40, right: 8, top: 8, bottom: 22 };
}

function axes(f, max, labels, every) {
  const { svg, width, height, left, right, top, bottom } = f;
  for (const t of [0, 0.5, 1]) {
    const y = top + (height - top - bottom) * (1 - t);
    svg.append(svgEl("line", { x1: left, x2: width - right, y1: y, y2: y, stroke: "#e3e6ea" }));
    svg.append(svgEl("text", { x: left - 4, y: y + 4, "text-anchor": "end" }, fmt(max * t)));
  }
  const n = labels.length;
  const step = Math.max(1, every || Math.ceil(n / Math.max(2, Math.floor((width - left) / 60))));
  const w = (width - left - right) / Math.max(1, n);
  labels.forEach((lab, i) => {
    if (i % step) return;
    svg.append(svgEl("text", { x: left + w * (i + 0.5), y: height - 6, "text-anchor": "middle" }, lab));
  });
  return w;
}

/* series: [{name, values:[...]}]: bars per label, stacked (default) or side by side. */
function barChart(el, labels, series, opts) {
  const o = opts || {};
  const f = frame(el, o.height || 180);
  const val = (s, i) => Math.max(0, Number(s.values[i]) || 0);
  const tops = labels.map((_, i) => o.grouped
    ? Math.max(0, ...series.map((s) => val(s, i)))
    : series.reduce((sum, s) => sum + val(s, i), 0));
  const max = niceMax(Math.max(0, ...tops));
  const w = axes(f, max, labels);
  const plotH = f.height - f.top - f.bottom;
  const barW = o.grouped ? (w * 0.76) / Math.max(1, series.length) : w * 0.76;
  labels.forEach((lab, i) => {
    let base = 0;
    series.forEach((s, k) => {
      const v = val(s, i);
      if (v <= 0) return;
      const h = (v / max) * plotH;
      const x = f.left + w * i + w * 0.12 + (o.grouped ? k * barW : 0);
      const rect = svgEl("rect", {
        x, width: Math.max(1, barW), y: f.top + plotH - (o.grouped ? 0 : base) - h, height: h,
        class: s.cls || "s" + k,
      });
      rect.append(svgEl("title", {}, `${lab} ${s.name}: ${fmt(v)}${o.unit || ""}`));
      f.svg.append(rect);
      if (!o.grouped) base += h;
    });
  });
}

/* series: [{name, values}] as lines over labels. */
function lineChart(el, labels, series, opts) {
  const o = opts || {};
  const f = frame(el, o.height || 140);
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values.map(Number))));
  const w = axes(f, max, labels, o.labelEvery);
  const plotH = f.height - f.top - f.bottom;
  series.forEach((s, k) => {
    const pts = s.values.map((v, i) => `${f.left + w * (i + 0.5)},${f.top + plotH - (Number(v) / max) * plotH}`);
    if (!pts.length) return;
    f.svg.append(svgEl("polyline", { points: pts.join(" "), fill: "none", "stroke-width": 2, class: s.cls || "s" + k }));
  });
}

/* rows: [{label, value, note}] as horizontal bars. */
function hbarChart(el, rows, opts) {
  const o = opts || {};
  const rowH = 24;
  const f = frame(el, Math.max(rowH, rows.length * rowH) + 4);
  const labelW = Math.min(160, f.width * 0.35);
  const max = niceMax(Math.max(0, ...rows.map((r) => Number(r.value) || 0)));
  rows.forEach((r, i) => {
    const y = 2 + i * rowH;
    const barW = ((Number(r.value) || 0) / max) * (f.width - labelW - 90);
    f.svg.append(svgEl("text", { x: 0, y: y + 15 }, r.label));
    f.svg.append(svgEl("rect", { x: labelW, y: y + 4, width: Math.max(1, barW), height: rowH - 8, class: o.cls || "s3" }));
    f.svg.append(svgEl("text", { x: labelW + barW + 6, y: y + 15 }, `${o.prefix || ""}${fmt(Number(r.value) || 0)}${o.unit || ""}${r.note ? " " + r.note : ""}`));
  });
  if (!rows.length) f.svg.append(svgEl("text", { x: 0, y: 16 }, o.empty || "no data"));
}

function legend(el, series) {
  el.replaceChildren(...series.map((s, k) => {
    const span = document.createElement("span");
    const i = document.createElement("i");
    i.className = s.cls || "s" + k;
    span.append(i, s.name);
    return span;
  }));
}

window.aiprodCharts = { barChart, lineChart, hbarChart, legend };
