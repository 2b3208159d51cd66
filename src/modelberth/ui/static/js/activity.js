// Activity tab: the last requests (live from `request` events), filters, a request's detail.

import { call } from "./api.js";
import * as events from "./events.js";
import * as store from "./store.js";
import { clear, clock, h, num, seconds, unavailable } from "./util.js";

const LIMIT = 200;
let tbody = null;
let notice = null;
let detail = null;
let modelFilter = null;
let statusFilter = null;
let records = [];
let capture = null;
let selected = null;

const COLUMNS = ["Time", "Model", "Route", "Status", "Queue", "Cold", "TTFT", "In", "Out",
  "Tok/s", "Duration"];

export function mount(panel) {
  modelFilter = h("select", { id: "activity-model", "aria-label": "Filter by model",
    onchange: load });
  statusFilter = h("select", { id: "activity-status", "aria-label": "Filter by status", onchange: load },
    h("option", { value: "" }, "any status"), h("option", { value: "ok" }, "ok (< 400)"),
    h("option", { value: "error" }, "errors (≥ 400)"));
  fillModels();
  store.onModels((name) => { if (name === null) fillModels(); });
  notice = h("div", { class: "notice-box" });
  tbody = h("tbody");
  detail = h("aside", { class: "card detail", id: "request-detail", "aria-live": "polite" },
    h("p", { class: "muted" }, "Select a request (click it, or focus it and press Enter) to see its detail."));
  const table = h("table", { class: "grid activity-table" },
    h("thead", {}, h("tr", {}, COLUMNS.map((c, i) => h("th", { scope: "col", class: i >= 4 && i !== 5 ? "num" : "" }, c)))), tbody);
  tbody.addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-id]");
    if (row) open(Number(row.dataset.id));
  });
  tbody.addEventListener("keydown", (e) => {
    const row = e.target.closest("tr[data-id]");
    if (!row) return;
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      open(Number(row.dataset.id));
    } else if (e.key === "ArrowDown" && row.nextElementSibling) {
      e.preventDefault();
      row.nextElementSibling.focus();
    } else if (e.key === "ArrowUp" && row.previousElementSibling) {
      e.preventDefault();
      row.previousElementSibling.focus();
    }
  });
  panel.append(
    h("div", { class: "toolbar" }, h("h2", {}, "Activity"),
      h("label", { class: "inline" }, "Model ", modelFilter),
      h("label", { class: "inline" }, "Status ", statusFilter),
      h("span", { class: "spacer" }),
      h("button", { type: "button", onclick: load }, "Refresh")),
    notice,
    h("div", { class: "split" }, h("div", { class: "table-box" }, table), detail));
  events.on("request", (event) => {
    if (!event || event.id === undefined || !matches(event)) return;
    if (records.some((r) => r.id === event.id)) return;
    records.unshift(event);
    records.length = Math.min(records.length, LIMIT);
    render();
  });
}

export function show() { load(); }

function fillModels() {
  const value = modelFilter.value;
  clear(modelFilter).append(h("option", { value: "" }, "all models"),
    ...[...store.models.keys()].map((name) => h("option", { value: name }, name)));
  modelFilter.value = value;
}

function matches(record) {
  const model = modelFilter.value;
  if (model && record.model !== model) return false;
  const status = statusFilter.value;
  if (status === "ok") return record.status < 400;
  if (status === "error") return record.status >= 400;
  return true;
}

async function load() {
  const params = new URLSearchParams({ limit: String(LIMIT) });
  if (modelFilter.value) params.set("model", modelFilter.value);
  if (statusFilter.value) params.set("status", statusFilter.value);
  try {
    const data = await call(`/api/requests?${params}`);
    records = data.requests || [];
    capture = Boolean(data.capture_bodies);
    clear(notice).append(h("p", { class: "muted" },
      `Keeping the last ${data.size ?? "?"} requests · body capture ${capture ? "on" : "off"}`));
    render();
  } catch (err) {
    records = [];
    render();
    clear(notice).append(unavailable("/api/requests", err));
  }
}

function statusCell(record) {
  const cls = record.status >= 500 ? "bad" : record.status >= 400 ? "warn" : "good";
  return h("span", { class: `http http-${cls}`, title: record.error || "" }, String(record.status));
}

function render() {
  clear(tbody);
  if (!records.length) {
    tbody.append(h("tr", {}, h("td", { colspan: COLUMNS.length, class: "empty" }, "No requests yet.")));
    return;
  }
  for (const r of records) {
    const cells = [
      h("span", { class: "mono" }, clock(r.at)),
      r.requested && r.requested !== r.model ? [r.model, h("span", { class: "muted" }, ` (${r.requested})`)] : r.model || "–",
      h("span", { class: "mono" }, `${r.method && r.method !== "POST" ? `${r.method} ` : ""}${r.route || ""}`),
      statusCell(r),
      seconds(r.queue_seconds),
      r.cold ? h("span", { class: "badge cold" }, "cold") : h("span", { class: "muted" }, "no"),
      seconds(r.ttft_seconds),
      r.input_tokens ?? "–",
      r.output_tokens ?? "–",
      num(r.tokens_per_second),
      seconds(r.duration_seconds),
    ];
    const row = h("tr", { tabindex: "0", dataset: { id: r.id, model: r.model || "" },
      class: r.id === selected ? "selected" : "", "aria-label": `request ${r.id}` },
    cells.map((c, i) => h("td", { class: i >= 4 && i !== 5 ? "num" : "" }, c)));
    tbody.append(row);
  }
}

async function open(id) {
  selected = id;
  for (const row of tbody.querySelectorAll("tr[data-id]")) {
    row.classList.toggle("selected", Number(row.dataset.id) === id);
  }
  clear(detail).append(h("p", { class: "muted" }, `Loading request ${id}…`));
  let record;
  try {
    record = await call(`/api/requests/${id}`);
  } catch (err) {
    const fallback = records.find((r) => r.id === id);
    clear(detail).append(h("h3", {}, `Request ${id}`),
      h("p", { class: "notice" }, err.status === 404
        ? "This request is no longer kept by the server." : `Could not load it: ${err.message}`));
    if (fallback) detail.append(fields(fallback));
    return;
  }
  clear(detail).append(h("h3", {}, `Request ${id}`), fields(record));
  detail.append(body("Request body", record.request_body, record.request_truncated));
  detail.append(body("Response body", record.response_body, record.response_truncated));
}

function fields(r) {
  const pairs = [
    ["time", new Date(r.at * 1000).toLocaleString()], ["model", r.model],
    ["requested as", r.requested], ["route", `${r.method} ${r.route}`], ["status", r.status],
    ["error", r.error], ["queue wait", seconds(r.queue_seconds)], ["cold start", r.cold ? "yes" : "no"],
    ["time to first token", seconds(r.ttft_seconds)], ["input tokens", r.input_tokens],
    ["output tokens", r.output_tokens], ["tokens/s", num(r.tokens_per_second)],
    ["duration", seconds(r.duration_seconds)], ["streamed", r.streamed ? "yes" : "no"],
  ];
  return h("dl", { class: "fields" }, pairs.filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
}

function body(title, text, truncated) {
  const box = h("div", { class: "body-box" }, h("h4", {}, title));
  if (text === null || text === undefined) {
    box.append(h("p", { class: "muted capture-off" }, capture === false || capture === null
      ? "Not captured: body capture is off on this server." : "Not captured."));
    return box;
  }
  let shown = text;
  try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON: as is */ }
  box.append(h("pre", { class: "body" }, shown));
  if (truncated) box.append(h("p", { class: "muted" }, "Truncated by the server."));
  return box;
}
