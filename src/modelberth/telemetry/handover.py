"""What a traced request hands over when it ends, and the spans made of it.

On the event loop a sampled request only takes its ids, puts a traceparent on the upstream
request and, at its end, hands over one flat tuple of plain values (`RequestTrace`): no span
objects, no attribute dicts. The spans (server, upstream client, queue; OTel GenAI and HTTP
conventions) are built from it by `request_spans`, away from the loop: in the span export
process (span_export.py), or on the export thread when spans stay in-process."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from modelberth.telemetry.otlp import (
    encode_attributes,
    encode_float_attribute,
    encode_raw_span,
    encode_span,
)

if TYPE_CHECKING:
    from modelberth.telemetry.tracing import RawSpan

# A plain tuple, not a NamedTuple: it is built on every traced request and pickled in
# groups, and a class costs at both. Fields, by position:
TRACE_ID, SPAN_ID, FLAGS, PARENT_ID, TRACE_STATE, SAMPLER_ATTRIBUTES = range(6)
BEGAN_NS, END_NS, OPERATION, METHOD, PATH, MODEL, REQUESTED = range(6, 13)
QUEUE, UPSTREAM, STATUS, USAGE, ERROR = range(13, 18)
# trace_id, span_id, flags: the server span's ids and W3C flags.
# parent_id: the client's span (remote), or 0 for a root.
# trace_state: the W3C tracestate header value, or "".
# sampler_attributes: what the sampler added, or None.
# began_ns, end_ns: wall-clock nanoseconds.
# operation, method, path: "chat", "POST", "/v1/chat/completions".
# model, requested: the model that served it and the name asked for ("" when never known).
# queue: (start_ns, duration_ns, cold) once admitted, or None.
# upstream: (client_span_id, start_ns, url) once forwarded, or None.
# status: the HTTP status answered; usage: (input, output, model) or None; error: text or None.
RequestTrace = tuple[Any, ...]

QUEUE_SPAN_AFTER_NS = 1_000_000  # shorter waits are only the root's modelberth.queue_ms


def request_spans(trace: RequestTrace, new_span_id: Callable[[], int]) -> list[RawSpan]:
    """The request's spans, children first (the root ends last)."""
    trace_id, span_id, flags = trace[TRACE_ID], trace[SPAN_ID], trace[FLAGS]
    state = _state(trace)
    ending = _ending(trace[STATUS], trace[USAGE])
    failed = _failed(trace)
    spans: list[RawSpan] = []
    queue = trace[QUEUE]
    attributes = _head(trace[OPERATION], trace[METHOD], trace[PATH], trace[SAMPLER_ATTRIBUTES],
                       trace[REQUESTED], trace[MODEL], None if queue is None else queue[2])
    if queue is not None:
        start_ns, waited_ns, cold = queue
        attributes["modelberth.queue_ms"] = _queue_ms(waited_ns)
        if cold or waited_ns >= QUEUE_SPAN_AFTER_NS:
            spans.append(("modelberth.queue", trace_id, new_span_id(), span_id, flags, state,
                          SpanKind.INTERNAL, start_ns, start_ns + waited_ns,
                          {"modelberth.cold_start": cold}, None))
    if trace[UPSTREAM] is not None:
        client, start_ns, url = trace[UPSTREAM]
        spans.append((f"POST {trace[PATH]}", trace_id, client, span_id, flags, state,
                      SpanKind.CLIENT, start_ns, trace[END_NS],
                      {**_client(url, trace[MODEL]), **ending}, failed))
    attributes.update(ending)
    spans.append((_name(trace[OPERATION], trace[REQUESTED]), trace_id, span_id,
                  _parent(trace, state), flags, state, SpanKind.SERVER, trace[BEGAN_NS],
                  trace[END_NS], attributes, failed))
    return spans


