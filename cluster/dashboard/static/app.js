// raftq dashboard: plain JS, no dependencies, no build step (docs/dashboard.md).
// Every datum comes from /dashboard/api/* on the node that served this page;
// everything shown is built with textContent, never parsed as HTML (job args
// and errors are user data).
"use strict";

const TOKEN_KEY = "raftq.dashboard.token";
const POLL_MS = 2000;
const HISTORY_POINTS = 60;  // two minutes of polls in the charts
const SVG_NS = "http://www.w3.org/2000/svg";
const JOB_STATES = ["pending", "scheduled", "queued", "running", "succeeded", "failed", "cancelled"];
const FINISHED = ["succeeded", "failed", "cancelled"];

const history = [];   // one sample per overview poll, for the charts and rates
let pollTimer = null;
let busy = false;
let again = false;  // a refresh was asked for while one ran
let pollFailed = false;  // the notice shows a failed poll (cleared by the next good one, unlike an action's)

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// ---- plumbing ----------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path, body) {
  const options = {headers: {"X-Raftq-Token": token()}, cache: "no-store", credentials: "omit"};
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const resp = await fetch("api/" + path, options);
  let data;
  try {
    data = await resp.json();
  } catch (e) {
    data = {error: "INTERNAL", message: `HTTP ${resp.status}`};
  }
  if (resp.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken(data.message);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function notice(message, isError) {
  pollFailed = false;
  const box = document.getElementById("notice");
  box.replaceChildren();
  box.hidden = !message;
  box.className = isError ? "error" : "";
  if (!message) return;
  if (message instanceof ApiError && message.body.leader_dashboard) {
    const url = message.body.leader_dashboard + location.hash;
    box.append("Actions are served by the leader at ", el("a", {href: url}, message.body.leader_dashboard));
  } else {
    box.append(message instanceof Error ? message.message : message);
  }
}

function fmtTime(epoch) {
  if (epoch === null || epoch === undefined) return "–";
  return new Date(epoch * 1000).toLocaleString();
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function fmtValue(value) {
  if (value === null || value === undefined) return "–";
  if (Array.isArray(value)) {
    const shown = value.slice(0, 8).map(fmtValue).join(", ");
    return value.length > 8 ? `${shown} … (${value.length} in all)` : shown;
  }
  if (typeof value === "object") {
    return Object.entries(value).map(([k, v]) => `${k}=${fmtValue(v)}`).join(" ");
  }
  return String(value);
}

function stateBadge(state) { return el("span", {class: `state state-${state}`}, state); }

function jobLink(id) { return el("a", {href: `#/job/${encodeURIComponent(id)}`}, id); }

function table(headers, rows, attrs) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, headers.map(h => el("th", {class: h.num ? "num" : null}, h.label || h)))),
    el("tbody", {}, rows));
}

function show(...sections) {
  document.getElementById("view").replaceChildren(...sections);
}

// ---- routing and polling -----------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  if (path.startsWith("/job/")) return {view: jobView, arg: decodeURIComponent(path.slice(5)), params};
  const views = {"/": overviewView, "/jobs": jobsView, "/dead": deadView, "/schedules": schedulesView};
  return {view: views[path] || overviewView, arg: null, params};
}

