// The live view (docs/ui.md): lists the server's live sessions (GET /v1/sessions, polled every
// second), starts and stops demo sessions (POST / DELETE /v1/demo) and watches one session over
// WS /ws/watch/{id} (docs/protocol.md, section 11). Messages only update `watched`; drawing happens
// once per animation frame, so a fast stream costs the page one redraw per screen refresh at most.

import { COLOURS, drawFrame, drawHistory, LineChart } from "./charts.js";

const $ = (id) => document.getElementById(id);
const HISTORY = 200; // timesteps kept in the history and the charts (10 s at 50 ms)
let key = sessionStorage.getItem("asasnn-key") || "";
let watched = null;

// ---- REST -----------------------------------------------------------------------------------------
function api(path, init = {}) {
  const headers = key ? { "X-API-Key": key } : {};
  return fetch(new URL(path, location.href), { ...init, headers });
}

async function problem(r) {
  try {
    const d = (await r.json()).detail;
    return `${d.code}: ${d.message}`;
  } catch {
    return `HTTP ${r.status}`;
  }
}

function setStatus(text) {
  $("status").textContent = text;
  delete $("status").dataset.key;
}

async function refresh() {
  let r;
  try {
    r = await api("../v1/sessions");
  } catch {
    setStatus("the server does not answer");
    return;
  }
  if (r.status === 401) {
    $("key-form").hidden = false;
    setStatus("this server needs an API key");
    $("status").dataset.key = "asked";
    return;
  }
  if (!r.ok) {
    setStatus(await problem(r));
    return;
  }
  const list = await r.json();
  if ($("status").dataset.key) setStatus(""); // the key worked
  renderSessions(list);
  const full = list.demos_running >= list.demos_max;
  $("demo-start").disabled = full;
  $("demo-start").title = full ? `${list.demos_max} demos run already` : "";
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderSessions(list) {
  const body = $("session-table").tBodies[0];
  body.replaceChildren();
  for (const s of list.sessions) {
    const row = body.insertRow();
    row.dataset.session = s.id;
    if (watched && watched.id === s.id) row.className = "current";
    const link = document.createElement("a");
    link.href = `#${s.id}`;
    link.textContent = s.id.slice(0, 8);
    row.insertCell().append(link);
    cell(row, s.demo ? `${s.model} (demo)` : s.model);
    cell(row, duration(s.age_s), "num");
    cell(row, Math.round(s.events_per_s).toLocaleString("en"), "num");
    cell(row, s.label === null ? "-" : s.truth ? `${s.label} (true: ${s.truth})` : s.label);
    const actions = row.insertCell();
    if (s.demo) {
      const stop = document.createElement("button");
      stop.type = "button";
      stop.textContent = "stop";
      stop.onclick = () => stopDemo(s.id);
      actions.append(stop);
    }
  }
  $("no-sessions").hidden = list.sessions.length > 0;
}

async function startDemo() {
  $("demo-start").disabled = true;
  const r = await api("../v1/demo", { method: "POST" });
  if (r.ok) {
    location.hash = (await r.json()).id;
    setStatus("demo started: the synthetic camera streams for a few minutes");
  } else {
    setStatus(await problem(r));
  }
  refresh();
}

async function stopDemo(id) {
  const r = await api(`../v1/demo/${encodeURIComponent(id)}`, { method: "DELETE" });
  setStatus(r.ok ? "demo stopping" : await problem(r));
  refresh();
}

// ---- watching one session -------------------------------------------------------------------------
function closeWatch() {
  if (!watched) return;
  const ws = watched.ws;
  watched = null;
  ws.onmessage = ws.onclose = null;
  if (ws.readyState === WebSocket.CONNECTING) ws.onopen = () => ws.close(); // no console error
  else ws.close();
}

function openView(id) {
  closeWatch();
  $("view").hidden = !id;
  document.body.dataset.watching = id || "";
  if (!id) return;
  const url = new URL(`../ws/watch/${encodeURIComponent(id)}`, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (key) url.searchParams.set("token", key);
  const w = {
    id,
    ws: new WebSocket(url),
    ready: null,
    last: null,
    frame: null,
    frames: 0,
    history: [],
    dirty: false,
    rates: new LineChart($("rates"), { length: HISTORY, thick: ["NASFR"] }),
    power: new LineChart($("power"), { length: HISTORY, format: (v) => si(v, "W") }),
    lat: new LineChart($("lat"), { length: HISTORY, format: (v) => v.toFixed(1) }),
  };
  watched = w;
  for (const field of ["label", "step", "watts", "latency", "nasfr"]) $(field).textContent = "-";
  $("topk").replaceChildren();
  $("frame-info").textContent = "no frame yet";
  $("frame").getContext("2d").clearRect(0, 0, $("frame").width, $("frame").height);
  $("view-id").textContent = id.slice(0, 8);
  $("view-model").textContent = "";
  setViewState("connecting");
  w.ws.onmessage = (e) => onMessage(w, JSON.parse(e.data));
  w.ws.onclose = (e) => {
    if (!w.refused) setViewState(w.ended ? `ended (${w.ended})` : `closed (${e.code})`);
  };
}

function setViewState(text) {
  $("view-state").textContent = text;
}

function onMessage(w, m) {
  if (m.type === "watching") {
    w.ready = m;
    const b = m.binning;
    $("view-model").textContent = `${m.model.name} ${m.model.version}, ${b.sensor.width}x${b.sensor.height}, ` +
      `${b.dt_us / 1000} ms steps, ds ${b.ds}${m.demo ? ", demo" : ""}`;
    setViewState("live");
    if (m.last) onPrediction(w, m.last);
  } else if (m.type === "prediction") {
    onPrediction(w, m);
  } else if (m.type === "frame") {
    const seq = ++w.frames;
    inflate(m.data).then((bytes) => {
      if (w.frame && w.frame.seq > seq) return; // decoded out of order
      w.frame = { seq, t_start_us: m.t_start_us, events: m.events, bytes, fresh: true };
      w.dirty = true;
    });
  } else if (m.type === "end") {
    w.ended = m.reason;
    setViewState(`ended (${m.reason})`);
  } else if (m.type === "error") {
    w.refused = true; // keep the server's reason on screen
    setViewState(`${m.code}: ${m.message}`);
  }
}

function onPrediction(w, p) {
  if (w.last && p.step <= w.last.step) {
    if (p.step === w.last.step) return; // the `last` of `watching`, seen again
    w.history = []; // the session was reset: steps count from 0 again
    for (const c of [w.rates, w.power, w.lat]) c.clear();
  }
  w.last = p;
  w.history.push({ k: p.label_index, p: p.top_k[0] ? p.top_k[0].p : 1 });
  if (w.history.length > HISTORY) w.history.shift();
  w.rates.push({ ...(p.layer_rates || {}), NASFR: p.nasfr });
  w.power.push({ W: p.energy_j / stepSeconds(w) });
  w.lat.push({ ms: p.latency_ms.total });
  w.dirty = true;
}

// base64 of zlib bytes (watch frames) -> Uint8Array
async function inflate(b64) {
  const packed = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const stream = new Blob([packed]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function stepSeconds(w) {
  return (w.ready ? w.ready.binning.dt_us : 50000) / 1e6;
}

function draw() {
  requestAnimationFrame(draw);
  const w = watched;
  if (!w || !w.dirty || !w.ready) return;
  w.dirty = false;
  const p = w.last;
  if (p) {
    $("label").textContent = p.label;
    $("step").textContent = p.step;
    $("watts").textContent = si(p.energy_j / stepSeconds(w), "W");
    $("latency").textContent = `${p.latency_ms.total.toFixed(2)} ms`;
    $("nasfr").textContent = p.nasfr.toFixed(4);
    $("dropped").textContent = p.dropped || 0;
    renderTopK(p.top_k);
    drawHistory($("history"), w.history, w.ready.model.classes, HISTORY);
    for (const c of [w.rates, w.power, w.lat]) c.draw();
  }
  if (w.frame && w.frame.fresh) {
    const f = w.frame;
    f.fresh = false;
    drawFrame($("frame"), f.bytes, w.ready.frame_shape, w.ready.binning.sensor, w.ready.frame_block);
    const t = (f.t_start_us / 1e6).toFixed(2);
    $("frame-info").textContent = `${f.events.toLocaleString("en")} events at ${t} s`;
  }
}

function renderTopK(topK) {
  const rows = topK.map((t, i) => {
    const row = document.createElement("div");
    row.className = "topk";
    const name = document.createElement("span");
    name.textContent = t.label;
    const bar = document.createElement("span");
    bar.className = "barbox";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * t.p).toFixed(1)}%`;
    fill.style.background = COLOURS[(watched.ready.model.classes.indexOf(t.label) + COLOURS.length) % COLOURS.length];
    bar.append(fill);
    const pct = document.createElement("span");
    pct.textContent = `${(100 * t.p).toFixed(0)} %`;
    row.append(name, bar, pct);
    if (i === 0) row.classList.add("first");
    return row;
  });
  $("topk").replaceChildren(...rows);
}

// ---- formatting -----------------------------------------------------------------------------------
function si(v, unit) {
  if (!v) return `0 ${unit}`;
  const prefixes = [[1e-12, "p"], [1e-9, "n"], [1e-6, "µ"], [1e-3, "m"], [1, ""], [1e3, "k"]];
  let [scale, prefix] = prefixes[0];
  for (const [s, p] of prefixes) if (Math.abs(v) >= s) [scale, prefix] = [s, p];
  return `${(v / scale).toPrecision(3)} ${prefix}${unit}`;
}

function duration(s) {
  return s < 60 ? `${s.toFixed(0)} s` : `${Math.floor(s / 60)} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
}

// ---- start ----------------------------------------------------------------------------------------
$("demo-start").onclick = startDemo;
$("key-form").onsubmit = (e) => {
  e.preventDefault();
  key = $("key").value.trim();
  sessionStorage.setItem("asasnn-key", key);
  $("key-form").hidden = true;
  refresh();
  openView(location.hash.slice(1));
};
for (const el of document.querySelectorAll(".host")) el.textContent = location.host;
window.addEventListener("hashchange", () => openView(location.hash.slice(1)));
openView(location.hash.slice(1));
refresh();
setInterval(refresh, 1000);
requestAnimationFrame(draw);
