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

if TYPE_CHECKING:
    from modelberth.spans import RawSpan

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
    state = TraceState.from_header([trace[TRACE_STATE]]) if trace[TRACE_STATE] else None
    ending = _ending(trace[STATUS], trace[USAGE])
    failed = Status(StatusCode.ERROR, trace[ERROR] or str(trace[STATUS])) \
        if trace[ERROR] or trace[STATUS] >= 500 else None
    spans: list[RawSpan] = []
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": trace[OPERATION], "http.request.method": trace[METHOD],
        "url.path": trace[PATH], **(trace[SAMPLER_ATTRIBUTES] or {})}
    name = trace[OPERATION]
    if trace[REQUESTED]:
        name = f"{name} {trace[REQUESTED]}"
        attributes["gen_ai.request.model"] = trace[REQUESTED]
        attributes["modelberth.model"] = trace[MODEL]
    if trace[QUEUE] is not None:
        start_ns, waited_ns, cold = trace[QUEUE]
        attributes["modelberth.cold_start"] = cold
        attributes["modelberth.queue_ms"] = round(waited_ns / 1e6, 3)
        if cold or waited_ns >= QUEUE_SPAN_AFTER_NS:
            spans.append(("modelberth.queue", trace_id, new_span_id(), span_id, flags, state,
                          SpanKind.INTERNAL, start_ns, start_ns + waited_ns,
                          {"modelberth.cold_start": cold}, None))
    if trace[UPSTREAM] is not None:
        client, start_ns, url = trace[UPSTREAM]
        spans.append((f"POST {trace[PATH]}", trace_id, client, span_id, flags, state,
                      SpanKind.CLIENT, start_ns, trace[END_NS],
                      {"url.full": url, "gen_ai.request.model": trace[MODEL], **ending}, failed))
    attributes.update(ending)
    parent: SpanContext | None = None
    if trace[PARENT_ID]:
        parent = SpanContext(trace_id, trace[PARENT_ID], is_remote=True,
                             trace_flags=TraceFlags(flags), trace_state=state)
    spans.append((name, trace_id, span_id, parent, flags, state, SpanKind.SERVER,
                  trace[BEGAN_NS], trace[END_NS], attributes, failed))
    return spans


def _ending(status: int, usage: tuple[int | None, int | None, str | None] | None,
            ) -> Mapping[str, AttributeValue]:
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
