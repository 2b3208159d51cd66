// Playground: streamed chat with any configured model (SSE through fetch; ": loading ..."
// comments shown as progress; TTFT and tokens/s), and a quick embeddings check.

import { call, open, sse } from "./api.js";
import * as store from "./store.js";
import { clear, h, num, seconds } from "./util.js";

let model = null;
let transcript = null;
let prompt = null;
let maxTokens = null;
let stats = null;
let progress = null;
let sendButton = null;
let stopButton = null;
let controller = null;
let history = [];

export function mount(panel) {
  model = h("select", { id: "pg-model", "aria-label": "Model" });
  fill();
  store.onModels((name) => { if (name === null) fill(); });
  maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: "1", max: "4096", value: "64",
    "aria-label": "Max tokens", class: "narrow" });
  transcript = h("div", { class: "transcript", id: "pg-transcript", role: "log", "aria-live": "polite" },
    h("p", { class: "muted empty" }, "Send a message to start a conversation."));
  prompt = h("textarea", { id: "pg-prompt", rows: "3", placeholder: "Message… (Ctrl+Enter to send)",
    "aria-label": "Message" });
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send(); }
  });
  sendButton = h("button", { type: "button", class: "primary", id: "pg-send", onclick: send }, "Send");
  stopButton = h("button", { type: "button", id: "pg-stop", disabled: true,
    onclick: () => controller && controller.abort() }, "Stop");
  stats = h("div", { class: "stats", id: "pg-stats", role: "status" });
  progress = h("div", { class: "progress", id: "pg-progress", role: "status", "aria-live": "polite" });
  const chat = h("section", { class: "card chat" },
    h("div", { class: "toolbar" }, h("h3", {}, "Chat"),
      h("label", { class: "inline" }, "Model ", model),
      h("label", { class: "inline" }, "Max tokens ", maxTokens),
      h("span", { class: "spacer" }),
      h("button", { type: "button", onclick: reset }, "New chat")),
    transcript, progress,
    h("div", { class: "composer" }, prompt, h("div", { class: "composer-buttons" }, sendButton, stopButton)),
    stats);
  panel.append(h("div", { class: "toolbar" }, h("h2", {}, "Playground")), chat, embeddings());
}

function fill() {
  const value = model.value;
  clear(model).append(...store.ids.map((id) => h("option", { value: id }, id)));
  if (store.ids.includes(value)) model.value = value;
}

function reset() {
  if (controller) controller.abort();
  history = [];
  clear(transcript).append(h("p", { class: "muted empty" }, "Send a message to start a conversation."));
  clear(stats);
  progress.textContent = "";
}

function bubble(role, text) {
  const content = h("div", { class: "content" }, text);
  const el = h("div", { class: `message ${role}` }, h("div", { class: "role" }, role), content);
  const empty = transcript.querySelector(".empty");
  if (empty) empty.remove();
  transcript.append(el);
  transcript.scrollTop = transcript.scrollHeight;
  return content;
}

