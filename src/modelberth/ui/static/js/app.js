// Boot: theme, key / mode detection, the header, tabs with hash routing.

import { ApiError, call, getKey, setKey, whenUnauthorized } from "./api.js";
import * as events from "./events.js";
import * as store from "./store.js";
import * as models from "./models.js";
import * as resources from "./resources.js";
import * as activity from "./activity.js";
import * as logs from "./logs.js";
import * as playground from "./playground.js";
import * as config from "./config.js";

const TABS = { models, resources, activity, logs, playground, config };
const ADMIN_ONLY = new Set(["resources", "activity", "logs", "config"]);
const $ = (id) => document.getElementById(id);
const mounted = new Set();
let current = null;

// ---- theme: "auto" follows prefers-color-scheme; a choice is remembered. ----
// data-theme is the choice (absent in auto); data-scheme what the CSS draws.
const THEME_KEY = "modelberth.theme";
const systemDark = window.matchMedia("(prefers-color-scheme: dark)");
function applyTheme(choice) {
  const root = document.documentElement;
  if (choice === "light" || choice === "dark") root.dataset.theme = choice;
  else delete root.dataset.theme;
  root.dataset.scheme = choice === "light" || choice === "dark" ? choice
    : systemDark.matches ? "dark" : "light";
  $("theme").textContent = choice === "light" ? "☀ light" : choice === "dark" ? "☾ dark" : "◐ auto";
  $("theme").setAttribute("aria-label", `Colour scheme: ${choice}`);
}
function initTheme() {
  let choice = "auto";
  try { choice = localStorage.getItem(THEME_KEY) || "auto"; } catch { /* no storage */ }
  applyTheme(choice);
  systemDark.addEventListener("change", () => {
    applyTheme(document.documentElement.dataset.theme || "auto");
  });
  $("theme").addEventListener("click", () => {
    const order = ["auto", "light", "dark"];
    const now = document.documentElement.dataset.theme || "auto";
    const next = order[(order.indexOf(now) + 1) % order.length];
    try { localStorage.setItem(THEME_KEY, next); } catch { /* no storage */ }
    applyTheme(next);
  });
}

// ---- connection status ----
function showConnection(state, delay) {
  const conn = $("conn");
  conn.dataset.state = state;
  const label = conn.querySelector(".label");
  label.textContent = {
    connecting: "connecting…",
    connected: "live",
    retrying: `reconnecting in ${Math.round((delay || 0) / 1000)}s`,
    off: "events off",
    refused: "events refused",
  }[state] || state;
  conn.title = state === "connected" ? "Receiving live events from /api/events"
    : "The live event stream is not connected";
}

// ---- tabs ----
function visibleTabs() {
  return [...document.querySelectorAll('[role="tab"]')].filter((t) => !t.hidden);
}

function select(name, focus = false) {
  if (!TABS[name] || (!store.session.admin && ADMIN_ONLY.has(name))) name = "models";
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", on ? "true" : "false");
    tab.tabIndex = on ? 0 : -1;
    if (on && focus) tab.focus();
  }
  for (const panel of document.querySelectorAll('[role="tabpanel"]')) {
    panel.hidden = panel.id !== `panel-${name}`;
  }
  if (current && current !== name && TABS[current].hide) TABS[current].hide();
  const panel = $(`panel-${name}`);
  if (!mounted.has(name)) {
    mounted.add(name);
    TABS[name].mount(panel);
  }
  current = name;
  if (TABS[name].show) TABS[name].show();
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

function initTabs() {
  const list = $("tabs");
  list.addEventListener("click", (e) => {
    const tab = e.target.closest('[role="tab"]');
    if (tab) select(tab.dataset.tab);
  });
  list.addEventListener("keydown", (e) => {
    const tabs = visibleTabs();
    const index = tabs.indexOf(document.activeElement);
    if (index < 0) return;
    let next = null;
    if (e.key === "ArrowRight") next = tabs[(index + 1) % tabs.length];
    else if (e.key === "ArrowLeft") next = tabs[(index - 1 + tabs.length) % tabs.length];
    else if (e.key === "Home") next = tabs[0];
    else if (e.key === "End") next = tabs[tabs.length - 1];
    if (next) {
      e.preventDefault();
      select(next.dataset.tab, true);
    }
  });
  window.addEventListener("hashchange", () => select(location.hash.slice(1)));
}

// ---- key and mode ----
function askForKey(message, inferenceOpen) {
  events.stop();
  for (const panel of document.querySelectorAll('[role="tabpanel"]')) panel.hidden = true;
  $("tabs").hidden = true;
  $("auth").hidden = false;
  $("auth-error").textContent = message || "";
  $("auth-inference").hidden = !inferenceOpen;
  $("auth-key").value = "";
  $("auth-key").focus();
}

async function probe() {
  try {
    await call("/api/models");
    return "admin";
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
  }
  try {
    await call("/v1/models");
    return getKey() ? "inference" : "inference-open";
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return "refused";
    throw err;
  }
}

async function enter(mode) {
  store.session.admin = mode === "admin";
  document.body.dataset.mode = store.session.admin ? "admin" : "inference";
  $("auth").hidden = true;
  $("tabs").hidden = false;
  $("forget-key").hidden = !getKey();
  for (const tab of document.querySelectorAll("[data-admin]")) tab.hidden = !store.session.admin;
  if (store.session.admin) {
    store.wireEvents();
    events.start();
  } else {
    showConnection("off");
    $("conn").title = "Live events need an admin key";
  }
  try { await store.loadModels(); } catch (err) { banner(`Could not load the models: ${err.message}`); }
  select(location.hash.slice(1) || "models");
}

export function banner(text) {
  const el = $("banner");
  el.textContent = text || "";
  el.hidden = !text;
}

async function boot() {
  initTheme();
  initTabs();
  events.onStatus(showConnection);
  call("/health").then((data) => {
    store.session.version = data.version;
    $("version").textContent = `v${data.version}`;
  }).catch((err) => {
    $("version").textContent = err.status === 401 ? "" : "unreachable";
  });
  $("forget-key").addEventListener("click", () => {
    setKey("");
    location.reload();
  });
  $("auth-inference").addEventListener("click", () => enter("inference"));
  $("auth-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = $("auth-key").value.trim();
    if (!key) return;
    setKey(key);
    await decide(true);
  });
  await decide(false);
}

async function decide(typed) {
  let mode;
  try {
    mode = await probe();
  } catch (err) {
    banner(`modelberth is unreachable: ${err.message}`);
    return;
  }
  if (mode === "admin" || mode === "inference") {
    await enter(mode);
    return;
  }
  const hadKey = Boolean(getKey());
  if (hadKey) setKey("");
  const message = hadKey || typed ? "Key refused: the server did not accept this key." : "";
  askForKey(message, mode === "inference-open");
}

whenUnauthorized(() => {
  // A key that stopped working (a reload changed the keys): ask again.
  if (!$("auth").hidden) return;
  if (store.session.admin) {
    banner("The server no longer accepts this key. Reload the page to sign in again.");
  }
});

boot();
