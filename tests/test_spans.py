"""Request spans recorded without SDK Span objects come out as the SDK's tracer would make
them: same sampling, ids, flags and parentage, exported in batches by the same exporter."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    StaticSampler,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode

from conftest import wait_for
from modelberth.spans import RawSpan, SpanBatcher, SpanRecorder, parent_span
from otlp_receiver import KeptSpans

TRACEPARENT = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")


def _recorder(sampler: Any = None) -> tuple[SpanRecorder, KeptSpans, TracerProvider]:
    keep = KeptSpans()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(keep))  # for spans made by the SDK
    return SpanRecorder(provider, keep, InstrumentationScope("modelberth", "1")), keep, provider


def _exported(recorder: SpanRecorder, keep: KeptSpans, count: int) -> list[ReadableSpan]:
    recorder.batcher.flush()
    wait_for(lambda: len(keep.spans) >= count)
    return keep.spans


def test_a_root_span_matches_what_the_sdk_tracer_makes() -> None:
    recorder, keep, provider = _recorder()
    started = recorder.start("chat", SpanKind.SERVER, [(b"host", b"x")], {})
    assert started is not None and started.parent is None
    sdk_span = provider.get_tracer("x").start_span("chat", kind=SpanKind.SERVER)
    assert started.flags == sdk_span.get_span_context().trace_flags  # sampled, random id
    client = recorder.new_span_id()
    recorder.record("POST /v1/chat", started, client, started.span_id, SpanKind.CLIENT, 10, 20,
                    {"http.response.status_code": 502}, Status(StatusCode.ERROR, "boom"))
    recorder.record("chat m", started, started.span_id, None, SpanKind.SERVER, 5, 25, {"a": 1})
    upstream, root = _exported(recorder, keep, 2)
    assert upstream.context is not None and root.context is not None
    assert upstream.context.trace_id == root.context.trace_id == started.trace_id
    assert upstream.context.span_id == client
    assert upstream.parent == root.context
    assert upstream.kind is SpanKind.CLIENT
    assert upstream.status.status_code is StatusCode.ERROR
    assert upstream.status.description == "boom"
    assert root.parent is None
    assert (root.name, root.start_time, root.end_time) == ("chat m", 5, 25)
    assert dict(root.attributes or {}) == {"a": 1}
    assert root.resource is provider.resource
    assert root.instrumentation_scope == InstrumentationScope("modelberth", "1")


def test_a_remote_parent_is_continued() -> None:
    recorder, keep, _ = _recorder()
    started = recorder.start("chat", SpanKind.SERVER, [TRACEPARENT], {})
    assert started is not None and started.parent is not None
    assert started.parent.is_remote
    assert started.trace_id == started.parent.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert started.flags == 1  # no random-id flag the parent did not have
    recorder.record("chat", started, started.span_id, started.parent, SpanKind.SERVER, 1, 2, {})
    (span,) = _exported(recorder, keep, 1)
    assert span.parent == started.parent


def test_the_providers_sampler_decides() -> None:
    recorder, _, _ = _recorder(ALWAYS_OFF)
    assert recorder.start("chat", SpanKind.SERVER, [], {}) is None
    recorder, _, _ = _recorder(ParentBasedTraceIdRatio(0.5))
    decisions = [recorder.start("chat", SpanKind.SERVER, [], {}) is not None
                 for _ in range(4000)]
    assert 1700 < sum(decisions) < 2300
    unsampled = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
    assert recorder.start("chat", SpanKind.SERVER, [unsampled], {}) is None  # parent said no
    assert recorder.start("chat", SpanKind.SERVER, [TRACEPARENT], {}) is not None


def test_a_sampler_of_another_kind_is_asked_for_every_request() -> None:
    asked: list[str] = []

    class Counting(StaticSampler):
        def should_sample(self, *args: Any, **kwargs: Any) -> Any:
            asked.append(kwargs["name"])
            return super().should_sample(*args, **kwargs)

    recorder, _, _ = _recorder(ParentBased(Counting(Decision.RECORD_AND_SAMPLE)))
    assert recorder.start("chat", SpanKind.SERVER, [], {}) is not None
    assert asked == ["chat"]


def test_the_upstream_gets_a_traceparent_naming_the_client_span() -> None:
    recorder, _, _ = _recorder()
    started = recorder.start("chat", SpanKind.SERVER, [TRACEPARENT], {})
    assert started is not None
    assert recorder.propagation(started, 0xDEF) == [
        (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-0000000000000def-01")]


def test_sdk_spans_made_meanwhile_take_the_recorded_span_as_parent() -> None:
    recorder, keep, provider = _recorder()
    started = recorder.start("chat", SpanKind.SERVER, [], {})
    assert started is not None
    with trace.use_span(parent_span(recorder.context(started))):
        provider.get_tracer("x").start_span("modelberth.model.start").end()
    (start,) = keep.spans
    assert start.parent is not None and start.context is not None
    assert start.parent.span_id == started.span_id
    assert start.context.trace_id == started.trace_id


def _raw(name: str) -> RawSpan:
    return (name, 1, 2, None, 1, None, SpanKind.INTERNAL, 0, 1, {}, None)


def _batcher(exporter: SpanExporter, **settings: Any) -> SpanBatcher[list[RawSpan]]:
    def send(batches: list[list[RawSpan]]) -> object:
        return exporter.export([ReadableSpan(name=raw[0]) for batch in batches for raw in batch])

    return SpanBatcher(lambda batch: batch, send, exporter.shutdown, **settings)


async def test_spans_are_exported_in_batches_when_full_or_after_the_delay() -> None:
    keep = KeptSpans()
    batcher = _batcher(keep, max_batch=3, delay=0.05)
    for i in range(3):
        batcher.add(_raw(f"s{i}"))
    await asyncio.to_thread(wait_for, lambda: len(keep.spans) == 3)  # a full batch at once
    batcher.add(_raw("s3"))
    assert len(keep.spans) == 3
    await asyncio.to_thread(wait_for, lambda: len(keep.spans) == 4)  # the delay flushed it
    assert [span.name for span in keep.spans] == ["s0", "s1", "s2", "s3"]
    batcher.add(_raw("last"))
    batcher.shutdown()  # what is pending goes out at shutdown
    assert keep.spans[-1].name == "last"


def test_batches_beyond_the_queue_are_dropped_and_counted() -> None:
    gate = threading.Event()

    class Stuck(KeptSpans):
        def export(self, spans: Any) -> SpanExportResult:
            gate.wait(5)
            return super().export(spans)

    stuck = Stuck()
    batcher = _batcher(stuck, max_batch=1, max_waiting=2)
    for i in range(6):  # one being exported, two waiting, the rest dropped
        batcher.add(_raw(f"s{i}"))
    wait_for(lambda: batcher.dropped >= 3)
    gate.set()
    batcher.shutdown()
    assert len(stuck.spans) + batcher.dropped == 6


async def test_spans_are_prepared_in_groups_on_the_loop_and_sent_per_batch() -> None:
    sent: list[list[str]] = []
    batcher = SpanBatcher(lambda group: ",".join(raw[0] for raw in group), sent.append,
                          lambda: None, max_batch=5, group=2, delay=60)
    for i in range(7):
        batcher.add(_raw(f"s{i}"))
    await asyncio.to_thread(wait_for, lambda: len(sent) == 1)
    assert sent == [["s0,s1", "s2,s3", "s4"]]  # a batch of five, prepared two at a time
    batcher.shutdown()
    assert sent[1] == ["s5,s6"]