async function send() {
  const text = prompt.value.trim();
  if (!text || controller || !model.value) return;
  prompt.value = "";
  history.push({ role: "user", content: text });
  bubble("user", text);
  const answer = bubble("assistant", "");
  answer.classList.add("streaming");
  clear(stats);
  progress.textContent = "";
  controller = new AbortController();
  sendButton.disabled = true;
  stopButton.disabled = false;
  const started = performance.now();
  let firstToken = null;
  let chunks = 0;
  let reply = "";
  let timings = null;
  let usage = null;
  try {
    const response = await open("/v1/chat/completions", {
      method: "POST", signal: controller.signal, accept: "text/event-stream",
      body: { model: model.value, messages: history, stream: true,
        max_tokens: Number(maxTokens.value) || 64 },
    });
    for await (const message of sse(response)) {
      if (message.comment !== undefined) {
        if (message.comment) progress.textContent = `⏳ ${message.comment}`;
        continue;
      }
      if (message.data === "[DONE]") break;
      let data;
      try { data = JSON.parse(message.data); } catch { continue; }
      if (message.event === "error" || data.error) {
        throw new Error((data.error && data.error.message) || "the stream ended with an error");
      }
      if (data.timings) timings = data.timings;
      if (data.usage) usage = data.usage;
      const delta = data.choices && data.choices[0] && data.choices[0].delta;
      const piece = delta && (delta.content || delta.reasoning_content);
      if (!piece) continue;
      if (firstToken === null) {
        firstToken = performance.now();
        progress.textContent = "";
      }
      chunks += 1;
      reply += piece;
      answer.textContent = reply;
      transcript.scrollTop = transcript.scrollHeight;
      showStats(started, firstToken, chunks, timings, false);
    }
    history.push({ role: "assistant", content: reply });
  } catch (err) {
    if (err.name === "AbortError") {
      answer.append(h("span", { class: "muted" }, " [stopped]"));
      if (reply) history.push({ role: "assistant", content: reply });
    } else {
      answer.append(h("span", { class: "error-text" }, ` ${err.message}`));
      history.pop();
    }
  } finally {
    answer.classList.remove("streaming");
    progress.textContent = "";
    controller = null;
    sendButton.disabled = false;
    stopButton.disabled = true;
    if (firstToken !== null) showStats(started, firstToken, usage ? usage.completion_tokens : chunks, timings, true);
    store.loadModels().catch(() => {});
  }
}

function showStats(started, firstToken, tokens, timings, done) {
  const now = performance.now();
  const ttft = (firstToken - started) / 1000;
  const generating = (now - firstToken) / 1000;
  let speed = tokens > 1 && generating > 0 ? (tokens - 1) / generating : null;
  if (done && timings && timings.predicted_per_second) speed = timings.predicted_per_second;
  clear(stats).append(
    h("span", { class: "stat ttft" }, h("span", { class: "muted" }, "TTFT "), seconds(ttft)),
    h("span", { class: "stat speed" }, h("span", { class: "muted" }, "tokens/s "), speed ? num(speed) : "–"),
    h("span", { class: "stat tokens" }, h("span", { class: "muted" }, "tokens "), String(tokens)),
    h("span", { class: "stat total" }, h("span", { class: "muted" }, done ? "total " : "elapsed "),
      seconds((now - started) / 1000)));
}

function embeddings() {
  const input = h("input", { id: "emb-input", type: "text", value: "hello world",
    "aria-label": "Text to embed" });
  const target = h("select", { id: "emb-model", "aria-label": "Embedding model" });
  const fillTarget = () => {
    const value = target.value;
    clear(target).append(...store.ids.map((id) => h("option", { value: id }, id)));
    if (store.ids.includes(value)) target.value = value;
  };
  fillTarget();
  store.onModels((name) => { if (name === null) fillTarget(); });
  const result = h("div", { class: "embedding-result", id: "emb-result", role: "status" });
  const run = async () => {
    clear(result).append(h("span", { class: "muted" }, "embedding…"));
    const started = performance.now();
    try {
      const data = await call("/v1/embeddings", { method: "POST", body: { model: target.value, input: input.value } });
      const vector = data.data && data.data[0] && data.data[0].embedding;
      if (!Array.isArray(vector)) throw new Error("no embedding in the answer");
      clear(result).append(
        h("span", { class: "stat" }, h("span", { class: "muted" }, "dimension "), h("strong", { class: "dimension" }, String(vector.length))),
        h("span", { class: "stat" }, h("span", { class: "muted" }, "time "), seconds((performance.now() - started) / 1000)),
        h("code", { class: "vector" }, `[${vector.slice(0, 8).map((v) => v.toFixed(4)).join(", ")}${vector.length > 8 ? ", …" : ""}]`));
    } catch (err) {
      clear(result).append(h("span", { class: "error-text" }, err.message));
    }
  };
  const button = h("button", { type: "button", id: "emb-run", onclick: run }, "Embed");
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") run(); });
  return h("section", { class: "card" },
    h("div", { class: "toolbar" }, h("h3", {}, "Embeddings"),
      h("label", { class: "inline" }, "Model ", target)),
    h("div", { class: "composer" }, input, button), result);
}
