"""One proxied request as telemetry sees it: its metrics, the values its spans are made of
(handover.py, built into spans off the event loop), and the token usage read from the answer
as it streams past, without holding it back."""

from __future__ import annotations

import json
import re
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry.trace import Span, SpanKind

from modelberth.telemetry.activity import Activity, Capture, RequestRecord
from modelberth.telemetry.handover import RequestTrace
from modelberth.telemetry.tracing import Started, parent_span

if TYPE_CHECKING:
    from modelberth.models.model import Model
    from modelberth.telemetry.metrics import Metrics
    from modelberth.telemetry.setup import Telemetry

_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "chat",
    "/api/chat": "chat",
    "/api/generate": "text_completion",
    "/api/embed": "embeddings",
    "/api/embeddings": "embeddings",
}
_TAIL = 16 * 1024  # bytes kept of a stream, or of a large body, to read its usage
# Bodies up to this size are parsed whole for usage; of larger ones (embeddings run to
# megabytes) only the tail is read: parsing them whole would hold the event loop.
_FULL_PARSE = 64 * 1024
_DECODER = json.JSONDecoder()
_USAGE_KEYS = (b'"usage"', b'"timings"', b'"model"')
_CARRY = 32  # bytes of a stream chunk searched again with the next one
_CONTENT = re.compile(rb'"(?:content|text)":\s*"(?!")')  # a stream event carrying text


class _AnswerFields(msgspec.Struct):
    """What usage reading takes from a whole answer; the rest is skipped, not built."""

    model: Any = None
    usage: Any = None
    timings: Any = None


class _TypedUsage(msgspec.Struct):
    prompt_tokens: int | None = None  # OpenAI chat and completions
    completion_tokens: int | None = None
    input_tokens: int | None = None  # Responses, Anthropic
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None  # Anthropic: cached tokens, not in input_tokens
    cache_creation_input_tokens: int | None = None


class _TypedTimings(msgspec.Struct):
    prompt_n: int | None = None
    predicted_n: int | None = None
    predicted_per_second: float | None = None


class _TypedAnswer(msgspec.Struct):
    """The usual shape of those fields, decoded without a dict (cheaper than `_ANSWER`'s
    on every request). An answer of another shape fails validation and is read through
    `_ANSWER`."""

    model: str | None = None
    usage: _TypedUsage | None = None
    timings: _TypedTimings | None = None


_ANSWER = msgspec.json.Decoder(_AnswerFields)
_TYPED_ANSWER = msgspec.json.Decoder(_TypedAnswer)


@dataclass
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None
    tokens_per_second: float | None = None


class UsageReader:
    """Fed every chunk of the answer; reads usage at the end (OpenAI `usage` or llama.cpp
    `timings`), counting stream events when the upstream reports neither."""

    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming
        self.content_events = 0
        self._kept = bytearray()
        self._truncated = False
        self._carry = b""
        self._head = b""  # a long stream's first bytes (Anthropic's message_start has usage)

    def _count_content(self, chunk: bytes) -> None:
        """Count events carrying text, including one whose key is split between chunks: the
        search spans the previous chunk's last bytes, counting only matches that end here."""
        data = self._carry + chunk
        seen = len(self._carry)
        self.content_events += sum(1 for m in _CONTENT.finditer(data) if m.end() > seen)
        self._carry = data[-_CARRY:]

    def feed(self, chunk: bytes) -> None:
        if self.streaming:
            self._count_content(chunk)
        self._kept += chunk
        limit = 2 * _TAIL if self.streaming else _FULL_PARSE
        if len(self._kept) > limit:
            if self.streaming and not self._truncated:
                self._head = bytes(self._kept[:_TAIL])
            del self._kept[:-_TAIL]
            self._truncated = True

    def result(self) -> Usage:
        if not self.streaming:
            return (
                _usage_from([_tail_fields(self._kept)])
                if self._truncated
                else usage_of_answer(bytes(self._kept))
            )
        usage = _usage_from(self._stream_documents())
        if usage.output_tokens is None and self.content_events:
            usage.output_tokens = self.content_events  # about one token per content chunk
        return usage

    def _stream_documents(self) -> list[Any]:
        """The stream's first two events and its last six (where usage is reported)."""
        docs = []
        events = bytes(self._kept).split(b"\n\n")
        if self._head:
            chosen = self._head.split(b"\n\n")[:2] + events[-6:]
        else:
            chosen = events if len(events) <= 8 else events[:2] + events[-6:]
        for event in chosen:
            for line in event.splitlines():
                if line.startswith(b"data: {"):
                    try:
                        docs.append(json.loads(line[6:]))
                    except (ValueError, RecursionError):
                        continue
        return docs


