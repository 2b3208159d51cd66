// DOM building (never innerHTML with data) and formatting helpers.

/** h("div", {class: "x", onclick: fn}, child, "text") -> element. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "text") {
      el.textContent = value;
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element with attributes. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "text") el.textContent = value;
    else el.setAttribute(key, String(value));
  }
  for (const child of children) if (child) el.append(child);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function seconds(value, digits = 2) {
  if (value === null || value === undefined) return "–";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 120) return `${value.toFixed(digits)} s`;
  return duration(value);
}

/** 3725 -> "1h 2m 5s". */
export function duration(total) {
  if (total === null || total === undefined) return "–";
  let rest = Math.max(0, Math.round(total));
  const d = Math.floor(rest / 86400); rest -= d * 86400;
  const hrs = Math.floor(rest / 3600); rest -= hrs * 3600;
  const m = Math.floor(rest / 60); rest -= m * 60;
  if (d) return `${d}d ${hrs}h`;
  if (hrs) return `${hrs}h ${m}m`;
  if (m) return `${m}m ${rest}s`;
  return `${rest}s`;
}

export function ago(at) {
  if (!at) return "never";
  const delta = Date.now() / 1000 - at;
  if (delta < 2) return "just now";
  return `${duration(delta)} ago`;
}

export function clock(at) {
  if (!at) return "–";
  const d = new Date(at * 1000);
  return d.toLocaleTimeString([], { hour12: false });
}

export function num(value, digits = 1) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(digits);
}

/** A short "not available" notice for an endpoint this server does not have. */
export function unavailable(path, error) {
  const what = error && error.status === 404
    ? `This server has no ${path} endpoint (404): update modelberth to see this.`
    : `Could not load ${path}: ${error ? error.message : "unknown error"}`;
  return h("p", { class: "notice", role: "status" }, what);
}

/** Calls fn at most once per `ms` per key, always with the latest call honoured. */
export function throttler(ms) {
  const timers = new Map();
  const last = new Map();
  return (key, fn) => {
    if (timers.has(key)) return;
    const wait = Math.max(0, (last.get(key) || 0) + ms - Date.now());
    timers.set(key, setTimeout(() => {
      timers.delete(key);
      last.set(key, Date.now());
      fn();
    }, wait));
  };
}

/** A fixed colour per name, for stacked bars and chart series. */
const PALETTE = ["#3b82f6", "#a855f7", "#14b8a6", "#f97316", "#ec4899", "#84cc16",
  "#06b6d4", "#eab308", "#6366f1", "#ef4444", "#10b981", "#f43f5e"];
const assigned = new Map();
export function colour(name) {
  const key = String(name);
  if (!assigned.has(key)) assigned.set(key, PALETTE[assigned.size % PALETTE.length]);
  return assigned.get(key);
}

/** A state pill: <span class="state state-ready">ready</span>. */
export function statePill(state) {
  return h("span", { class: `state state-${state}`, dataset: { state } }, state);
}
