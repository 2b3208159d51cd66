"""Anthropic's Messages API (POST /v1/messages) in front of upstreams that speak only OpenAI's
chat completions: pure translation, no I/O. The request goes one way, the answer (whole,
streamed or an error) the other.

Interface (all of it importable from here):

    to_chat_request(body) -> dict       the Messages request as a chat completions request
    from_chat_response(chat, model)     a chat completion as Anthropic's `message` object
    MessagesStream(model)               .feed(upstream bytes) -> bytes, .finish() -> bytes,
                                        .error(status, message) -> bytes, .usage
    error_body(status, message)         Anthropic's error body for an HTTP status
    from_openai_error(body, status)     an upstream's OpenAI-shaped error body, as Anthropic's
    DialectError(status, error_type, message), .body()
                                        raised for a request (or answer) that cannot be
                                        translated; answer `status` with `body()`
    count_tokens_request(body) -> str   the text to /tokenize for /v1/messages/count_tokens
    PING                                Anthropic's `ping` event, a keepalive while loading

`model` is the name the client asked for: Anthropic's answers echo it. Errors in Anthropic's
shape are `{"type": "error", "error": {"type", "message"}}`, the type chosen by the status:
400 invalid_request_error, 401 authentication_error, 402 billing_error, 403 permission_error,
404 not_found_error, 413 request_too_large, 429 rate_limit_error, 500 and other 5xx api_error,
503 and 529 overloaded_error, 504 timeout_error, other 4xx invalid_request_error.

The request. `system` (a string or text blocks) is the system message; each message is one
chat message, except a user turn holding tool_result blocks: those become `tool` messages
(tool_call_id, their text; `is_error` as an "Error: " prefix, as OpenAI has no such flag),
placed first, then a user message with the rest. Text alone is one string (blocks joined by
a blank line), else content parts: images (a base64 source as a data: URL, a url source as
is) are `image_url` parts; images inside a tool result go to that following user message,
as a `tool` message takes only text. Plain-text documents are text; PDFs, files and server
tools (web search...) are refused with a 400. Assistant tool_use blocks are `tool_calls`
(arguments as a JSON string); thinking blocks are dropped. `tools` are functions
(input_schema as parameters); `tool_choice` auto/any/tool/none is auto/required/
{"type": "function", ...}/none, disable_parallel_tool_use is parallel_tool_calls false.
max_tokens, temperature, top_p and top_k (llama.cpp and vLLM take it) carry over,
stop_sequences is `stop`, and `stream` asks for `stream_options.include_usage` too, since
without it the stream reports no usage. metadata, thinking, service_tier and the rest are
ignored. A missing model or max_tokens, a wrong type, an unknown block: DialectError 400.

The answer. The message id is `msg_` and the completion's id. Content is a thinking block
(from `reasoning_content` or `reasoning`, with an empty signature), a text block, then one
tool_use block per tool call (input parsed from the arguments; what is not a JSON object
comes as {"_raw": text}). finish_reason stop is end_turn (stop_sequence only when the
upstream names the sequence, as vLLM does: llama.cpp does not), length is max_tokens,
tool_calls is tool_use (so is a stop that made tool calls), content_filter is refusal.
usage: input_tokens is the prompt without its cached part, which is cache_read_input_tokens
(OpenAI's prompt_tokens_details.cached_tokens, or llama.cpp's timings.cache_n);
cache_creation_input_tokens is 0. An answer without a choice or message: DialectError 502.

The stream. The upstream's SSE bytes may be cut anywhere; what comes out is ready to send:
message_start (empty content, input_tokens as given to MessagesStream or 0), then per text
run, reasoning run or tool call one content block, indexes from 0: content_block_start,
text_delta / thinking_delta / input_json_delta (tool arguments passed on as the fragments
come), content_block_stop; at `data: [DONE]` (or `finish()`, if the upstream ended without
it) message_delta with the stop reason and usage (output_tokens; input_tokens and
cache_read_input_tokens when the upstream reported them; without any report, output_tokens
counts the chunks that carried content, one token each on llama.cpp), then message_stop.
An upstream error mid-stream (`event: error` as modelberth sends, llama.cpp's `error:` line,
or a JSON object with an `error`) becomes an Anthropic `error` event, which ends the stream:
Anthropic's clients raise it. An answer that is not SSE (the upstream's error status) is not
for the stream: translate it with from_openai_error.
"""

from modelberth.proxy.dialects.anthropic_errors import (
    DialectError,
    error_body,
    error_type,
    from_openai_error,
)
from modelberth.proxy.dialects.anthropic_request import count_tokens_request, to_chat_request
from modelberth.proxy.dialects.anthropic_response import Usage, from_chat_response
from modelberth.proxy.dialects.anthropic_stream import PING, MessagesStream

__all__ = [
    "PING",
    "DialectError",
    "MessagesStream",
    "Usage",
    "count_tokens_request",
    "error_body",
    "error_type",
    "from_chat_response",
    "from_openai_error",
    "to_chat_request",
]
