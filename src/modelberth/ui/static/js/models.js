// Models tab: every model, live; start / stop / restart, stop all.

import { call } from "./api.js";
import * as store from "./store.js";
import { ago, bytes, clear, duration, h, statePill } from "./util.js";

let tbody = null;
let summary = null;
let message = null;
let ticker = null;
const rows = new Map();
const expanded = new Set();

const ADMIN_COLUMNS = ["Model", "State", "Runtime", "RAM", "VRAM", "In flight", "Queued",
  "Last used", "Idle stop", "Actions"];
const TITLES = { Runtime: "runtime, port, node, runtime id (pid, container or service) and GPUs",
  RAM: "measured / estimated", VRAM: "measured / estimated",
  "Idle stop": "time left before the idle timer stops it" };
const NUMERIC = new Set(["In flight", "Queued"]);
const INFERENCE_COLUMNS = ["Model", "State", "In flight"];

export function mount(panel) {
  summary = h("div", { class: "summary" });
  message = h("p", { class: "inline-message", role: "status", "aria-live": "polite" });
  const tools = h("div", { class: "toolbar" },
    h("h2", {}, "Models"), summary, h("span", { class: "spacer" }),
    h("button", { type: "button", onclick: () => store.loadModels().catch(showError) }, "Refresh"),
    store.session.admin ? stopAllButton() : null);
  const columns = store.session.admin ? ADMIN_COLUMNS : INFERENCE_COLUMNS;
  tbody = h("tbody");
  const table = h("table", { class: "grid models-table" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: NUMERIC.has(c) ? "num" : "", title: TITLES[c] }, c)))), tbody);
  panel.append(tools, message, h("div", { class: "table-box" }, table));
  if (!store.session.admin) {
    panel.append(h("p", { class: "muted" },
      "Signed in with an inference key: management actions need an admin key."));
  }
  store.onModels(render);
  render(null);
}

export function show() {
  clearInterval(ticker);
  ticker = setInterval(tick, 1000);
}

export function hide() { clearInterval(ticker); }

function showError(err) {
  message.textContent = err.message;
  message.dataset.kind = "error";
}

