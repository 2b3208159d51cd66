"""Request spans recorded without SDK Span objects come out as the SDK's tracer would make
them: same sampling, ids, flags and parentage, handed to the same span processor."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from modelberth.spans import SpanRecorder, parent_span


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _recorder(sampler: Any = None) -> tuple[SpanRecorder, _Keep, TracerProvider]:
    keep = _Keep()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    processor = SimpleSpanProcessor(keep)
    provider.add_span_processor(processor)
    return SpanRecorder(provider, processor, InstrumentationScope("modelberth", "1")), keep, \
        provider


def test_a_root_span_matches_what_the_sdk_tracer_makes() -> None:
    recorder, keep, provider = _recorder()
    started = recorder.start("chat", SpanKind.SERVER, None, {"url.path": "/v1/chat"})
    assert started is not None and started.parent is None
    sdk_span = provider.get_tracer("x").start_span("chat", kind=SpanKind.SERVER)
    assert started.context.trace_flags == sdk_span.get_span_context().trace_flags
    assert started.context.trace_id != sdk_span.get_span_context().trace_id  # a new trace
    client = recorder.child(started.context)
    assert client.trace_id == started.context.trace_id
    assert client.span_id != started.context.span_id
    recorder.record("POST /v1/chat", client, started.context, SpanKind.CLIENT, 10, 20,
                    {"http.response.status_code": 502}, Status(StatusCode.ERROR, "boom"))
    recorder.record("chat m", started.context, None, SpanKind.SERVER, 5, 25, {"a": 1})
    upstream, root = keep.spans
    assert upstream.parent == started.context and upstream.kind is SpanKind.CLIENT
    assert upstream.status.status_code is StatusCode.ERROR
    assert upstream.status.description == "boom"
    assert (root.name, root.start_time, root.end_time) == ("chat m", 5, 25)
    assert dict(root.attributes or {}) == {"a": 1}
    assert root.resource is provider.resource
    assert root.instrumentation_scope == InstrumentationScope("modelberth", "1")


def test_a_remote_parent_is_continued() -> None:
    recorder, _, _ = _recorder()
    remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))
    context = trace.set_span_in_context(NonRecordingSpan(remote))
    started = recorder.start("chat", SpanKind.SERVER, context, {})
    assert started is not None
    assert started.parent == remote
    assert started.context.trace_id == 0x1234
    assert started.context.trace_flags == TraceFlags(1)  # no random-id flag it did not have


def test_the_providers_sampler_decides() -> None:
    recorder, _, _ = _recorder(ALWAYS_OFF)
    assert recorder.start("chat", SpanKind.SERVER, None, {}) is None
    recorder, _, _ = _recorder(ParentBased(TraceIdRatioBased(0.5)))
    decisions = [recorder.start("chat", SpanKind.SERVER, None, {}) is not None
                 for _ in range(2000)]
    assert 800 < sum(decisions) < 1200
    unsampled = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(0))
    context = trace.set_span_in_context(NonRecordingSpan(unsampled))
    assert recorder.start("chat", SpanKind.SERVER, context, {}) is None  # parent said no


def test_sdk_spans_made_meanwhile_take_the_recorded_span_as_parent() -> None:
    recorder, keep, provider = _recorder()
    started = recorder.start("chat", SpanKind.SERVER, None, {})
    assert started is not None
    with trace.use_span(parent_span(started.context)):
        provider.get_tracer("x").start_span("modelberth.model.start").end()
    (start,) = keep.spans
    assert start.parent is not None
    assert start.parent.span_id == started.context.span_id
    assert start.context is not None
    assert start.context.trace_id == started.context.trace_id