async function refresh() {
  if (!token()) return;
  if (busy) {
    again = true;
    return;
  }
  busy = true;
  const {view, arg, params} = route();
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === "#" + (location.hash.replace(/^#/, "").split("?")[0] || "/"));
  }
  try {
    await view(arg, params);
    document.getElementById("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (pollFailed) notice(null);
    pollFailed = false;
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) {
      notice(e, true);
      pollFailed = true;
    }
  } finally {
    busy = false;
  }
  if (again) {
    again = false;
    refresh();
  }
}

function startPolling() {
  clearInterval(pollTimer);
  pollTimer = setInterval(refresh, POLL_MS);
  refresh();
}

function askToken(reason) {
  clearInterval(pollTimer);
  document.getElementById("view").replaceChildren();
  document.getElementById("login").hidden = false;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("login-reason").textContent = reason || "";
  document.getElementById("token").focus();
}

// ---- overview: cluster, charts, queues, workers ------------------------------

async function overviewView() {
  const data = await api("overview");
  record(data);
  document.getElementById("served-by").textContent =
    `node ${data.node_id} (${data.raft.role}), term ${data.raft.term}, applied ${data.raft.last_applied}`;
  show(clusterSection(data), chartsSection(), queuesSection(data), workersSection(data));
}

function record(data) {
  const sample = {t: data.now, finished: 0, queued: 0, running: 0, byQueue: {},
                  p50: data.commit_latency_s ? data.commit_latency_s.p50 * 1000 : null,
                  p99: data.commit_latency_s ? data.commit_latency_s.p99 * 1000 : null};
  for (const q of data.queues) {
    const done = FINISHED.reduce((n, s) => n + (q.jobs[s] || 0), 0);
    sample.byQueue[q.queue] = done;
    sample.finished += done;
    sample.queued += q.jobs.queued || 0;
    sample.running += q.jobs.running || 0;
  }
  history.push(sample);
  if (history.length > HISTORY_POINTS) history.shift();
}

// Jobs finished per second between two samples (finished jobs purged by
// retention make a count drop: never a negative rate).
function rate(prev, cur, pick) {
  if (!prev || cur.t <= prev.t) return null;
  return Math.max(0, (pick(cur) - pick(prev)) / (cur.t - prev.t));
}

function clusterSection(data) {
  const c = data.cluster;
  const info = {};
  for (const n of c.nodes) {
    if (n.id === data.node_id) {
      info[n.id] = {role: data.raft.role, term: data.raft.term, commit_index: data.raft.commit_index,
                    last_applied: data.raft.last_applied};
    } else {
      info[n.id] = data.peers.nodes[String(n.id)] || null;
    }
  }
  const leader = c.nodes.find(n => info[n.id] && info[n.id].role === "leader");
  const leaderCommit = leader ? info[leader.id].commit_index : null;
  const rows = c.nodes.map(n => {
    const h = info[n.id];
    const role = h ? h.role : (data.peers.polled ? "unreachable" : n.role);
    const lag = h && leaderCommit !== null && h.last_applied !== null ? Math.max(0, leaderCommit - h.last_applied) : null;
    return el("tr", {"data-node": n.id},
      el("td", {}, n.id === data.node_id ? `${n.id} (this node)` : n.id), el("td", {}, stateBadge(role)),
      el("td", {}, n.client), el("td", {}, n.http ? el("a", {href: `${location.protocol}//${n.http}/dashboard/`}, n.http) : "–"),
      el("td", {class: "num"}, h ? h.term : "–"), el("td", {class: "num"}, h ? h.commit_index : "–"),
      el("td", {class: "num"}, h ? h.last_applied : "–"), el("td", {class: "num"}, lag === null ? "–" : lag));
  });
  const extra = Object.entries(data.raft).filter(([k]) => !["role", "term", "commit_index", "last_applied", "leader"].includes(k));
  return el("section", {id: "cluster"}, el("h2", {}, "Cluster"),
    el("p", {}, `Leader: ${c.leader || "none (election in progress)"} · term ${c.term}`),
    table(["node", "role", "client", "http", {label: "term", num: true}, {label: "commit", num: true},
           {label: "applied", num: true}, {label: "lag", num: true}], rows),
    data.peers.polled ? null : el("p", {class: "muted"}, data.peers.reason),
    extra.length ? el("p", {class: "muted"}, `this node: ${extra.map(([k, v]) => `${k} ${fmtValue(v)}`).join(" · ")}`) : null);
}

function chartsSection() {
  const rates = history.map((s, i) => rate(history[i - 1], s, x => x.finished));
  return el("section", {id: "charts"}, el("h2", {}, "Live"),
    el("div", {class: "charts"},
      chart("Throughput (jobs finished/s)", [{name: "finished/s", values: rates}]),
      chart("Depth", [{name: "queued", values: history.map(s => s.queued)},
                      {name: "running", values: history.map(s => s.running)}]),
      chart("Commit latency on this node (ms)", [{name: "p50", values: history.map(s => s.p50)},
                                                 {name: "p99", values: history.map(s => s.p99)}])));
}

// A small hand-drawn line chart: series of numbers (null: no sample) over the
// last HISTORY_POINTS polls, scaled to the largest value shown.
function chart(title, series) {
  const w = 300, h = 110, pad = 4;
  const all = series.flatMap(s => s.values).filter(v => v !== null && v !== undefined);
  const max = Math.max(1e-9, ...all);
  const svg = svgNode("svg", {viewBox: `0 0 ${w} ${h}`});
  svg.append(svgNode("line", {x1: 0, y1: h - 1, x2: w, y2: h - 1, class: "axis"}));
  series.forEach((s, i) => {
    const points = [];
    s.values.forEach((v, j) => {
      if (v === null || v === undefined) return;
      // The newest sample is at the right edge; older ones scroll left.
      const x = pad + ((w - 2 * pad) * (HISTORY_POINTS - s.values.length + j)) / (HISTORY_POINTS - 1);
      points.push([x, h - pad - (h - 2 * pad) * (v / max)]);
    });
    svg.append(svgNode("polyline", {points: points.map(p => p.map(n => n.toFixed(1)).join(",")).join(" "), class: `s${i}`}));
    if (points.length) {
      const [x, y] = points[points.length - 1];
      svg.append(svgNode("circle", {cx: x.toFixed(1), cy: y.toFixed(1), r: 2.5, class: `s${i} dot`}));
    }
  });
  const last = s => { const v = s.values.filter(x => x !== null && x !== undefined); return v.length ? v[v.length - 1] : null; };
  return el("div", {class: "chart"}, el("h3", {}, title), svg,
    el("div", {class: "legend"}, series.map((s, i) => {
      const v = last(s);
      return el("span", {class: `k${i}`}, `${s.name} ${v === null ? "–" : +v.toPrecision(3)}`);
    }), el("span", {class: "muted"}, all.length ? `scale 0–${+max.toPrecision(3)}` : "no samples yet")));
}

function svgNode(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function queuesSection(data) {
  const prev = history.length > 1 ? history[history.length - 2] : null;
  const cur = history[history.length - 1];
  const known = new Set(["queue", "jobs", "max_running", "rate_per_s", "oldest_ready_age_s", "paused"]);
  const pausable = data.queues.some(q => q.paused !== undefined);  // shown once the queues op reports it
  const rows = data.queues.map(q => {
    const r = rate(prev, cur, s => s.byQueue[q.queue] || 0);
    const extra = Object.entries(q).filter(([k]) => !known.has(k));
    return el("tr", {"data-queue": q.queue},
      el("td", {}, el("a", {href: `#/jobs?queue=${encodeURIComponent(q.queue)}`}, q.queue)),
      JOB_STATES.map(s => el("td", {class: "num"}, q.jobs[s] || 0)),
      el("td", {class: "num"}, fmtAge(q.oldest_ready_age_s)),
      el("td", {class: "num"}, r === null ? "–" : r.toFixed(2)),
      el("td", {class: "num"}, q.max_running ?? "–"), el("td", {class: "num"}, q.rate_per_s ?? "–"),
      pausable ? el("td", {}, q.paused ? stateBadge("paused") : "no") : null,
      el("td", {class: "muted"}, extra.map(([k, v]) => `${k} ${fmtValue(v)}`).join(" · ")));
  });
  return el("section", {id: "queues"}, el("h2", {}, "Queues"),
    rows.length ? table(["queue", ...JOB_STATES.map(s => ({label: s, num: true})), {label: "oldest ready", num: true},
                         {label: "finished/s", num: true}, {label: "max running", num: true},
                         {label: "rate limit/s", num: true}, ...(pausable ? ["paused"] : []), ""], rows)
                : el("p", {class: "muted"}, "No queue has jobs or limits yet."));
}

function workersSection(data) {
  // Rendered generically: fields this page does not know yet (job types,
  // free and total capacity...) show as they come.
  const known = new Set(["name", "queues", "capacity", "running", "lease_ms", "last_seen_at"]);
  const rows = data.workers.map(w => el("tr", {"data-worker": w.name},
    el("td", {}, w.name), el("td", {}, fmtValue(w.queues)), el("td", {}, fmtValue(w.capacity)),
    el("td", {}, el("span", {class: "num"}, (w.running || []).length), " ",
      (w.running || []).slice(0, 10).map(id => [jobLink(id), " "])),
    el("td", {}, fmtAge(data.now - w.last_seen_at), " ago"),
    el("td", {class: "muted"}, Object.entries(w).filter(([k]) => !known.has(k)).map(([k, v]) => el("div", {}, `${k}: ${fmtValue(v)}`)))));
  return el("section", {id: "workers"}, el("h2", {}, "Workers"),
    rows.length ? table(["worker", "queues", "capacity", "running", "last seen", ""], rows)
                : el("p", {class: "muted"}, "No worker has leased from this cluster recently."));
}

// ---- job search and the job page ---------------------------------------------

async function jobsView(_, params) {
  const query = new URLSearchParams();
  for (const key of ["state", "queue", "schedule"]) if (params.get(key)) query.set(key, params.get(key));
  const page = await api("jobs?" + query);
  const rows = page.jobs.map(jobRow);
  const results = el("div", {id: "job-results"},
    rows.length ? table(["id", "type", "queue", "state", {label: "attempts", num: true}, "created", "args"], rows)
                : el("p", {class: "muted"}, "No job matches."),
    page.cursor !== null && page.cursor !== undefined
      ? el("p", {class: "muted"}, `First ${page.jobs.length} shown; narrow the search to see others.`) : null);
  // A poll replaces the results only, not the form someone may be typing in.
  const section = document.getElementById("jobs");
  if (section && section.dataset.search === query.toString()) {
    document.getElementById("job-results").replaceWith(results);
    return;
  }
  show(el("section", {id: "jobs", "data-search": query.toString()}, el("h2", {}, "Jobs"), searchForm(params), results));
}

function jobRow(j) {
  return el("tr", {"data-job": j.id}, el("td", {}, jobLink(j.id)), el("td", {}, j.type), el("td", {}, j.queue),
    el("td", {}, stateBadge(j.state)), el("td", {class: "num"}, `${j.attempts}/${j.max_attempts}`),
    el("td", {}, fmtTime(j.created_at)), el("td", {class: "muted"}, j.args === null ? "–" : j.args));
}

function searchForm(params) {
  const state = el("select", {name: "state"}, el("option", {value: ""}, "any state"),
    JOB_STATES.map(s => el("option", {value: s, selected: params.get("state") === s}, s)));
  const queue = el("input", {name: "queue", placeholder: "queue", value: params.get("queue") || ""});
  const id = el("input", {name: "id", placeholder: "job id"});
  return el("form", {class: "search", onsubmit: e => {
    e.preventDefault();
    if (id.value.trim()) { location.hash = `#/job/${encodeURIComponent(id.value.trim())}`; return; }
    const q = new URLSearchParams();
    if (state.value) q.set("state", state.value);
    if (queue.value.trim()) q.set("queue", queue.value.trim());
    location.hash = "#/jobs" + (q.toString() ? "?" + q : "");
  }}, id, state, queue, el("button", {type: "submit"}, "Search"));
}

async function jobView(jobId) {
  let job;
  try {
    job = await api("job?id=" + encodeURIComponent(jobId));
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      show(el("section", {id: "job"}, el("h2", {}, `Job ${jobId}`), el("p", {}, e.message)));
      return;
    }
    throw e;
  }
  const fields = [
    ["id", job.id], ["type", job.type], ["queue", job.queue], ["state", stateBadge(job.state)],
    ["attempts", `${job.attempts} of ${job.max_attempts}`], ["priority", job.priority], ["worker", job.worker ?? "–"],
    ["progress", progressBar(job.progress)], ["lease expiries", `${job.lease_expiries} of ${job.max_lease_expiries}`],
    ["timeout", job.timeout_s ? `${job.timeout_s} s` : "–"], ["schedule", job.schedule ?? "–"],
    ["unique key", job.unique_key ?? "–"], ["resources", fmtValue(job.resources)],
    ["depends on", job.depends_on ? job.depends_on.map(id => [jobLink(id), " "]) : "–"],
  ];
  const actions = job.state === "failed"
    ? el("p", {}, el("button", {type: "button", id: "requeue-job", onclick: () => requeue([job.id])}, "Requeue")) : null;
  show(el("section", {id: "job", "data-state": job.state}, el("h2", {}, `Job ${job.id}`),
    el("dl", {class: "fields"}, fields.map(([k, v]) => [el("dt", {}, k), el("dd", {"data-field": k}, v)])), actions),
    el("section", {}, el("h2", {}, "Timeline"), timeline(job)),
    el("section", {}, el("h2", {}, "Args"), el("pre", {id: "job-args"}, JSON.stringify(job.args, null, 2))),
    el("section", {}, el("h2", {}, "Result"), el("pre", {id: "job-result"}, job.result === null ? "–" : JSON.stringify(job.result, null, 2))),
    el("section", {}, el("h2", {}, "Error"), el("pre", {id: "job-error"}, job.error ?? "–")));
}

function progressBar(progress) {
  if (!progress) return "–";
  const [fraction, message] = progress;
  const pct = Math.max(0, Math.min(1, Number(fraction) || 0)) * 100;
  const bar = el("span");
  bar.style.width = `${pct}%`;  // through the CSSOM: the page's CSP refuses style attributes
  return [el("span", {class: "progress"}, bar), ` ${pct.toFixed(0)}% ${message || ""}`];
}

function timeline(job) {
  const steps = [["created", job.created_at], ["due to run", job.run_at], ["started (last attempt)", job.started_at],
                 ["finished", job.finished_at]].filter(([, t]) => t !== null && t !== undefined);
  const rows = steps.map(([what, t], i) => el("tr", {}, el("td", {}, what), el("td", {}, fmtTime(t)),
    el("td", {class: "muted"}, i ? `+${fmtAge(t - steps[i - 1][1])}` : "")));
  return table(["event", "time", "after the previous"], rows);
}

// ---- dead letters and schedules ---------------------------------------------

async function deadView(_, params) {
  const query = new URLSearchParams({state: "failed"});
  if (params.get("queue")) query.set("queue", params.get("queue"));
  const page = await api("jobs?" + query);
  const rows = page.jobs.map(j => el("tr", {"data-job": j.id},
    el("td", {}, jobLink(j.id)), el("td", {}, j.type), el("td", {}, j.queue),
    el("td", {class: "num"}, `${j.attempts}/${j.max_attempts}`), el("td", {}, fmtTime(j.finished_at)),
    el("td", {class: "muted"}, j.error ?? "–"),
    el("td", {}, el("button", {type: "button", class: "requeue", onclick: () => requeue([j.id])}, "Requeue"))));
  show(el("section", {id: "dead"}, el("h2", {}, "Dead letters (failed jobs)"),
    rows.length ? [table(["id", "type", "queue", {label: "attempts", num: true}, "failed", "error", ""], rows),
                   el("p", {}, el("button", {type: "button", id: "requeue-all",
                                              onclick: () => requeue(page.jobs.map(j => j.id))}, `Requeue all ${rows.length} shown`))]
                : el("p", {class: "muted"}, "No failed job.")));
}

async function requeue(ids) {
  try {
    const r = await api("requeue", {ids});
    notice(`requeued ${r.requeued.length}` + (r.skipped.length ? `, skipped ${r.skipped.length} (no longer failed)` : ""));
  } catch (e) {
    notice(e, true);
  }
  refresh();
}

async function schedulesView() {
  const data = await api("schedules");
  const rows = data.schedules.map(s => el("tr", {"data-schedule": s.name},
    el("td", {}, el("a", {href: `#/jobs?schedule=${encodeURIComponent(s.name)}`}, s.name)),
    el("td", {}, s.cron ? `cron ${s.cron}` : `every ${fmtAge(s.every_ms / 1000)}`), el("td", {}, s.tz ?? "–"),
    el("td", {}, s.job ? `${s.job.type} → ${s.job.queue || "default"}` : "–"),
    el("td", {}, s.paused ? stateBadge("paused") : "active"),
    el("td", {}, s.paused ? "–" : fmtTime(s.next_fire_ms / 1000)),
    el("td", {}, s.last_fire_ms ? fmtTime(s.last_fire_ms / 1000) : "–"),
    el("td", {class: "num"}, s.fired ?? 0), el("td", {class: "num"}, s.missed ?? 0),
    el("td", {}, el("button", {type: "button", class: "toggle", onclick: () => scheduleAction(s.name, s.paused ? "resume" : "pause")},
      s.paused ? "Resume" : "Pause"))));
  show(el("section", {id: "schedules"}, el("h2", {}, "Schedules"),
    rows.length ? table(["name", "when", "zone", "job", "state", "next fire", "last fire", {label: "fired", num: true},
                         {label: "missed", num: true}, ""], rows)
                : el("p", {class: "muted"}, "No schedule.")));
}

async function scheduleAction(name, action) {
  try {
    await api("schedule", {name, action});
    notice(`schedule ${name}: ${action === "pause" ? "paused" : "resumed"}`);
  } catch (e) {
    notice(e, true);
  }
  refresh();
}

// ---- start -------------------------------------------------------------------

document.getElementById("login").addEventListener("submit", e => {
  e.preventDefault();
  const value = document.getElementById("token").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  document.getElementById("token").value = "";
  document.getElementById("login").hidden = true;
  document.getElementById("sign-out").hidden = false;
  notice(null);
  startPolling();
});
document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  askToken("");
});
window.addEventListener("hashchange", () => { notice(null); refresh(); });
if (token()) {
  document.getElementById("sign-out").hidden = false;
  startPolling();
} else {
  askToken("");
}
