/// The dashboard `GET /` serves: one self-contained page (no CDN, no request beyond this server) that polls
/// `/v1/cluster`, `/v1/cluster/experts` and `/metrics` once a second and draws the cluster: its figures, the
/// workers, where layers and experts live, and the routers' heat map. Every colour has its number beside it or
/// in the cell's title, so nothing is told by colour alone; the layout flows to one column on a narrow screen.
/// In one process (`/v1/cluster` says there is no cluster) it shows what the metrics and the heat map give.
public enum Dashboard {
    public static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Conclave</title>
<style>
:root { --bg:#fbfbfa; --fg:#1d1d1f; --dim:#6b6b70; --line:#deded9; --ok:#1a7f37; --warn:#9a6700; --bad:#cf222e; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, sans-serif; background:var(--bg); color:var(--fg); }
header { display:flex; flex-wrap:wrap; gap:4px 16px; align-items:baseline; padding:12px 20px; border-bottom:1px solid var(--line); }
header h1 { font-size:18px; margin:0; }
header .dim, .dim { color:var(--dim); }
main { padding:12px 20px; display:grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap:16px; }
section { background:#fff; border:1px solid var(--line); border-radius:6px; padding:10px 14px; overflow:auto; }
section.wide { grid-column: 1 / -1; }
h2 { font-size:15px; margin:0 0 8px; }
.tiles { display:flex; flex-wrap:wrap; gap:10px; }
.tile { min-width:120px; padding:6px 10px; border:1px solid var(--line); border-radius:4px; }
.tile b { display:block; font-size:20px; font-variant-numeric: tabular-nums; }
table { border-collapse:collapse; width:100%; font-variant-numeric: tabular-nums; }
th, td { text-align:left; padding:3px 6px; border-bottom:1px solid var(--line); white-space:nowrap; }
th { font-weight:600; color:var(--dim); }
.state-ready { color:var(--ok); } .state-suspect, .state-loading, .state-joining, .state-draining { color:var(--warn); } .state-down { color:var(--bad); font-weight:700; }
.state::before { content:"● "; }
#events li { margin:2px 0; }
#workers { font-size:13px; }
#workers th { white-space:normal; vertical-align:bottom; }
#heat svg { display:block; }
#heat rect { stroke:#fff; stroke-width:1; }
details summary { cursor:pointer; color:var(--dim); margin-top:6px; }
@media (max-width: 640px) { main { grid-template-columns: 1fr; padding:8px; } header { padding:8px; } }
</style>
</head>
<body>
<header>
  <h1>Conclave</h1>
  <span id="model">—</span>
  <span class="dim" id="mode"></span>
  <span class="dim" id="updated">connecting…</span>
</header>
<main>
  <section class="wide" aria-labelledby="h-cluster">
    <h2 id="h-cluster">Cluster</h2>
    <div class="tiles">
      <div class="tile">workers up / suspect / down<b id="workers-up">—</b></div>
      <div class="tile">requests running<b id="running">—</b></div>
      <div class="tile">queued<b id="queued">—</b></div>
      <div class="tile">tokens per second<b id="tokps">—</b></div>
      <div class="tile">time to first token p50 / p99<b id="ttft">—</b></div>
      <div class="tile">inter-token p50 / p99<b id="itl">—</b></div>
      <div class="tile">prefix cache hits / tokens reused<b id="prefix">—</b></div>
      <div class="tile">recoveries<b id="recoveries">—</b></div>
    </div>
    <p class="dim">Latencies over the last five minutes. Epoch <span id="epoch">—</span>; <span id="plan"></span></p>
  </section>
  <section class="wide" aria-labelledby="h-workers">
    <h2 id="h-workers">Workers</h2>
    <table id="workers"><thead><tr>
      <th>worker</th><th>state</th><th>layers</th><th>experts</th>
      <th title="bytes it holds / bytes the plan gives it / its --memory">resident / planned / budget</th><th>RSS</th>
      <th>offload hits</th><th>read GB/s</th><th>expert calls</th>
      <th title="over the last 10 s: time a served call took on this worker / time this worker's stage waited per layer for other workers' experts">call ms served / waited</th>
      <th>step p50 / p99 ms</th><th>round trip ms</th><th>heartbeat s</th><th title="ended sequences kept for reuse / their positions">prefix kept</th></tr></thead><tbody></tbody></table>
  </section>
  <section aria-labelledby="h-events">
    <h2 id="h-events">Events</h2>
    <ul id="events"></ul>
  </section>
  <section aria-labelledby="h-placement">
    <h2 id="h-placement">Placement</h2>
    <table id="placement"><thead></thead><tbody></tbody></table>
  </section>
  <section class="wide" aria-labelledby="h-heat">
    <h2 id="h-heat">Expert heat (routers' recent choices per layer × expert)</h2>
    <div id="heat"></div>
    <details><summary>the counts as a table</summary><table id="heat-table"><thead></thead><tbody></tbody></table></details>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const bytes = (n) => n >= 1 << 30 ? (n / (1 << 30)).toFixed(2) + " GiB" : (n / (1 << 20)).toFixed(1) + " MiB";
const ms = (s) => s == null ? "—" : (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
const history = [];        // [{t, metrics}] over the last five minutes
const seen = [];           // [{t, workers: {name: worker}}] over the last ten seconds, for rates per call
let lastStates = {}, events = [], seenRecoveries = 0;

function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const p of m[3].matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[p[1]] = p[2];
    out.push({ name: m[1], labels, value: parseFloat(m[4]) });
  }
  return out;
}
const sum = (ms, name, f) => ms.filter((s) => s.name === name && (!f || f(s.labels))).reduce((a, s) => a + s.value, 0);

// A quantile of a histogram's growth between two scrapes (Prometheus' histogram_quantile over the window).
function quantile(q, now, then, name) {
  const b = (ms) => ms.filter((s) => s.name === name + "_bucket").map((s) => [s.labels.le === "+Inf" ? Infinity : parseFloat(s.labels.le), s.value]).sort((x, y) => x[0] - y[0]);
  const a = b(now), z = then ? b(then) : [];
  const grown = a.map(([le, v], i) => [le, v - (z[i] ? z[i][1] : 0)]);
  const total = grown.length ? grown[grown.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0, prevV = 0;
  for (const [le, v] of grown) {
    if (v >= rank) return le === Infinity ? prevLe : prevLe + (le - prevLe) * (rank - prevV) / Math.max(1e-12, v - prevV);
    prevLe = le; prevV = v;
  }
  return prevLe;
}

function note(text) {
  events.unshift({ t: new Date(), text });
  events = events.slice(0, 50);
  $("events").innerHTML = events.map((e) => `<li><span class="dim">${e.t.toLocaleTimeString()}</span> ${esc(e.text)}</li>`).join("");
}

async function get(path, kind) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) return null;
  return kind === "text" ? r.text() : r.json();
}

// Time per unit over the window: Δseconds ÷ Δcount of two of a worker's counters (null when nothing happened).
function per(w, seconds, count) {
  const then = seen.length > 1 ? seen[0].workers[w.name] : null;
  if (!then) return null;
  const n = w[count] - then[count];
  return n > 0 ? (w[seconds] - then[seconds]) / n : null;
}

function drawWorkers(cluster) {
  const now = Date.now();
  if (cluster) {
    seen.push({ t: now, workers: Object.fromEntries(cluster.workers.map((w) => [w.name, w])) });
    while (seen.length > 2 && now - seen[1].t >= 10000) seen.shift();
  }
  const rows = (cluster ? cluster.workers : []).map((w) => {
    const o = w.offload || {};
    const experts = o.paged_experts ? `${w.experts} (${o.paged_experts} paged)` : `${w.experts}`;
    const layers = w.layers && w.layers.length === 2 ? `${w.layers[0]}..<${w.layers[1]}` : "—";
    return `<tr data-worker="${esc(w.name)}"><td>${esc(w.name)}</td><td class="state state-${esc(w.state)}">${esc(w.state)}</td>` +
      `<td>${layers}</td><td>${experts}</td><td>${bytes(w.resident_bytes)} / ${bytes(w.planned_bytes)} / ${bytes(w.memory_budget)}</td><td>${bytes(w.rss_bytes)}</td>` +
      `<td>${o.slots ? (100 * o.hit_rate).toFixed(1) + "%" : "—"}</td><td>${o.slots ? o.read_gbps : w.read_gbps}</td><td>${w.expert_calls}</td>` +
      `<td class="expert-ms">${ms(per(w, "expert_serve_seconds", "expert_calls"))} / ${ms(per(w, "remote_wait_seconds", "remote_layers"))}</td>` +
      `<td>${w.p50_ms.toFixed(2)} / ${w.p99_ms.toFixed(2)}</td><td>${w.round_trip_ms}</td><td>${w.heartbeat_age_s.toFixed(1)}</td>` +
      `<td title="${w.prefix_entries} sequences, ${w.prefix_tokens} positions">${w.prefix_entries} / ${w.prefix_tokens}</td></tr>`;
  });
  $("workers").tBodies[0].innerHTML = rows.join("") || `<tr><td colspan="14" class="dim">one process: no workers</td></tr>`;
}

function drawPlacement(cluster, experts) {
  if (!experts) { $("placement").tHead.innerHTML = ""; $("placement").tBodies[0].innerHTML = `<tr><td class="dim">a dense model: no experts to place</td></tr>`; return; }
  const names = cluster ? cluster.workers.map((w) => w.name) : ["local"];
  const stage = (l, n) => { const w = cluster && cluster.workers.find((x) => x.name === n); return !cluster || (w && w.layers.length === 2 && l >= w.layers[0] && l < w.layers[1]); };
  $("placement").tHead.innerHTML = `<tr><th>layer</th>${names.map((n) => `<th>${esc(n)}</th>`).join("")}</tr>`;
  $("placement").tBodies[0].innerHTML = experts.layers.map((L) => `<tr><td>${L.layer}</td>` + names.map((n) => {
    const h = L.holders.find((x) => x.worker === n);
    const parts = [stage(L.layer, n) ? "stage" : "", h ? `${h.experts.length} experts` : ""].filter(Boolean);
    return `<td title="${esc(n)}, layer ${L.layer}${h ? ": experts " + h.experts.join(", ") : ""}">${parts.join(", ") || "—"}</td>`;
  }).join("") + `</tr>`).join("");
}

function drawHeat(experts) {
  if (!experts) { $("heat").innerHTML = `<p class="dim">a dense model has no routed experts</p>`; return; }
  const L = experts.layers, E = experts.experts_per_layer;
  const cell = Math.max(6, Math.min(22, Math.floor(900 / Math.max(1, E)))), left = 36, right = 90, top = 4;
  let svg = `<svg role="img" aria-label="expert heat map" width="${left + E * cell + right}" height="${top + L.length * cell + 4}">`;
  for (const row of L) {
    const peak = Math.max(...row.recent, 0);
    const y = top + row.layer * cell;
    svg += `<text x="0" y="${y + cell * 0.75}" font-size="11" fill="#6b6b70">L${row.layer}</text>`;
    row.recent.forEach((v, x) => {
      const f = peak > 0 ? v / peak : 0;
      const holder = (row.holders.find((h) => h.experts.includes(x)) || {}).worker || "?";
      svg += `<rect data-layer="${row.layer}" data-expert="${x}" data-count="${row.total[x]}" x="${left + x * cell}" y="${y}" width="${cell}" height="${cell}" ` +
        `fill="hsl(${220 - 200 * f}, 80%, ${96 - 50 * f}%)"><title>layer ${row.layer}, expert ${x} on ${esc(holder)}: ${v.toFixed(1)} recent, ${row.total[x]} since start</title></rect>`;
    });
    svg += `<text x="${left + E * cell + 6}" y="${y + cell * 0.75}" font-size="11" fill="#6b6b70">${row.imbalance == null ? "idle" : "imb " + row.imbalance.toFixed(2)}</text>`;
  }
  $("heat").innerHTML = svg + `</svg>`;
  $("heat-table").tHead.innerHTML = `<tr><th>layer</th><th>imbalance</th>${Array.from({ length: E }, (_, x) => `<th>${x}</th>`).join("")}</tr>`;
  $("heat-table").tBodies[0].innerHTML = L.map((r) => `<tr><td>${r.layer}</td><td>${r.imbalance == null ? "—" : r.imbalance.toFixed(2)}</td>${r.recent.map((v) => `<td>${v.toFixed(1)}</td>`).join("")}</tr>`).join("");
}

async function tick() {
  try {
    const [cluster, experts, text, models] = await Promise.all([get("/v1/cluster"), get("/v1/cluster/experts"), get("/metrics", "text"), get("/v1/models")]);
    const now = Date.now(), metrics = text ? parseMetrics(text) : [];
    history.push({ t: now, metrics });
    while (history.length > 2 && now - history[1].t > 300000) history.shift();
    const old = history[0], prev = history.length > 1 ? history[history.length - 2] : null;
    $("mode").textContent = cluster ? `${cluster.workers.length} workers, security ${cluster.security}` : "one process";
    $("model").textContent = cluster ? cluster.model : (models && models.data && models.data[0] ? models.data[0].id : "");
    if (cluster) {
      const count = (s) => cluster.workers.filter((w) => w.state === s).length;
      $("workers-up").textContent = `${count("ready")} / ${count("suspect")} / ${count("down")}`;
      $("epoch").textContent = cluster.epoch;
      $("plan").textContent = cluster.plan;
      for (const w of cluster.workers) {
        if (lastStates[w.name] && lastStates[w.name] !== w.state) note(`${w.name}: ${lastStates[w.name]} → ${w.state}`);
        lastStates[w.name] = w.state;
      }
      for (const r of cluster.recoveries.slice(seenRecoveries)) note(`recovery to epoch ${r.epoch} (${r.cause}) in ${r.seconds.toFixed(2)} s, ${r.sequences_replayed} sequences replayed${r.recovered ? "" : " — failed"}`);
      seenRecoveries = cluster.recoveries.length;
      $("recoveries").textContent = cluster.recoveries.length;
    } else {
      $("workers-up").textContent = "one process";
    }
    $("running").textContent = sum(metrics, "conclave_requests_running");
    $("queued").textContent = sum(metrics, "conclave_requests_queued");
    if (prev) {
      const dt = (now - prev.t) / 1000, dtok = sum(metrics, "conclave_generation_tokens_total") - sum(prev.metrics, "conclave_generation_tokens_total");
      $("tokps").textContent = dt > 0 ? (dtok / dt).toFixed(1) : "—";
    }
    const base = old !== history[history.length - 1] ? old.metrics : null;
    $("ttft").textContent = `${ms(quantile(0.5, metrics, base, "conclave_time_to_first_token_seconds"))} / ${ms(quantile(0.99, metrics, base, "conclave_time_to_first_token_seconds"))}`;
    $("itl").textContent = `${ms(quantile(0.5, metrics, base, "conclave_inter_token_latency_seconds"))} / ${ms(quantile(0.99, metrics, base, "conclave_inter_token_latency_seconds"))}`;
    $("prefix").textContent = `${sum(metrics, "conclave_prefix_cache_hits_total")} / ${sum(metrics, "conclave_prefix_cache_reused_tokens_total")}`;
    drawWorkers(cluster);
    drawPlacement(cluster, experts);
    drawHeat(experts);
    $("updated").textContent = "updated " + new Date(now).toLocaleTimeString();
  } catch (e) {
    $("updated").textContent = "the server does not answer (" + e + ")";
  }
  setTimeout(tick, 1000);
}
tick();
</script>
</body>
</html>
"""#
}