def usage_of_answer(answer: bytes) -> Usage:
    """The usage reported in a whole, non-streamed answer."""
    if len(answer) > _FULL_PARSE:
        return _usage_from([_tail_fields(answer[-_TAIL:])])
    try:
        return _typed_usage(_TYPED_ANSWER.decode(answer))
    except (msgspec.DecodeError, RecursionError):
        pass  # not JSON (then the next decode fails too), or fields of unusual types
    try:
        fields = _ANSWER.decode(answer)
    except (msgspec.DecodeError, RecursionError):
        return Usage()
    return _usage_from([{"model": fields.model, "usage": fields.usage, "timings": fields.timings}])


def _usage_from(documents: list[Any]) -> Usage:
    """Usage from answer documents: OpenAI `usage` (a later document's wins) or llama.cpp
    `timings` (filling what `usage` left out)."""
    usage = Usage()
    for document in documents:
        if not isinstance(document, dict):
            continue
        # A Responses stream's events carry it in `response`, Anthropic's message_start in
        # `message`.
        doc, inner = document, document.get("response") or document.get("message")
        if isinstance(inner, dict) and "usage" in inner and "usage" not in doc:
            doc = inner
        usage.model = doc.get("model") or usage.model
        reported = doc.get("usage")
        if isinstance(reported, dict):
            usage.input_tokens = _reported_input(reported) or usage.input_tokens
            usage.output_tokens = (
                _int(reported.get("completion_tokens"))
                or _int(reported.get("output_tokens"))
                or usage.output_tokens
            )
        timings = doc.get("timings")
        if isinstance(timings, dict):
            usage.input_tokens = usage.input_tokens or _int(timings.get("prompt_n"))
            usage.output_tokens = usage.output_tokens or _int(timings.get("predicted_n"))
            rate = timings.get("predicted_per_second")
            usage.tokens_per_second = float(rate) if isinstance(rate, int | float) else None
    return usage


def _reported_input(reported: dict[str, Any]) -> int | None:
    """`_input_of` for a usage object of any shape."""
    prompt = _int(reported.get("prompt_tokens"))
    if prompt:
        return prompt
    given = _int(reported.get("input_tokens"))
    if given is None:
        return None
    return (
        given
        + (_int(reported.get("cache_read_input_tokens")) or 0)
        + (_int(reported.get("cache_creation_input_tokens")) or 0)
    )


def _input_of(usage: _TypedUsage) -> int | None:
    """Every prompt token the upstream processed: OpenAI's prompt_tokens, or Anthropic's
    input_tokens plus the cached ones it reports apart."""
    if usage.prompt_tokens:
        return usage.prompt_tokens
    if usage.input_tokens is None:
        return None
    return (
        usage.input_tokens
        + (usage.cache_read_input_tokens or 0)
        + (usage.cache_creation_input_tokens or 0)
    )


def _typed_usage(answer: _TypedAnswer) -> Usage:
    """`_usage_from` for an answer of the usual shape."""
    reported, timings = answer.usage, answer.timings
    given, taken = (
        (_input_of(reported), reported.completion_tokens or reported.output_tokens)
        if reported
        else (None, None)
    )
    if timings is None:
        return Usage(given or None, taken or None, answer.model or None)
    return Usage(
        given or timings.prompt_n,
        taken or timings.predicted_n,
        answer.model or None,
        timings.predicted_per_second,
    )


