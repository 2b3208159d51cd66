// Resources tab: host RAM and each GPU as bars stacked by model against the budgets, each node
// of a multi-node runtime (Swarm, docker.hosts) with what the scheduler counts there, and the
// last 15 minutes (RAM, VRAM per GPU, requests/s, queue) from /api/history, evictions marked.

import { call } from "./api.js";
import * as events from "./events.js";
import * as store from "./store.js";
import { legend, lineChart } from "./chart.js";
import { bytes, clear, clock, colour, h, num, unavailable } from "./util.js";

let barsBox = null;
let chartsBox = null;
let evictionsBox = null;
let timer = null;
let visible = false;
let lastHistory = null;
let resizeObserver = null;

export function mount(panel) {
  barsBox = h("div", { class: "bars" });
  chartsBox = h("div", { class: "charts" });
  evictionsBox = h("div", { class: "evictions" });
  panel.append(
    h("div", { class: "toolbar" }, h("h2", {}, "Resources"), h("span", { class: "spacer" }),
      h("button", { type: "button", onclick: refresh }, "Refresh")),
    h("section", { class: "card" }, h("h3", {}, "Memory now"), barsBox),
    h("section", { class: "card" }, h("h3", {}, "Last 15 minutes"), chartsBox,
      h("h4", {}, "Evictions"), evictionsBox));
  events.on("eviction", () => { if (visible) refresh(); });
  // Redraw at the new width (debounced, and only when the width really changed).
  let width = 0;
  let pending = null;
  resizeObserver = new ResizeObserver(() => {
    clearTimeout(pending);
    pending = setTimeout(() => {
      if (chartsBox.clientWidth === width) return;
      width = chartsBox.clientWidth;
      if (visible && lastHistory) drawHistory(lastHistory);
    }, 150);
  });
  resizeObserver.observe(chartsBox);
}

export function show() {
  visible = true;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, 5000);
}

export function hide() {
  visible = false;
  clearInterval(timer);
}

async function refresh() {
  const [res, hist] = await Promise.allSettled([call("/api/resources"), call("/api/history")]);
  if (res.status === "fulfilled") drawBars(res.value);
  else clear(barsBox).append(unavailable("/api/resources", res.reason));
  if (hist.status === "fulfilled") {
    lastHistory = hist.value;
    drawHistory(hist.value);
  } else {
    lastHistory = null;
    clear(chartsBox).append(unavailable("/api/history", hist.reason));
    clear(evictionsBox);
  }
}

function drawBars(data) {
  clear(barsBox);
  const host = data.host || {};
  const models = data.models || {};
  const budgets = data.budgets || {};
  const total = host.memory_total_bytes || 0;
  const used = total - (host.memory_available_bytes || 0);
  const ramParts = Object.entries(models)
    .filter(([, m]) => m.memory_bytes)
    .map(([name, m]) => ({ name, value: m.memory_bytes, estimate: m.estimate_memory_bytes }));
  barsBox.append(stackedBar({
    title: "Host RAM", total, used, parts: ramParts, budget: budgets.memory_bytes,
    extra: host.cpu_percent !== undefined ? `CPU ${num(host.cpu_percent, 0)}%` : "",
  }));
  const gpus = data.gpus || [];
  if (!gpus.length) {
    barsBox.append(h("p", { class: "muted no-gpus" }, "No GPUs (none found through NVML)."));
  }
  for (const gpu of gpus) {
    const parts = [];
    for (const [name, m] of Object.entries(models)) {
      if (!m.vram_bytes) continue;
      const status = store.models.get(name) || {};
      let on = status.gpus;
      if (on === "all") on = gpus.map((g) => g.index);
      if (!Array.isArray(on) || !on.length) on = gpus.length === 1 ? [gpu.index] : [];
      if (!on.includes(gpu.index)) continue;
      parts.push({ name, value: m.vram_bytes / on.length, estimate: m.estimate_vram_bytes });
    }
    const budget = (budgets.gpus || []).find((b) => b.index === gpu.index);
    barsBox.append(stackedBar({
      title: `GPU ${gpu.index} · ${gpu.name}`, total: gpu.memory_total_bytes,
      used: gpu.memory_used_bytes, parts, budget: budget ? budget.vram_bytes : null,
      extra: gpu.utilization_percent !== undefined ? `util ${num(gpu.utilization_percent, 0)}%` : "",
    }));
  }
  for (const node of data.nodes || []) barsBox.append(nodeBar(node));
}

/** One node: the RAM the scheduler counts there, by model, against the node's budget. */
function nodeBar(node) {
  const counted = node.model_memory_bytes || {};
  const parts = Object.entries(counted).map(([name, value]) => ({ name, value }));
  const gpus = (node.gpus || []).map((g) => `GPU ${g.index} ${bytes(g.vram_budget_bytes)}`);
  const box = stackedBar({
    title: `Node ${node.name} · ${node.address} (${node.runtime})`,
    total: node.memory_budget_bytes || node.counted_memory_bytes || 0,
    used: node.counted_memory_bytes || 0, parts, budget: node.memory_budget_bytes,
    extra: node.ready
      ? [...gpus, ...(node.usage_measured === false ? ["usage planned, not measured"] : [])]
        .join(" · ")
      : `not ready: ${node.why || "unknown"}`,
  });
  box.classList.add("node-box");
  box.dataset.node = node.name;
  if (!node.ready) box.classList.add("node-down");
  return box;
}

