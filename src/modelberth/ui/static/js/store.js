// What the tabs share: the session's mode and the model list, kept live from the event
// stream (a state or request event refetches that model's status, at most ~2/s per model).

import { call } from "./api.js";
import * as events from "./events.js";
import { throttler } from "./util.js";

export const session = { admin: false, version: "" };

/** name -> status (from /api/models), or a reduced status from /v1/models. */
export const models = new Map();
/** Every id a request may name (names and aliases), for the playground. */
export const ids = [];

const listeners = new Set();
export function onModels(fn) { listeners.add(fn); }
function changed(name) { for (const fn of listeners) fn(name); }

export async function loadModels() {
  if (session.admin) {
    const data = await call("/api/models");
    models.clear();
    ids.length = 0;
    for (const status of data.models) {
      models.set(status.name, status);
      ids.push(status.name, ...(status.aliases || []));
    }
  } else {
    const data = await call("/v1/models");
    models.clear();
    ids.length = 0;
    for (const entry of data.data) {
      ids.push(entry.id);
      const info = entry.modelberth || {};
      if (info.alias_of) {
        const target = models.get(info.alias_of);
        if (target) target.aliases.push(entry.id);
        continue;
      }
      models.set(entry.id, {
        name: entry.id, state: info.state || "unknown", in_flight: info.in_flight,
        aliases: [], reduced: true,
      });
    }
  }
  changed(null);
}

const throttle = throttler(500);

export function refresh(name) {
  if (!session.admin || !name) return;
  throttle(name, async () => {
    try {
      const status = await call(`/api/models/${encodeURIComponent(name)}`);
      models.set(name, status);
      changed(name);
    } catch (err) {
      if (err.status === 404 && models.delete(name)) changed(null);
    }
  });
}

export function put(status) {
  models.set(status.name, status);
  changed(status.name);
}

export function wireEvents() {
  events.on("open", () => { loadModels().catch(() => {}); });
  events.on("state", (event) => {
    const current = models.get(event.model);
    if (current) {
      current.state = event.to;
      if (event.to !== "starting" && event.to !== "waking") current.progress = null;
      if (event.error) current.last_error = event.error;
      changed(event.model);
    } else {
      // A model a reload added: learn the whole list again.
      loadModels().catch(() => {});
    }
    refresh(event.model);
  });
  events.on("start_progress", (event) => {
    const current = models.get(event.model);
    if (!current || current.reduced) return;
    const { elapsed_seconds, percent = null, eta_seconds = null, phase = "starting" } = event;
    current.progress = { elapsed_seconds, percent, eta_seconds, phase };  // as status.progress
    changed(event.model);
  });
  events.on("request", (event) => refresh(event.model));
  events.on("eviction", (event) => refresh(event.model));
}