function stopAllButton() {
  let armed = null;
  const button = h("button", { type: "button", class: "danger", id: "stop-all" }, "Stop all");
  button.addEventListener("click", async () => {
    if (!armed) {
      button.textContent = "Click again to stop all";
      armed = setTimeout(() => { armed = null; button.textContent = "Stop all"; }, 4000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    button.textContent = "Stop all";
    try {
      const data = await call("/api/stop-all?wait=false", { method: "POST" });
      for (const status of data.models || []) store.put(status);
      message.textContent = "Stopping every model.";
      message.dataset.kind = "ok";
    } catch (err) {
      if (err.status !== 404) { showError(err); return; }
      message.textContent = "This server has no /api/stop-all (404); stopping each model instead.";
      message.dataset.kind = "warn";
      for (const name of store.models.keys()) act(name, "stop");
    }
  });
  return button;
}

async function act(name, action) {
  try {
    const status = await call(`/api/models/${encodeURIComponent(name)}/${action}?wait=false`,
      { method: "POST" });
    store.put(status);
    message.textContent = "";
  } catch (err) {
    showError(new Error(`${action} ${name}: ${err.message}`));
  }
}

function render(name) {
  if (!tbody) return;
  if (name && rows.has(name) && store.models.has(name)) {
    updateRow(name);
  } else {
    clear(tbody);
    rows.clear();
    if (!store.models.size) {
      tbody.append(h("tr", {}, h("td", { colspan: 12, class: "empty" }, "No models configured.")));
    }
    for (const model of store.models.keys()) {
      const row = { main: h("tr", { dataset: { model }, tabindex: "0" }), error: h("tr", { class: "error-row" }) };
      rows.set(model, row);
      tbody.append(row.main, row.error);
      updateRow(model);
    }
  }
  const counts = {};
  for (const status of store.models.values()) counts[status.state] = (counts[status.state] || 0) + 1;
  clear(summary).append(
    h("span", { class: "count" }, `${store.models.size} models`),
    ...Object.entries(counts).map(([state, n]) => h("span", { class: `count count-${state}` }, `${n} ${state}`)));
}

function badges(status) {
  return [
    status.pinned ? h("span", { class: "badge", title: "never evicted" }, "pinned") : null,
    status.preload ? h("span", { class: "badge", title: "started at boot" }, "preload") : null,
  ];
}

function usage(used, estimate) {
  if (used === null || used === undefined) {
    return estimate ? h("span", { class: "muted", title: "estimate" }, `est. ${bytes(estimate)}`) : "–";
  }
  if (!estimate) return bytes(used);
  const share = Math.min(1, used / estimate);
  const bar = h("span", { class: "mini-bar", title: `${bytes(used)} of ${bytes(estimate)} estimated` },
    h("span", { class: used > estimate ? "over" : "" }));
  bar.firstChild.style.width = `${Math.round(share * 100)}%`;
  return h("span", { class: "usage" }, `${bytes(used)} / ${bytes(estimate)}`, bar);
}

function gpus(value) {
  if (value === null || value === undefined) return "–";
  if (value === "all") return "all";
  return Array.isArray(value) ? value.join(", ") || "–" : String(value);
}

/** Column names on the cells, shown as labels when narrow screens lay rows out as cards. */
function labelCells(tr, columns) {
  [...tr.children].forEach((td, i) => { td.dataset.label = columns[i] || ""; });
}

function runtimeDetail(status) {
  const parts = [];
  if (status.base_url) parts.push(status.base_url);  // a remote endpoint
  if (status.node) parts.push(`on ${status.node.name} (${status.node.address})`);  // swarm, docker.hosts
  if (status.runtime_id) parts.push(`id ${String(status.runtime_id).slice(0, 12)}`);
  if (status.gpus !== null && status.gpus !== undefined) parts.push(`GPU ${gpus(status.gpus)}`);
  return parts.length ? h("div", { class: "muted mono runtime-detail" }, parts.join(" · ")) : null;
}

/** A start's progress under its state: "45% · eta 4s · loading tensors" and a bar. */
function progressView(status) {
  const progress = status.progress;
  if (!progress || (status.state !== "starting" && status.state !== "waking")) return null;
  const known = progress.percent !== null && progress.percent !== undefined;
  const parts = [known ? `${progress.percent}%` : duration(progress.elapsed_seconds)];
  if (progress.eta_seconds !== null && progress.eta_seconds !== undefined && progress.percent !== 100) {
    parts.push(`eta ${duration(Math.ceil(progress.eta_seconds))}`);
  }
  if (progress.phase && progress.phase !== "starting") parts.push(progress.phase);
  const bar = known ? h("span", { class: "mini-bar", title: `${progress.percent}%` }, h("span")) : null;
  if (bar) bar.firstChild.style.width = `${Math.min(100, progress.percent)}%`;
  return h("div", { class: "start-progress muted", title: known ? "estimated from the upstream's output and earlier starts" : "no estimate yet" },
    parts.join(" · "), bar);
}

function idleText(status) {
  if (status.state !== "ready") return "–";
  if (status.idle_timeout === 0) return "never";
  if (status.in_flight > 0 || status.queue > 0) return "busy";
  let at = status.idle_stop_at;
  if (at === undefined && status.idle_timeout && status.last_used_at) {
    at = status.last_used_at + status.idle_timeout;  // a server without idle_stop_at
  }
  if (!at) return "–";
  const left = at - Date.now() / 1000;
  return left > 0 ? `in ${duration(left)}` : "due";
}

function actions(status) {
  const busy = ["starting", "stopping", "waking"].includes(status.state);
  // A remote endpoint is always ready: modelberth does not start or stop it (409).
  const fixed = status.state === "retired" || status.runtime === "remote";
  const button = (action, label, disabled) => h("button", {
    type: "button", class: `small action-${action}`, disabled: disabled || fixed,
    "aria-label": `${label} ${status.name}`, onclick: () => act(status.name, action),
  }, label);
  return h("div", { class: "actions" },
    button("start", "Start", status.state === "ready" || busy),
    button("stop", "Stop", status.state === "stopped" || status.state === "stopping"),
    button("restart", "Restart", busy));
}

function updateRow(name) {
  const status = store.models.get(name);
  const row = rows.get(name);
  const cell = (content, cls) => h("td", { class: cls }, content);
  const title = h("div", { class: "model-name" }, h("strong", {}, name), ...badges(status));
  const aliases = status.aliases && status.aliases.length
    ? h("div", { class: "aliases muted" }, status.aliases.join(", ")) : null;
  const first = cell([title, aliases]);
  clear(row.main);
  row.main.dataset.state = status.state;
  if (status.reduced) {
    row.main.append(first, cell(statePill(status.state), "state-cell"), cell(status.in_flight ?? "–", "num"));
    labelCells(row.main, INFERENCE_COLUMNS);
    return;
  }
  row.main.append(
    first,
    cell([statePill(status.state), progressView(status)], "state-cell"),
    cell([h("span", {}, status.runtime, status.port ? h("span", { class: "mono port" }, ` :${status.port}`) : null),
      runtimeDetail(status)]),
    cell(usage(status.memory_bytes, status.estimate_memory_bytes)),
    cell(usage(status.vram_bytes, status.estimate_vram_bytes)),
    cell(String(status.in_flight), "num in-flight"),
    cell(String(status.queue), "num queued"),
    cell(h("span", { class: "ago", dataset: { at: status.last_used_at || "" } }, ago(status.last_used_at))),
    cell(h("span", { class: "idle" }, idleText(status))),
    cell(actions(status)));
  labelCells(row.main, ADMIN_COLUMNS);
  clear(row.error);
  row.error.hidden = !status.last_error;
  if (status.last_error) {
    const [reason, ...rest] = status.last_error.split("; last log lines:\n");
    const details = h("details", { open: expanded.has(name) },
      h("summary", {}, h("span", { class: "error-text" }, `Last error: ${reason}`)),
      rest.length ? h("pre", { class: "log-tail" }, rest.join("\n")) : h("p", { class: "muted" }, "No log lines."));
    details.addEventListener("toggle", () => {
      if (details.open) expanded.add(name); else expanded.delete(name);
    });
    row.error.append(h("td", { colspan: 12 }, details));
  }
}

function tick() {
  for (const [name, row] of rows) {
    const status = store.models.get(name);
    if (!status || status.reduced) continue;
    const idle = row.main.querySelector(".idle");
    if (idle) idle.textContent = idleText(status);
    const last = row.main.querySelector(".ago");
    if (last) last.textContent = ago(status.last_used_at);
  }
}