function stackedBar({ title, total, used, parts, budget, extra }) {
  const bar = h("div", { class: "stack", role: "img",
    "aria-label": `${title}: ${bytes(used)} used of ${bytes(total)}` });
  let sum = 0;
  const pct = (v) => `${total ? Math.max(0, Math.min(100, (v / total) * 100)) : 0}%`;
  for (const part of parts) {
    const seg = h("span", { class: "seg", title: `${part.name}: ${bytes(part.value)}` });
    seg.style.width = pct(part.value);
    seg.style.background = colour(part.name);
    bar.append(seg);
    sum += part.value;
  }
  const other = Math.max(0, used - sum);
  const rest = h("span", { class: "seg other", title: `other processes: ${bytes(other)}` });
  rest.style.width = pct(other);
  bar.append(rest);
  if (budget) {
    const mark = h("span", { class: "budget", title: `budget ${bytes(budget)}` });
    mark.style.left = pct(budget);
    bar.append(mark);
  }
  const items = parts.map((p) => h("span", {},
    h("span", { class: "swatch", dataset: { name: p.name } }),
    `${p.name} ${bytes(p.value)}${p.estimate ? ` (est. ${bytes(p.estimate)})` : ""}`));
  for (const item of items) item.firstChild.style.background = colour(item.firstChild.dataset.name);
  // A node counts only its models: nothing else to show there.
  if (other > 0) items.push(h("span", {}, h("span", { class: "swatch other" }), `other ${bytes(other)}`));
  return h("div", { class: "stack-box" },
    h("div", { class: "stack-head" }, h("strong", {}, title),
      h("span", { class: "muted" }, `${bytes(used)} / ${bytes(total)}`
        + (budget ? ` · budget ${bytes(budget)}` : " · no budget") + (extra ? ` · ${extra}` : ""))),
    bar, h("div", { class: "legend" }, items));
}

function drawHistory(data) {
  clear(chartsBox);
  const samples = data.samples || [];
  const now = Date.now() / 1000;
  const to = samples.length ? Math.max(now, samples[samples.length - 1].at) : now;
  const from = to - (data.window_seconds || 900);
  const box = chartsBox.clientWidth || 600;
  const columns = box >= 900 ? 2 : 1;
  chartsBox.style.gridTemplateColumns = `repeat(${columns}, minmax(0, 1fr))`;
  const width = (box - 16 * (columns - 1)) / columns - 2;
  const markers = (data.evictions || []).map((e) => ({
    at: e.at, label: `evicted ${e.model} for ${e.for_model || "?"}${e.reason ? ` (${e.reason})` : ""}`,
    short: `${e.model} → ${e.for_model || "?"}`,
  }));
  const chart = (title, series, format, yMax, integer) => h("figure", { class: "chart-box" },
    h("figcaption", {}, title),
    lineChart({ series, from, to, format, yMax, markers, width, label: title, integer }),
    series.length > 1 ? legend(series) : null);

  const ram = [{ name: "RAM used", colour: "#3b82f6", points: samples.map((p) => [p.at, p.memory_used_bytes]) }];
  const ramTotal = samples.length ? samples[samples.length - 1].memory_total_bytes : 0;
  chartsBox.append(chart("Host RAM", ram, bytes, ramTotal));

  const gpuIndexes = new Set();
  for (const p of samples) for (const g of p.gpus || []) gpuIndexes.add(g.index);
  if (gpuIndexes.size) {
    const series = [...gpuIndexes].sort((a, b) => a - b).map((index) => ({
      name: `GPU ${index}`, colour: colour(`gpu${index}`),
      points: samples.flatMap((p) => (p.gpus || []).filter((g) => g.index === index)
        .map((g) => [p.at, g.memory_used_bytes])),
    }));
    let top = 0;
    for (const p of samples) for (const g of p.gpus || []) top = Math.max(top, g.memory_total_bytes || 0);
    chartsBox.append(chart("VRAM per GPU", series, bytes, top));
  } else {
    chartsBox.append(h("figure", { class: "chart-box" }, h("figcaption", {}, "VRAM per GPU"),
      h("p", { class: "muted" }, "No GPUs.")));
  }
  chartsBox.append(chart("Requests / s",
    [{ name: "requests/s", colour: "#14b8a6", points: samples.map((p) => [p.at, p.requests_per_second || 0]) }],
    (v) => num(v, v < 10 ? 1 : 0)));
  chartsBox.append(chart("Queue length", [
    { name: "queued", colour: "#f97316", points: samples.map((p) => [p.at, p.queued || 0]) },
    { name: "in flight", colour: "#a855f7", points: samples.map((p) => [p.at, p.in_flight || 0]) },
  ], (v) => num(v, 0), 0, true));

  clear(evictionsBox);
  const evictions = data.evictions || [];
  if (!evictions.length) {
    evictionsBox.append(h("p", { class: "muted" }, "No evictions in this window."));
    return;
  }
  evictionsBox.append(h("ul", { class: "eviction-list" }, evictions.slice().reverse().map((e) =>
    h("li", {}, h("span", { class: "mono" }, clock(e.at)), " ",
      h("strong", {}, e.model), " evicted for ", h("strong", {}, e.for_model || "?"),
      e.reason ? h("span", { class: "muted" }, ` — ${e.reason}`) : null))));
}
