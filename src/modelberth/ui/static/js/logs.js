// Logs tab: a model's output or modelberth's own, followed live (NDJSON through fetch), with
// a client-side search that filters and highlights.

import { ndjson, open } from "./api.js";
import * as store from "./store.js";
import { clear, clock, h, unavailable } from "./util.js";

const MAX_LINES = 5000;
let source = null;
let search = null;
let follow = null;
let output = null;
let status = null;
let lines = [];
let controller = null;
let visible = false;
let retry = null;
let searchTimer = null;

export function mount(panel) {
  source = h("select", { id: "logs-source", "aria-label": "Log source", onchange: connect });
  fillSources();
  store.onModels((name) => { if (name === null) fillSources(); });
  search = h("input", { id: "logs-search", type: "search", placeholder: "Search lines…",
    "aria-label": "Search log lines", autocomplete: "off" });
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(redraw, 120);
  });
  follow = h("input", { id: "logs-follow", type: "checkbox", checked: true });
  status = h("span", { class: "muted log-status", role: "status" });
  output = h("div", { class: "log-view", id: "log-view", tabindex: "0", role: "log",
    "aria-label": "Log lines" });
  panel.append(
    h("div", { class: "toolbar" }, h("h2", {}, "Logs"),
      h("label", { class: "inline" }, "Source ", source), search,
      h("label", { class: "inline" }, follow, " follow"),
      h("span", { class: "spacer" }), status,
      h("button", { type: "button", onclick: () => { lines = []; redraw(); } }, "Clear")),
    output);
}

export function show() {
  visible = true;
  connect();
}

export function hide() {
  visible = false;
  clearTimeout(retry);
  if (controller) controller.abort();
  controller = null;
}

function fillSources() {
  const value = source.value;
  clear(source).append(h("option", { value: "" }, "modelberth"),
    ...[...store.models.keys()].map((name) => h("option", { value: name }, name)));
  if ([...source.options].some((o) => o.value === value)) source.value = value;
}

async function connect() {
  clearTimeout(retry);
  if (controller) controller.abort();
  controller = new AbortController();
  const mine = controller;
  lines = [];
  redraw();
  const name = source.value;
  const path = name
    ? `/api/models/${encodeURIComponent(name)}/logs?follow=true&tail=200&format=json`
    : "/api/logs?follow=true&tail=200&format=json";
  status.textContent = "connecting…";
  try {
    const response = await open(path, { signal: mine.signal, accept: "application/x-ndjson" });
    status.textContent = "following";
    status.dataset.state = "live";
    for await (const line of ndjson(response)) {
      if (mine !== controller) return;
      add(line);
    }
    status.textContent = "stream ended";
  } catch (err) {
    if (mine.signal.aborted) return;
    status.dataset.state = "off";
    if (err.status === 404 && !name) {
      status.textContent = "";
      clear(output).append(unavailable("/api/logs", err));
      return;
    }
    status.textContent = `disconnected: ${err.message}`;
  }
  if (mine === controller && visible) retry = setTimeout(connect, 3000);
}

function matches(line, needle) {
  return !needle || line.text.toLowerCase().includes(needle);
}

function lineElement(line, needle) {
  const stream = String(line.stream || "");
  const text = h("span", { class: "text" });
  if (needle) {
    const lower = line.text.toLowerCase();
    let at = 0;
    for (;;) {
      const hit = lower.indexOf(needle, at);
      if (hit < 0) break;
      text.append(line.text.slice(at, hit), h("mark", {}, line.text.slice(hit, hit + needle.length)));
      at = hit + needle.length;
    }
    text.append(line.text.slice(at));
  } else {
    text.textContent = line.text;
  }
  return h("div", { class: `line stream-${stream.toLowerCase()}` },
    h("span", { class: "at" }, line.at ? clock(line.at) : ""),
    h("span", { class: "tag" }, stream), text);
}

function add(line) {
  if (typeof line.text !== "string") return;
  lines.push(line);
  if (lines.length > MAX_LINES) {
    lines.splice(0, lines.length - MAX_LINES);
    if (output.childElementCount > MAX_LINES) output.firstElementChild.remove();
  }
  const needle = search.value.trim().toLowerCase();
  if (!matches(line, needle)) return;
  const stick = follow.checked;
  if (output.querySelector(".empty")) clear(output);
  output.append(lineElement(line, needle));
  if (stick) output.scrollTop = output.scrollHeight;
}

function redraw() {
  const needle = search.value.trim().toLowerCase();
  clear(output);
  const shown = lines.filter((l) => matches(l, needle));
  if (!shown.length) {
    output.append(h("p", { class: "muted empty" }, lines.length ? "No line matches." : "No lines yet."));
    return;
  }
  const fragment = document.createDocumentFragment();
  for (const line of shown) fragment.append(lineElement(line, needle));
  output.append(fragment);
  if (follow.checked) output.scrollTop = output.scrollHeight;
}
