"""The lean OTLP span encoder writes what the SDK's encoder writes: both are parsed with the
official protobuf classes and compared."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from modelberth.telemetry.export import readable
from modelberth.telemetry.handover import encoded_request_spans, request_spans
from modelberth.telemetry.otlp import (
    encode_attributes,
    encode_float_attribute,
    encode_raw_span,
    encode_request,
    encode_spans,
)
from modelberth.telemetry.tracing import RawSpan
from otlp_receiver import KeptSpans


def _spans() -> list[ReadableSpan]:
    keep = KeptSpans()
    provider = TracerProvider(resource=Resource.create({"service.name": "modelberth",
                                                        "deployment.count": 3}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("modelberth", "0.1.0")
    other = provider.get_tracer("other-scope")
    remote = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                         trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "x1")]))
    root = tracer.start_span("chat tiny", kind=SpanKind.SERVER,
                             context=trace.set_span_in_context(trace.NonRecordingSpan(remote)),
                             attributes={"gen_ai.request.model": "tiny", "n": -5, "big": 2**40,
                                         "ratio": 0.25, "cold": False, "ok": True,
                                         "tags": ["a", "b"], "ints": [1, 2], "empty": ""})
    child = tracer.start_span("POST /v1/chat/completions", kind=SpanKind.CLIENT,
                              context=trace.set_span_in_context(root),
                              links=[Link(remote, {"why": "retry"})])
    child.add_event("retry", {"attempt": 2})
    child.record_exception(ValueError("boom"))
    child.set_status(Status(StatusCode.ERROR, "upstream failed"))
    child.end()
    root.set_status(Status(StatusCode.OK))
    root.end()
    lone = other.start_span("modelberth.start")
    lone.end()
    return keep.spans


def test_the_lean_encoding_equals_the_sdks() -> None:
    spans = _spans()
    ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    theirs = ExportTraceServiceRequest.FromString(sdk_encode(spans).SerializeToString())
    assert ours == theirs
    assert len(ours.resource_spans[0].scope_spans) == 2
    client = ours.resource_spans[0].scope_spans[0].spans[0]
    assert client.events[1].name == "exception"


def test_no_spans_is_an_empty_request() -> None:
    assert encode_spans([]) == b""


def test_spans_handed_over_as_values_encode_as_their_readable_spans_do() -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "modelberth"}))
    scope = InstrumentationScope("modelberth", "0.1.0")
    remote = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                         trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "x1")]))
    raws: list[RawSpan] = [
        ("chat tiny", remote.trace_id, 0x1111, remote, 1, remote.trace_state, SpanKind.SERVER,
         100, 900, {"gen_ai.request.model": "tiny", "n": 3, "ok": True, "q": 0.5}, None),
        ("POST /v1/chat/completions", remote.trace_id, 0x2222, 0x1111, 1, remote.trace_state,
         SpanKind.CLIENT, 200, 800, {"http.response.status_code": 502},
         Status(StatusCode.ERROR, "upstream failed")),
        ("chat m", 0xABC, 0x3333, None, 3, None, SpanKind.SERVER, 5, 6, {}, None),
    ]
    encoded = encode_request([encode_raw_span(raw) for raw in raws], provider.resource, scope)
    ours = ExportTraceServiceRequest.FromString(encoded)
    made = [readable(raw, provider.resource, scope) for raw in raws]
    theirs = ExportTraceServiceRequest.FromString(sdk_encode(made).SerializeToString())
    assert ours == theirs
    assert encode_request([], provider.resource, scope) == b""


def _counter() -> Callable[[], int]:
    return itertools.count(0x5000).__next__


def test_request_spans_encoded_by_blocks_equal_the_general_encoding() -> None:
    cases = itertools.product(
        [None, (6, 1, False), (6, 2_000_000, False), (6, 5, True)],  # queue
        [None, (0xC11E, 10, "http://127.0.0.1:9/v1/chat")],  # upstream
        ["", "gpt-4o-mini"],  # the model asked for
        [200, 502],
        [None, (3, 1, "m-0"), (None, 5, None), (0, 0, "")],  # usage
        [None, "boom"],  # error
        [(0, ""), (0xB7AD6B7169203331, "vendor=x1")],  # parent and trace state
        [None, {"sampler.rule": "a"}])
    for queue, upstream, requested, status, usage, error, (parent, state), sampler in cases:
        request = (0x0AF7651916CD43DD8448EB211C80319C, 0x1111, 3, parent, state, sampler, 5, 25,
                   "chat", "POST", "/v1/chat/completions", "m", requested, queue, upstream,
                   status, usage, error)
        general = [encode_raw_span(raw) for raw in request_spans(request, _counter())]
        assert encoded_request_spans(request, _counter()) == general, request


def test_a_float_attribute_encodes_as_in_a_mapping() -> None:
    for value in (0.0, 0.001, 2.5, -1e300, 1234567.125):
        expected = encode_attributes({"modelberth.queue_ms": value})
        assert encode_float_attribute("modelberth.queue_ms", value) == expected
