/* aiprod console: live updates by polling the console's small JSON endpoints (no reloads). */
"use strict";

const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
const C = window.aiprodCharts;

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (r.status === 401) {
    window.location.assign("/dashboard/login");
    throw new Error("logged out");
  }
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

/* Call fn(data) with url's JSON now and every `ms` until fn returns false. */
function poll(url, ms, fn) {
  let stopped = false;
  async function tick() {
    let again = true;
    try {
      again = fn(await getJSON(typeof url === "function" ? url() : url)) !== false;
      document.body.classList.remove("stale");
    } catch (e) {
      document.body.classList.add("stale");
    }
    if (again && !stopped) setTimeout(tick, ms);
  }
  tick();
  return () => { stopped = true; };
}

function text(id, value) {
  const el = document.getElementById(id);
  if (el) el.textContent = value;
}

function td(value, cls) {
  const cell = document.createElement("td");
  if (value instanceof Node) cell.append(value); else cell.textContent = value ?? "";
  if (cls) cell.className = cls;
  return cell;
}

function badge(status) {
  const b = document.createElement("span");
  b.className = "badge " + status;
  b.textContent = status;
  return b;
}

function jobLink(id) {
  const a = document.createElement("a");
  a.href = "/dashboard/jobs/" + encodeURIComponent(id);
  a.textContent = id.slice(0, 8);
  return a;
}

function gb(bytes) { return (bytes / 2 ** 30).toFixed(1) + " GiB"; }

/* ------------------------------------------------------------------ overview */
function overview() {
  const history = { labels: [], queued: [], running: [] };
  let last = null;
  function draw(d) {
    text("queued", d.queued);
    text("running", d.running);
    text("failures-24h", d.failures_24h);
    text("updated-at", d.at);
    const hours = d.jobs_per_hour.map((h) => h.hour);
    const series = [
      { name: "succeeded", values: d.jobs_per_hour.map((h) => h.succeeded) },
      { name: "failed", values: d.jobs_per_hour.map((h) => h.failed) },
      { name: "canceled", values: d.jobs_per_hour.map((h) => h.other) },
    ];
    C.barChart(document.getElementById("chart-hourly"), hours, series);
    C.legend(document.getElementById("legend-hourly"), series);
    C.lineChart(document.getElementById("chart-queue"), history.labels, [
      { name: "queued", values: history.queued, cls: "s4" },
      { name: "running", values: history.running, cls: "s3" },
    ], { labelEvery: 10 });
    C.hbarChart(document.getElementById("chart-p95"),
      d.p95.map((m) => ({ label: m.model, value: m.p95_seconds, note: `(${m.jobs} jobs)` })),
      { unit: " s", empty: "no finished jobs in the last 24 h" });
    const workers = document.getElementById("workers");
    workers.replaceChildren(...d.workers.map((w) => {
      const tr = document.createElement("tr");
      const gpu = (w.gpus || []).map((g) =>
        `${g.name}: ${gb(g.memory_used_bytes)} / ${gb(g.memory_total_bytes)}, ` +
        `${Math.round(g.utilization_percent)} %, ${Math.round(g.temperature_celsius)} °C`).join("; ");
      tr.append(td(w.hostname + " (" + w.pid + ")"), td(badge(w.status)), td(w.device || ""),
        td(w.current_job_id ? jobLink(w.current_job_id) : "—"), td(w.jobs_done, "num"),
        td(gpu || "no GPU stats", "hide-sm"));
      return tr;
    }));
    if (!d.workers.length) {
      const tr = document.createElement("tr");
      tr.append(td("no worker has reported in", "muted"));
      workers.append(tr);
    }
    const fails = document.getElementById("recent-failures");
    fails.replaceChildren(...d.recent_failures.map((f) => {
      const tr = document.createElement("tr");
      tr.append(td(jobLink(f.id)), td(f.key_name), td(f.model, "hide-sm"), td(f.code),
        td(f.message, "prompt"), td(f.at, "hide-sm"));
      return tr;
    }));
  }
  poll("/dashboard/api/overview", 3000, (d) => {
    history.labels.push(d.at.slice(11, 19));
    history.queued.push(d.queued);
    history.running.push(d.running);
    for (const k of ["labels", "queued", "running"]) if (history[k].length > 60) history[k].shift();
    last = d;
    draw(d);
  });
  window.addEventListener("resize", () => last && draw(last));
}

