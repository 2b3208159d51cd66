"""Request spans leave the span export process through the official OTLP exporters, chosen by
the standard OTEL_* variables, and reach a real receiver whole; what the loop hands over
crosses the pipe unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from conftest import wait_for
from modelberth.telemetry.export import SpanExportProcess
from modelberth.telemetry.exporters import span_exporter
from modelberth.telemetry.handover import RequestTrace, decode_traces, encode_traces
from modelberth.telemetry.tracing import SpanRecorder
from otlp_receiver import GrpcReceiver, attributes, exporting_to

REMOTE_TRACE, REMOTE_SPAN = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


def _request(**fields: object) -> RequestTrace:
    values: dict[str, object] = {
        "trace_id": REMOTE_TRACE,
        "span_id": 0x1111,
        "flags": 1,
        "parent_id": REMOTE_SPAN,
        "trace_state": "vendor=x1",
        "sampler_attributes": {"sampler.rule": "a", "n": 3},
        "began_ns": 5,
        "end_ns": 25,
        "operation": "chat",
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "m",
        "requested": "tiny",
        "queue": (6, 5, True),
        "upstream": (0xC11E, 10, "http://127.0.0.1:9/v1/chat"),
        "status": 200,
        "usage": (None, 5, None),
        "error": None,
        **fields,
    }
    return RequestTrace(**values)  # type: ignore[arg-type]


def test_the_span_exporter_follows_the_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    assert type(span_exporter()) is HttpSpanExporter  # the default: http/protobuf
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert type(span_exporter()) is GrpcSpanExporter
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")  # per signal
    assert type(span_exporter()) is HttpSpanExporter


def test_a_group_crosses_the_pipe_as_it_was_handed_over() -> None:
    group = [
        _request(),
        _request(
            parent_id=0,
            trace_state="",
            sampler_attributes=None,
            queue=None,
            upstream=None,
            usage=None,
            error="boom",
        ),
    ]
    assert decode_traces(encode_traces(group)) == group  # 128-bit ids included
    # Text no UTF-8 can carry (a lone surrogate, from an escape in an upstream's JSON) is
    # replaced rather than losing its group.
    odd = _request(error="bad \ud800 text", usage=(1, 2, "m\udfff"))
    assert decode_traces(encode_traces([odd, group[0]])) == [
        _request(error="bad ? text", usage=(1, 2, "m?")),
        group[0],
    ]


@pytest.fixture
def grpc_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[GrpcReceiver]:
    with exporting_to(GrpcReceiver(), "grpc", monkeypatch) as receiver:
        yield receiver


async def test_request_spans_reach_a_grpc_receiver_whole(grpc_receiver: GrpcReceiver) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "modelberth-test"}))
    process = SpanExportProcess(
        provider.resource, InstrumentationScope("modelberth", "1"), "plain", "INFO"
    )
    recorder = SpanRecorder(provider, process)
    try:
        recorder.hand_over(_request())
        recorder.batcher.flush()
        received = grpc_receiver.received
        spans = await asyncio.to_thread(
            wait_for, lambda: len(received.spans) >= 3 and list(received.spans), 15
        )
    finally:
        recorder.shutdown()
    queue, client, server = spans
    assert [span.name for span in spans] == [
        "modelberth.queue",
        "POST /v1/chat/completions",
        "chat tiny",
    ]
    assert {span.trace_id.hex() for span in spans} == {f"{REMOTE_TRACE:032x}"}
    assert {span.trace_state for span in spans} == {"vendor=x1"}
    assert queue.parent_span_id == client.parent_span_id == server.span_id
    assert server.parent_span_id.hex() == f"{REMOTE_SPAN:016x}"
    assert server.flags & SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    assert not client.flags & SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    assert (queue.start_time_unix_nano, queue.end_time_unix_nano) == (6, 11)
    assert attributes(server.attributes) == {
        "gen_ai.operation.name": "chat",
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "sampler.rule": "a",
        "n": 3,
        "gen_ai.request.model": "tiny",
        "modelberth.model": "m",
        "modelberth.cold_start": True,
        "modelberth.queue_ms": 0.0,
        "http.response.status_code": 200,
        "gen_ai.usage.output_tokens": 5,
    }
