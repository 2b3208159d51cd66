"""What a traced request hands over when it ends, and the spans made of it.

On the event loop a sampled request only takes its ids, puts a traceparent on the upstream
request and, at its end, hands over one `RequestTrace` of plain values: no span objects, no
attribute dicts. Groups of them cross the pipe to the span export process (export.py)
encoded with msgspec, and there `request_spans` makes the SDK's spans of each (server,
upstream client, queue; OTel GenAI and HTTP conventions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

QUEUE_SPAN_AFTER_NS = 1_000_000  # shorter waits are only the root's modelberth.queue_ms
_UNSET = Status()


class RequestTrace(msgspec.Struct, array_like=True, gc=False):
    """One sampled request, as its spans need it. Encoded as an array (no field names on
    the pipe); not tracked by the garbage collector (it holds no cycles), as thousands are
    made a second on the loop."""

    trace_id: int  # the server span's ids and W3C flags
    span_id: int
    flags: int
    parent_id: int  # the client's span (remote), or 0 for a root
    trace_state: str  # the W3C tracestate header value, or ""
    sampler_attributes: dict[str, Any] | None  # what the sampler added
    began_ns: int  # wall-clock nanoseconds
    end_ns: int
    operation: str  # "chat"
    method: str  # "POST"
    path: str  # "/v1/chat/completions"
    model: str  # the model that served it, "" when never known
    requested: str  # the name asked for, "" when never known
    queue: tuple[int, int, bool] | None  # (start_ns, waited_ns, cold) once admitted
    upstream: tuple[int, int, str] | None  # (client span id, start_ns, url) once forwarded
    status: int  # the HTTP status answered
    usage: tuple[int | None, int | None, str | None] | None  # input, output tokens; model
    error: str | None


_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder(list[RequestTrace]).decode


def encode_traces(traces: list[RequestTrace]) -> bytes:
    """A group of requests, for the pipe (JSON: its integers have no size limit, and trace
    ids take 128 bits)."""
    try:
        return _ENCODE(traces)
    except UnicodeEncodeError:  # a lone surrogate, say from an escape in an upstream's JSON
        return _ENCODE(_without_surrogates(msgspec.to_builtins(traces)))


def decode_traces(data: bytes) -> list[RequestTrace]:
    return _DECODE(data)


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode()
    if isinstance(value, list | tuple):
        return [_without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


def request_spans(
    trace: RequestTrace,
    resource: Resource,
    scope: InstrumentationScope,
    new_span_id: Callable[[], int],
) -> list[ReadableSpan]:
    """The request's spans, children first (the root ends last)."""
    trace_id, flags = trace.trace_id, TraceFlags(trace.flags)
    state = TraceState.from_header([trace.trace_state]) if trace.trace_state else None
    root = SpanContext(trace_id, trace.span_id, False, flags, state)
    ending = _ending(trace.status, trace.usage)
    status = _status(trace)

    def span(
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        start: int,
        end: int,
        attributes: dict[str, AttributeValue],
        status: Status,
    ) -> ReadableSpan:
        return ReadableSpan(
            name=name,
            context=context,
            parent=parent,
            resource=resource,
            attributes=attributes,
            kind=kind,
            status=status,
            start_time=start,
            end_time=end,
            instrumentation_scope=scope,
        )

    spans: list[ReadableSpan] = []
    attributes = _head(trace)
    if trace.queue is not None:
        start_ns, waited_ns, cold = trace.queue
        attributes["modelberth.cold_start"] = cold
        attributes["modelberth.queue_ms"] = round(waited_ns / 1e6, 3)
        if cold or waited_ns >= QUEUE_SPAN_AFTER_NS:
            spans.append(
                span(
                    "modelberth.queue",
                    SpanContext(trace_id, new_span_id(), False, flags, state),
                    root,
                    SpanKind.INTERNAL,
                    start_ns,
                    start_ns + waited_ns,
                    {"modelberth.cold_start": cold},
                    _UNSET,
                )
            )
    if trace.upstream is not None:
        client, start_ns, url = trace.upstream
        spans.append(
            span(
                f"POST {trace.path}",
                SpanContext(trace_id, client, False, flags, state),
                root,
                SpanKind.CLIENT,
                start_ns,
                trace.end_ns,
                {"url.full": url, "gen_ai.request.model": trace.model, **ending},
                status,
            )
        )
    attributes.update(ending)
    parent = SpanContext(trace_id, trace.parent_id, True, flags, state) if trace.parent_id else None
    name = f"{trace.operation} {trace.requested}" if trace.requested else trace.operation
    spans.append(
        span(name, root, parent, SpanKind.SERVER, trace.began_ns, trace.end_ns, attributes, status)
    )
    return spans


def _head(trace: RequestTrace) -> dict[str, AttributeValue]:
    """The server span's attributes before its queue time and its ending."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": trace.operation,
        "http.request.method": trace.method,
        "url.path": trace.path,
        **(trace.sampler_attributes or {}),
    }
    if trace.requested:
        attributes["gen_ai.request.model"] = trace.requested
        attributes["modelberth.model"] = trace.model
    return attributes


def _status(trace: RequestTrace) -> Status:
    if trace.error or trace.status >= 500:
        return Status(StatusCode.ERROR, trace.error or str(trace.status))
    return _UNSET


def _ending(
    status: int,
    usage: tuple[int | None, int | None, str | None] | None,
) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {"http.response.status_code": status}
    if usage is None:
        return attributes
    input_tokens, output_tokens, model = usage
    if model:
        attributes["gen_ai.response.model"] = model
    if input_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = input_tokens
    if output_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = output_tokens
    return attributes
