// Config tab: the running config (secrets redacted by the server), reload, and a rejected
// reload's errors with their line numbers.

import { call } from "./api.js";
import * as store from "./store.js";
import { clear, h, unavailable } from "./util.js";

let pathLine = null;
let outcome = null;
let lastReload = null;
let view = null;
let reloadButton = null;

export function mount(panel) {
  pathLine = h("p", { class: "muted mono", id: "config-path" });
  outcome = h("div", { id: "reload-outcome", role: "status", "aria-live": "polite" });
  lastReload = h("div", { id: "last-reload" });
  view = h("pre", { class: "config-view", id: "config-view", tabindex: "0" });
  reloadButton = h("button", { type: "button", class: "primary", id: "reload", onclick: reload },
    "Reload config");
  panel.append(
    h("div", { class: "toolbar" }, h("h2", {}, "Config"), h("span", { class: "spacer" }),
      h("button", { type: "button", onclick: load }, "Refresh"), reloadButton),
    pathLine, outcome,
    h("section", { class: "card" }, h("h3", {}, "Last reload"), lastReload),
    h("section", { class: "card" }, h("h3", {}, "Running config"),
      h("p", { class: "muted" }, "Secrets are replaced by *** by the server."), view));
}

export function show() { load(); }

async function load() {
  try {
    const data = await call("/api/config");
    pathLine.textContent = data.path ? `File: ${data.path}` : "No config file (built-in config).";
    view.textContent = JSON.stringify(data.config, null, 2);
    drawLastReload(data.last_reload);
  } catch (err) {
    pathLine.textContent = "";
    clear(view).append(unavailable("/api/config", err));
    clear(lastReload).append(h("p", { class: "muted" }, "Unknown."));
  }
}

function drawLastReload(info) {
  clear(lastReload);
  if (!info) {
    lastReload.append(h("p", { class: "muted" }, "No reload since the server started."));
    return;
  }
  const when = new Date(info.at * 1000).toLocaleString();
  lastReload.append(h("p", {},
    h("span", { class: info.ok ? "badge ok" : "badge bad" }, info.ok ? "applied" : "rejected"), ` ${when}`));
  if (info.ok && info.result) lastReload.append(result(info.result));
  if (!info.ok) {
    if (info.issues && info.issues.length) lastReload.append(issues(info.issues));
    else if (info.message) lastReload.append(h("pre", { class: "error-block" }, info.message));
  }
}

async function reload() {
  reloadButton.disabled = true;
  clear(outcome).append(h("p", { class: "muted" }, "Reloading…"));
  try {
    const data = await call("/api/reload", { method: "POST" });
    clear(outcome).append(h("div", { class: "card ok-card" },
      h("h3", {}, "Reload applied"), result(data)));
    store.loadModels().catch(() => {});
  } catch (err) {
    const error = (err.body && err.body.error) || {};
    const box = h("div", { class: "card bad-card reload-error" },
      h("h3", {}, err.status === 400 ? "Reload rejected: the running config stays" : `Reload failed (${err.status || "network"})`));
    if (error.issues && error.issues.length) box.append(issues(error.issues));
    if (error.message) box.append(h("pre", { class: "error-block" }, error.message));
    else box.append(h("p", {}, err.message));
    clear(outcome).append(box);
  } finally {
    reloadButton.disabled = false;
    load();
  }
}

function result(data) {
  const list = h("dl", { class: "fields" });
  for (const key of ["added", "removed", "restarted", "updated", "unchanged"]) {
    const names = data[key] || [];
    list.append(h("dt", {}, key), h("dd", {}, names.length ? names.join(", ") : "–"));
  }
  const warnings = data.warnings || [];
  if (warnings.length) {
    list.append(h("dt", {}, "warnings"), h("dd", {}, h("ul", {}, warnings.map((w) => h("li", {}, w)))));
  }
  return list;
}

function issues(list) {
  return h("table", { class: "grid issues" },
    h("thead", {}, h("tr", {}, ["Line", "Key", "Problem"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, list.map((issue) => h("tr", {},
      h("td", { class: "num line" }, issue.line === null || issue.line === undefined ? "–" : `line ${issue.line}`),
      h("td", { class: "mono" }, issue.path || "–"),
      h("td", {}, issue.message)))));
}