def encoded_request_spans(trace: RequestTrace, new_span_id: Callable[[], int]) -> list[bytes]:
    """`request_spans` encoded for OTLP (`otlp.encode_raw_span` of each), in about half the
    time: the attributes that repeat from request to request (route, model, status, token
    counts) are encoded once per combination, as blocks."""
    if trace[SAMPLER_ATTRIBUTES]:  # a custom sampler's attributes: the general way
        return [encode_raw_span(raw) for raw in request_spans(trace, new_span_id)]
    trace_id, span_id = trace[TRACE_ID], trace[SPAN_ID]
    state = _state(trace)
    failed = _failed(trace)
    ending = _block(("end", trace[STATUS], trace[USAGE]), _ending)
    spans: list[bytes] = []
    queue = trace[QUEUE]
    head = _block(("head", trace[OPERATION], trace[METHOD], trace[PATH], None,
                   trace[REQUESTED], trace[MODEL], None if queue is None else queue[2]), _head)
    if queue is not None:
        start_ns, waited_ns, cold = queue
        head += encode_float_attribute("modelberth.queue_ms", _queue_ms(waited_ns))
        if cold or waited_ns >= QUEUE_SPAN_AFTER_NS:
            spans.append(encode_span(
                "modelberth.queue", trace_id, new_span_id(), span_id, state, SpanKind.INTERNAL,
                start_ns, start_ns + waited_ns, _block(("queue", cold), _queue_span), None))
    if trace[UPSTREAM] is not None:
        client, start_ns, url = trace[UPSTREAM]
        spans.append(encode_span(
            f"POST {trace[PATH]}", trace_id, client, span_id, state, SpanKind.CLIENT, start_ns,
            trace[END_NS], _block(("client", url, trace[MODEL]), _client) + ending, failed))
    spans.append(encode_span(
        _name(trace[OPERATION], trace[REQUESTED]), trace_id, span_id, _parent(trace, state), state,
        SpanKind.SERVER, trace[BEGAN_NS], trace[END_NS], head + ending, failed))
    return spans


_BLOCKS: dict[tuple[Any, ...], bytes] = {}
_MAX_BLOCKS = 4096


def _block(key: tuple[Any, ...], attributes: Callable[..., Mapping[str, AttributeValue]],
           ) -> bytes:
    """The encoded attributes `attributes(*key[1:])` makes, once per key. The key's first
    item names the block; each position holds one type (True and 1 never meet)."""
    encoded = _BLOCKS.get(key)
    if encoded is None:
        if len(_BLOCKS) >= _MAX_BLOCKS:
            _BLOCKS.clear()
        encoded = _BLOCKS[key] = encode_attributes(attributes(*key[1:]))
    return encoded


def _head(operation: str, method: str, path: str,
          sampler_attributes: Mapping[str, AttributeValue] | None, requested: str, model: str,
          cold: bool | None) -> dict[str, AttributeValue]:
    """The server span's attributes before its queue time and its ending."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": operation, "http.request.method": method, "url.path": path,
        **(sampler_attributes or {})}
    if requested:
        attributes["gen_ai.request.model"] = requested
        attributes["modelberth.model"] = model
    if cold is not None:
        attributes["modelberth.cold_start"] = cold
    return attributes


def _client(url: str, model: str) -> dict[str, AttributeValue]:
    return {"url.full": url, "gen_ai.request.model": model}


def _queue_span(cold: bool) -> dict[str, AttributeValue]:
    return {"modelberth.cold_start": cold}


def _queue_ms(waited_ns: int) -> float:
    return round(waited_ns / 1e6, 3)


def _name(operation: str, requested: str) -> str:
    return f"{operation} {requested}" if requested else operation


def _state(trace: RequestTrace) -> TraceState | None:
    return TraceState.from_header([trace[TRACE_STATE]]) if trace[TRACE_STATE] else None


def _failed(trace: RequestTrace) -> Status | None:
    if trace[ERROR] or trace[STATUS] >= 500:
        return Status(StatusCode.ERROR, trace[ERROR] or str(trace[STATUS]))
    return None


def _parent(trace: RequestTrace, state: TraceState | None) -> SpanContext | None:
    """The client's span, when the request came with one (`state`: the trace's)."""
    if not trace[PARENT_ID]:
        return None
    return SpanContext(trace[TRACE_ID], trace[PARENT_ID], is_remote=True,
                       trace_flags=TraceFlags(trace[FLAGS]), trace_state=state)


def _ending(status: int, usage: tuple[int | None, int | None, str | None] | None,
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