def _tail_fields(tail: bytes | bytearray) -> dict[str, Any]:
    """The last `usage`, `timings` and `model` values found in the tail of a JSON body."""
    text = bytes(tail)
    found: dict[str, Any] = {}
    for key in _USAGE_KEYS:
        at = text.rfind(key)
        colon = text.find(b":", at + len(key)) if at >= 0 else -1
        if colon < 0:
            continue
        rest = text[colon + 1 :].lstrip().decode("utf-8", "replace")
        try:
            found[key.decode().strip('"')] = _DECODER.raw_decode(rest)[0]
        except (ValueError, RecursionError):
            continue
    return found


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class RequestObservation:
    """Spans and metrics of one request. With tracing off, only metrics are recorded.

    A sampled request gathers plain values while it runs and hands them to `SpanRecorder` as
    one `RequestTrace` when it ends; its spans are built from that off the loop."""

    def __init__(
        self,
        telemetry: Telemetry,
        metrics: Metrics,
        activity: Activity,
        scope: MutableMapping[str, Any],
    ) -> None:
        self.metrics = metrics
        self.activity = activity
        self.began = time.perf_counter()
        self.path: str = scope["path"]
        self.method: str = scope["method"]
        self.operation = _OPERATIONS.get(self.path) or self.path.removeprefix("/v1/")
        self.model = ""
        self.requested = ""
        self.queue_seconds = 0.0
        self.cold = False
        self.streamed = False
        self.first_byte: float | None = None
        # Bodies for the activity log, only when capturing is on (else None).
        self.request_body: Capture | None = None
        self.answer_body: Capture | None = None
        self._recorder = telemetry.spans
        self._started: Started | None = None
        if self._recorder is not None:
            # A request the sampler leaves out costs nothing more (no spans, no header).
            self._started = self._recorder.start(
                self.operation, SpanKind.SERVER, scope["headers"], scope["method"], self.path
            )
            if self._started is not None:
                self.began_ns = time.time_ns()
                self._queue: tuple[int, int, bool] | None = None
                self._upstream: tuple[int, int, str] | None = None

    @property
    def span(self) -> Span | None:
        """A stand-in for the request's span (when sampled), for `trace.use_span` around
        work that makes spans of its own, such as a model's start."""
        if self._started is None or self._recorder is None:
            return None
        return parent_span(self._recorder.context(self._started))

    def named(self, model: str, requested: str) -> None:
        self.model = model
        self.requested = requested

    def queued(self, began: float, cold: bool) -> None:
        self.queue_seconds = time.perf_counter() - began
        self.cold = cold
        self.metrics.queue_wait.record(self.queue_seconds, self.model)
        if self._started is not None:
            self._queue = (
                self.began_ns + int((began - self.began) * 1e9),
                int(self.queue_seconds * 1e9),
                cold,
            )

    def upstream_headers(
        self, headers: list[tuple[bytes, bytes]], model: Model, target: str
    ) -> None:
        """Start the upstream call's span and put its traceparent on the forwarded request."""
        started, recorder = self._started, self._recorder
        if started is None or recorder is None:
            return
        client = recorder.new_span_id()
        self._upstream = (client, time.time_ns(), model.base_url + target)
        recorder.propagate(started, client, headers)

    def first_chunk(self) -> None:
        if self.first_byte is None:
            self.first_byte = time.perf_counter()
            self.metrics.ttft.record(self.first_byte - self.began, self.model)

    def attempt_failed(self, status: int, error: str, fallback: str) -> None:
        """The model failed before anything reached the client and `fallback` takes the
        request over (proxy/fallback.py): the failure is counted as this model's, with the
        fallback taken, and kept as a record of its own in the activity ring; the request
        goes on as `fallback`'s (its span too: one span per request, of the model that
        answered)."""
        self.metrics.count_request(self.model, status)
        self.metrics.count_fallback(self.model, fallback)
        self._record_activity(time.perf_counter(), status, None, None, error)
        self.model = fallback
        self.first_byte = None

    def finish(self, status: int, usage: Usage | None = None, error: str | None = None) -> None:
        ended = time.perf_counter()
        self.metrics.count_request(self.model, status)
        self.metrics.duration.record(ended - self.began, self.model)
        rate = self._record_usage(usage) if usage is not None else None
        self._record_activity(ended, status, usage, rate, error)
        started, recorder = self._started, self._recorder
        if started is None or recorder is None:
            return
        # Positional arguments (mypy checks each against its field): keywords cost several
        # times more on every traced request.
        recorder.hand_over(
            RequestTrace(
                started.trace_id,
                started.span_id,
                started.flags,
                started.parent_id,
                started.trace_state,
                started.sampler_attributes,
                self.began_ns,
                time.time_ns(),
                self.operation,
                self.method,
                self.path,
                self.model,
                self.requested,
                self._queue,
                self._upstream,
                status,
                None if usage is None else (usage.input_tokens, usage.output_tokens, usage.model),
                error,
            )
        )

    def _record_activity(
        self, ended: float, status: int, usage: Usage | None, rate: float | None, error: str | None
    ) -> None:
        first = self.first_byte
        self.activity.add(
            RequestRecord(
                time.time() - (ended - self.began),
                self.model,
                self.requested,
                self.method,
                self.path,
                status,
                error,
                self.queue_seconds,
                self.cold,
                None if first is None else first - self.began,
                None if usage is None else usage.input_tokens,
                None if usage is None else usage.output_tokens,
                rate,
                ended - self.began,
                self.streamed,
                self.request_body,
                self.answer_body,
            )
        )

    def _record_usage(self, usage: Usage) -> float | None:
        """Count the tokens; the answer's tokens per second (reported, else measured)."""
        if usage.input_tokens:
            self.metrics.count_tokens(self.model, "input", usage.input_tokens)
        if usage.output_tokens:
            self.metrics.count_tokens(self.model, "output", usage.output_tokens)
        rate = usage.tokens_per_second
        if rate is None and usage.output_tokens:
            generating = time.perf_counter() - (self.first_byte or self.began)
            rate = usage.output_tokens / generating if generating > 0 else None
        if rate:
            self.metrics.tokens_per_second.record(rate, self.model)
        return rate or None