/* ------------------------------------------------------------------ jobs table */
function jobsTable() {
  const live = () => [...document.querySelectorAll("tr[data-job-id]")]
    .filter((tr) => !TERMINAL.has(tr.dataset.status)).map((tr) => tr.dataset.jobId);
  if (!live().length) return;
  poll(() => "/dashboard/api/jobs?ids=" + encodeURIComponent(live().join(",")), 2000, (d) => {
    for (const j of d.data) {
      const tr = document.querySelector(`tr[data-job-id="${CSS.escape(j.id)}"]`);
      if (!tr) continue;
      tr.dataset.status = j.status;
      tr.querySelector(".status").replaceChildren(badge(j.status));
      const p = tr.querySelector(".job-progress");
      if (p) p.textContent = Math.round(j.progress * 100) + " %";
    }
    return live().length > 0;
  });
}

/* ------------------------------------------------------------------ one job */
function jobPage() {
  const root = document.getElementById("job");
  const id = root.dataset.jobId;
  function show(j) {
    root.dataset.status = j.status;
    document.getElementById("job-status").replaceChildren(badge(j.status));
    document.getElementById("job-progress").value = j.progress;
    for (const el of root.querySelectorAll("[data-field]")) {
      const v = j[el.dataset.field];
      el.textContent = v === null || v === undefined || v === "" ? "—" : v;
    }
    for (const el of root.querySelectorAll("[data-when]")) {
      el.hidden = !el.dataset.when.split(" ").includes(j.status);
    }
    const slot = document.getElementById("video-slot");
    if (j.status === "succeeded" && slot && !slot.querySelector("video")) {
      const v = document.createElement("video");
      v.controls = true;
      v.preload = "metadata";
      v.src = slot.dataset.src;
      slot.replaceChildren(v);
    }
    if (j.deliveries && j.deliveries.length) {
      const body = document.getElementById("deliveries");
      body.replaceChildren(...j.deliveries.map((w) => {
        const tr = document.createElement("tr");
        tr.append(td(w.event_type), td(badge(w.status)), td(w.attempts, "num"),
          td(w.last_status_code ?? "—"), td(w.last_error ?? "", "prompt"), td(w.url, "hide-sm prompt"));
        return tr;
      }));
    }
    return !TERMINAL.has(j.status) || (j.deliveries || []).some((w) => w.status === "pending");
  }
  if (TERMINAL.has(root.dataset.status) && !root.dataset.pending) return;
  poll(`/dashboard/api/jobs/${encodeURIComponent(id)}`, 1500, show);
}

/* ------------------------------------------------------------------ costs */
function costs() {
  const d = JSON.parse(document.getElementById("costs-data").textContent);
  function draw() {
    const daily = [
      { name: "revenue", values: d.days.map((x) => x.revenue_usd), cls: "s0" },
      { name: "GPU cost", values: d.days.map((x) => x.gpu_cost_usd), cls: "s1" },
    ];
    C.barChart(document.getElementById("chart-days"), d.days.map((x) => x.period.slice(8)), daily, { grouped: true });
    C.legend(document.getElementById("legend-days"), daily);
    const monthly = [
      { name: "revenue", values: d.months.map((x) => x.revenue_usd), cls: "s0" },
      { name: "GPU cost", values: d.months.map((x) => x.gpu_cost_usd), cls: "s1" },
    ];
    C.barChart(document.getElementById("chart-months"), d.months.map((x) => x.period), monthly, { grouped: true });
    C.legend(document.getElementById("legend-months"), monthly);
    C.hbarChart(document.getElementById("chart-keys"),
      d.keys.map((k) => ({ label: k.name, value: k.revenue_usd, note: `(${k.jobs} jobs)` })),
      { prefix: "$", cls: "s0", empty: "no billed jobs this month" });
  }
  draw();
  window.addEventListener("resize", draw);
}

/* ------------------------------------------------------------------ confirmations */
for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (e) => {
    if (!window.confirm(form.dataset.confirm)) e.preventDefault();
  });
}

const pages = { overview, jobs: jobsTable, job: jobPage, costs };
const run = pages[document.body.dataset.page];
if (run) run();
