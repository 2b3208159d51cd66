// The live event stream (/api/events), read with fetch, reconnected with backoff. Modules
// subscribe by kind ("state", "eviction", "start_progress", "request") and to "open" (the
// stream (re)connected: refetch whatever may have been missed).

import { open, sse } from "./api.js";

const listeners = new Map();
let statusListener = () => {};
let controller = null;
let retryTimer = null;
let backoff = 1000;
let stopped = true;

export function on(kind, fn) {
  if (!listeners.has(kind)) listeners.set(kind, new Set());
  listeners.get(kind).add(fn);
}

function emit(kind, payload) {
  for (const fn of listeners.get(kind) || []) {
    try { fn(payload); } catch (err) { console.warn("event handler failed", kind, err); }
  }
}

/** fn(state, detail): state is "connecting" | "connected" | "retrying" | "off" | "refused". */
export function onStatus(fn) { statusListener = fn; }

export function start() {
  stopped = false;
  connect();
}

export function stop() {
  stopped = true;
  clearTimeout(retryTimer);
  if (controller) controller.abort();
  controller = null;
  statusListener("off");
}

async function connect() {
  clearTimeout(retryTimer);
  if (controller) controller.abort();
  controller = new AbortController();
  const mine = controller;
  statusListener("connecting");
  let refused = false;
  try {
    const response = await open("/api/events", { signal: mine.signal, accept: "text/event-stream" });
    backoff = 1000;
    statusListener("connected");
    emit("open", null);
    for await (const message of sse(response)) {
      if (message.comment !== undefined) continue;
      let data = null;
      try { data = JSON.parse(message.data); } catch { continue; }
      emit(message.event, data);
    }
  } catch (err) {
    if (mine.signal.aborted) return;
    if (err.status === 401) refused = true;
  }
  if (mine !== controller || stopped) return;
  if (refused) {
    statusListener("refused");
    return;
  }
  const delay = backoff;
  backoff = Math.min(backoff * 2, 30000);
  statusListener("retrying", delay);
  retryTimer = setTimeout(connect, delay);
}
