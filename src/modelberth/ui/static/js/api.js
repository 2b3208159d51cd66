// Talking to modelberth: the key (sessionStorage, sent as a Bearer header, no cookies),
// JSON calls, NDJSON streams and server-sent events read through fetch (EventSource cannot
// send a header).

const KEY = "modelberth.key";

export function getKey() {
  try { return sessionStorage.getItem(KEY) || ""; } catch { return ""; }
}

export function setKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY, key);
    else sessionStorage.removeItem(KEY);
  } catch { /* storage disabled: the key lives as long as the page */ }
  memoryKey = key;
}

let memoryKey = getKey();

export function headers(extra) {
  const out = { Accept: "application/json", ...(extra || {}) };
  if (memoryKey) out.Authorization = `Bearer ${memoryKey}`;
  return out;
}

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function messageOf(status, body) {
  if (body && body.error && body.error.message) return body.error.message;
  return `HTTP ${status}`;
}

/** fetch with the key, no cookies and no cache; a network failure is an ApiError(0). */
async function send(path, { method = "GET", body, signal, accept } = {}) {
  try {
    return await fetch(path, {
      method,
      headers: headers({
        ...(accept ? { Accept: accept } : {}),
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      }),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: "omit",
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `network error: ${err.message}`, null);
  }
}

/** GET/POST a JSON endpoint; resolves to the parsed body, rejects with ApiError. */
export async function call(path, { method = "GET", body, signal } = {}) {
  const response = await send(path, { method, body, signal });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    if (response.status === 401 && onUnauthorized) onUnauthorized();
    throw new ApiError(response.status, messageOf(response.status, data), data);
  }
  return data;
}

let onUnauthorized = null;
export function whenUnauthorized(fn) { onUnauthorized = fn; }

/** Open a streaming GET/POST; returns the Response (ok) or throws ApiError. */
export async function open(path, { method = "GET", body, signal, accept } = {}) {
  const response = await send(path, { method, body, signal, accept: accept || "*/*" });
  if (!response.ok) {
    let data = null;
    try { data = JSON.parse(await response.text()); } catch { data = null; }
    throw new ApiError(response.status, messageOf(response.status, data), data);
  }
  return response;
}

/** Yields the text lines of a streamed body as they arrive. */
export async function* lines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        yield line;
      }
    }
    buffer += decoder.decode();
    if (buffer) yield buffer;
  } finally {
    reader.releaseLock();
  }
}

/** Yields server-sent events {event, data, comment} from a streamed body. A comment line
 * (": text") is yielded at once as {comment}; fields end at a blank line. */
export async function* sse(response) {
  let event = "";
  let data = [];
  for await (const line of lines(response)) {
    if (line === "") {
      if (data.length || event) yield { event: event || "message", data: data.join("\n") };
      event = "";
      data = [];
    } else if (line.startsWith(":")) {
      yield { comment: line.slice(1).trim() };
    } else {
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
  }
  if (data.length) yield { event: event || "message", data: data.join("\n") };
}

/** Yields the parsed objects of an NDJSON stream (bad lines are skipped). */
export async function* ndjson(response) {
  for await (const line of lines(response)) {
    if (!line.trim()) continue;
    try { yield JSON.parse(line); } catch { /* a partial or foreign line */ }
  }
}
