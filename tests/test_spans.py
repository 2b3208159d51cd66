"""Request spans come out as the SDK's tracer would make them: same sampling, ids, flags and
parentage, built off the event loop from what each request hands over, and exported in
batches by the same exporter, in this process or in the span export process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from loguru import logger
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
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
from opentelemetry.trace import SpanKind, StatusCode

from conftest import process_gone, wait_for
from modelberth.telemetry.export import SpanExportProcess, TraceBatch
from modelberth.telemetry.handover import RequestTrace
from modelberth.telemetry.tracing import SpanBatcher, SpanRecorder, Started, parent_span
from otlp_receiver import HttpReceiver, KeptSpans, attributes

TRACEPARENT = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
REMOTE_TRACE, REMOTE_SPAN = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


def _recorder(sampler: Any = None) -> tuple[SpanRecorder, KeptSpans, TracerProvider]:
    keep = KeptSpans()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(keep))  # for spans made by the SDK
    return SpanRecorder(provider, keep, InstrumentationScope("modelberth", "1")), keep, provider


def _start(recorder: SpanRecorder, headers: list[tuple[bytes, bytes]] | None = None,
           ) -> Started | None:
    return recorder.start("chat", SpanKind.SERVER, headers or [], "POST",
                          "/v1/chat/completions")


def _trace(started: Started, **fields: Any) -> RequestTrace:
    """What RequestObservation hands over for a request that went through."""
    values: dict[str, Any] = {
        "began_ns": 5, "end_ns": 25, "operation": "chat", "method": "POST",
        "path": "/v1/chat/completions", "model": "m", "requested": "gpt-4o-mini",
        "queue": (6, 1, False), "upstream": (0xC11E, 10, "http://127.0.0.1:9/v1/chat"),
        "status": 200, "usage": (3, 1, "m-0"), "error": None, **fields}
    return (started.trace_id, started.span_id, started.flags, started.parent_id,
            started.trace_state, started.sampler_attributes, *values.values())


def _exported(recorder: SpanRecorder, keep: KeptSpans, count: int) -> list[ReadableSpan]:
    recorder.batcher.flush()
    wait_for(lambda: len(keep.spans) >= count)
    return keep.spans


def test_a_root_span_matches_what_the_sdk_tracer_makes() -> None:
    recorder, keep, provider = _recorder()
    started = _start(recorder)
    assert started is not None and started.parent_id == 0 and not started.carried
    sdk_span = provider.get_tracer("x").start_span("chat", kind=SpanKind.SERVER)
    assert started.flags == sdk_span.get_span_context().trace_flags  # sampled, random id
    recorder.hand_over(_trace(started, status=502, error="boom", usage=None))
    upstream, root = _exported(recorder, keep, 2)
    assert upstream.context is not None and root.context is not None
    assert upstream.context.trace_id == root.context.trace_id == started.trace_id
    assert upstream.context.span_id == 0xC11E
    assert root.context.span_id == started.span_id
    assert upstream.parent == root.context
    assert upstream.kind is SpanKind.CLIENT and root.kind is SpanKind.SERVER
    assert upstream.status.status_code is root.status.status_code is StatusCode.ERROR
    assert upstream.status.description == "boom"
    assert (upstream.name, upstream.start_time, upstream.end_time) == (
        "POST /v1/chat/completions", 10, 25)
    assert dict(upstream.attributes or {}) == {
        "url.full": "http://127.0.0.1:9/v1/chat", "gen_ai.request.model": "m",
        "http.response.status_code": 502}
    assert root.parent is None
    assert (root.name, root.start_time, root.end_time) == ("chat gpt-4o-mini", 5, 25)
    assert dict(root.attributes or {}) == {
        "gen_ai.operation.name": "chat", "http.request.method": "POST",
        "url.path": "/v1/chat/completions", "gen_ai.request.model": "gpt-4o-mini",
        "modelberth.model": "m", "modelberth.cold_start": False, "modelberth.queue_ms": 0.0,
        "http.response.status_code": 502}
    assert root.resource is provider.resource
    assert root.instrumentation_scope == InstrumentationScope("modelberth", "1")


def test_a_request_that_waited_or_started_its_model_gets_a_queue_span() -> None:
    recorder, keep, _ = _recorder()
    started = _start(recorder)
    assert started is not None
    recorder.hand_over(_trace(started, queue=(6, 2_500_000, False),  # waited 2.5 ms
                              usage=(3, 1, "m-0")))
    recorder.hand_over(_trace(started, queue=(6, 10, True)))  # a cold start, however short
    recorder.hand_over(_trace(started, queue=(6, 999_999, False)))  # just under 1 ms: none
    spans = _exported(recorder, keep, 8)
    queues = [span for span in spans if span.name == "modelberth.queue"]
    assert [(q.start_time, q.end_time) for q in queues] == [(6, 2_500_006), (6, 16)]
    assert [dict(q.attributes or {}) for q in queues] == [
        {"modelberth.cold_start": False}, {"modelberth.cold_start": True}]
    assert all(q.parent is not None and q.parent.span_id == started.span_id for q in queues)
    root = spans[2]
    assert root.kind is SpanKind.SERVER and root.status.status_code is StatusCode.UNSET
    root_attributes = dict(root.attributes or {})
    assert root_attributes["modelberth.queue_ms"] == 2.5
    assert root_attributes["gen_ai.response.model"] == "m-0"
    assert root_attributes["gen_ai.usage.input_tokens"] == 3
    assert root_attributes["gen_ai.usage.output_tokens"] == 1


def test_a_request_refused_before_its_model_is_known_is_one_server_span() -> None:
    recorder, keep, _ = _recorder()
    started = _start(recorder)
    assert started is not None
    recorder.hand_over(_trace(started, model="", requested="", queue=None, upstream=None,
                              status=404, usage=None, error="model 'x' not found"))
    (root,) = _exported(recorder, keep, 1)
    assert root.name == "chat"
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "model 'x' not found"
    assert "gen_ai.request.model" not in (root.attributes or {})


def test_a_remote_parent_is_continued() -> None:
    recorder, keep, _ = _recorder()
    started = _start(recorder, [TRACEPARENT])
    assert started is not None and started.carried
    assert started.parent_id == REMOTE_SPAN
    assert started.trace_id == REMOTE_TRACE
    assert started.flags == 1  # no random-id flag the parent did not have
    recorder.hand_over(_trace(started, upstream=None))
    (span,) = _exported(recorder, keep, 1)
    assert span.parent is not None and span.parent.is_remote
    assert (span.parent.trace_id, span.parent.span_id) == (REMOTE_TRACE, REMOTE_SPAN)


def test_the_providers_sampler_decides() -> None:
    recorder, _, _ = _recorder(ALWAYS_OFF)
    assert _start(recorder) is None
    recorder, _, _ = _recorder(ParentBasedTraceIdRatio(0.5))
    decisions = [_start(recorder) is not None for _ in range(4000)]
    assert 1700 < sum(decisions) < 2300
    unsampled = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
    assert _start(recorder, [unsampled]) is None  # parent said no
    assert _start(recorder, [TRACEPARENT]) is not None


def test_a_sampler_of_another_kind_is_asked_for_every_request() -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    class Counting(StaticSampler):
        def should_sample(self, *args: Any, **kwargs: Any) -> Any:
            asked.append((kwargs["name"], dict(kwargs["attributes"])))
            return super().should_sample(*args, **kwargs)

    recorder, _, _ = _recorder(ParentBased(Counting(Decision.RECORD_AND_SAMPLE)))
    assert _start(recorder) is not None
    assert asked == [("chat", {"gen_ai.operation.name": "chat", "http.request.method": "POST",
                               "url.path": "/v1/chat/completions"})]


def test_the_upstream_gets_a_traceparent_naming_the_client_span() -> None:
    recorder, _, _ = _recorder()
    started = _start(recorder, [TRACEPARENT])
    assert started is not None
    headers = [(b"content-type", b"application/json"), TRACEPARENT]  # the client's, forwarded
    recorder.propagate(started, 0xDEF, headers)
    assert headers == [
        (b"content-type", b"application/json"),
        (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-0000000000000def-01")]
    root = _start(recorder)
    assert root is not None
    headers = []
    recorder.propagate(root, 0xABC, headers)
    assert headers == [(b"traceparent", f"00-{root.trace_id:032x}-{0xABC:016x}-03".encode())]


def test_sdk_spans_made_meanwhile_take_the_recorded_span_as_parent() -> None:
    recorder, keep, provider = _recorder()
    started = _start(recorder)
    assert started is not None
    with trace.use_span(parent_span(recorder.context(started))):
        provider.get_tracer("x").start_span("modelberth.model.start").end()
    (start,) = keep.spans
    assert start.parent is not None and start.context is not None
    assert start.parent.span_id == started.span_id
    assert start.context.trace_id == started.trace_id


def _raw(name: str) -> tuple[str]:
    return (name,)


def _batcher(exporter: SpanExporter, **settings: Any) -> SpanBatcher[list[tuple[str]]]:
    def send(batches: list[list[tuple[str]]]) -> object:
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


async def test_groups_go_out_as_they_fill_and_the_batch_ends_after_the_delay() -> None:
    sent: list[object] = []

    def send(groups: list[str]) -> bool:
        sent.append(groups)
        return groups != ["s2,s3"]  # refused: the sender is behind

    batcher = SpanBatcher(lambda group: ",".join(raw[0] for raw in group), send,
                          lambda: sent.append("closed"), max_batch=2, group=2, delay=0.1,
                          worker=False, end_batch=lambda: sent.append("end"))
    for i in range(7):  # max_batch does not end it: the receiver sizes its exports
        batcher.add(_raw(f"s{i}"))
    assert sent == [["s0,s1"], ["s2,s3"], ["s4,s5"]]
    assert batcher.dropped == 2
    await asyncio.sleep(0.3)
    assert sent[3:] == [["s6"], "end"]  # the timer ends the batch, with what was pending
    batcher.add(_raw("s7"))
    batcher.shutdown()
    assert sent[5:] == [["s7"], "end", "closed"]


def test_spans_are_exported_in_batches_of_the_configured_size() -> None:
    class Exports(KeptSpans):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def export(self, spans: Any) -> SpanExportResult:
            self.sizes.append(len(spans))
            return super().export(spans)

    exports = Exports()
    recorder, _, provider = _recorder()
    started = _start(recorder)
    recorder.shutdown()
    assert started is not None
    batch = TraceBatch(exports, provider.resource, InstrumentationScope("m"),
                       provider.id_generator.generate_span_id, max_spans=5)
    batch.add([_trace(started, requested=f"r{i}") for i in range(4)])  # two spans each
    assert exports.sizes == [5]
    batch.add([_trace(started, requested="r4")])
    assert exports.sizes == [5, 5]
    batch.export()  # the server's batch ended: the rest goes
    assert exports.sizes == [5, 5]  # nothing was left
    batch.add([_trace(started, requested="r5")])
    batch.export()
    assert exports.sizes == [5, 5, 2]
    assert len({span.name for span in exports.spans if span.name.startswith("chat r")}) == 6


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    yield receiver
    receiver.close()


def _process_recorder(restart_after: float = 5.0) -> tuple[SpanRecorder, SpanExportProcess]:
    provider = TracerProvider(resource=Resource.create({"service.name": "modelberth-test"}))
    scope = InstrumentationScope("modelberth", "1")
    process = SpanExportProcess(provider.resource, scope, "plain", "INFO", restart_after)
    return SpanRecorder(provider, process, scope), process


def _ignores(pid: int, sig: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        mask = next(line for line in status if line.startswith("SigIgn:")).split()[1]
    return bool(int(mask, 16) & (1 << (sig - 1)))


async def test_the_export_process_builds_and_exports_the_spans(receiver: HttpReceiver,
                                                              ) -> None:
    recorder, process = _process_recorder()
    child = process.pid
    assert child is not None and not process_gone(child)
    wait_for(lambda: _ignores(child, signal.SIGINT) and _ignores(child, signal.SIGTERM))
    os.kill(child, signal.SIGTERM)  # a service manager's stop: the child stays for the end
    started = _start(recorder, [TRACEPARENT])
    assert started is not None
    recorder.hand_over(_trace(started, requested="first"))
    recorder.batcher.flush()
    await asyncio.to_thread(wait_for, lambda: receiver.received.span_named("chat first"))
    for _ in range(150):  # two groups of 64 go to the child at once, then a partial one
        recorder.hand_over(_trace(started))
    await asyncio.sleep(0.5)
    assert receiver.received.trace_exports == 1  # the child holds them until the batch ends
    recorder.batcher.flush()
    spans = await asyncio.to_thread(
        wait_for, lambda: len(receiver.received.spans) >= 302 and receiver.received.spans)
    assert len(spans) == 302 and receiver.received.trace_exports == 2
    server = next(span for span in spans if span.name == "chat gpt-4o-mini")
    assert server.trace_id.hex() == f"{REMOTE_TRACE:032x}"
    assert server.parent_span_id.hex() == f"{REMOTE_SPAN:016x}"
    assert attributes(server.attributes)["gen_ai.usage.input_tokens"] == 3
    recorder.hand_over(_trace(started, requested="last"))
    recorder.shutdown()  # what is pending is exported before the child exits
    assert process.pid is None and process_gone(child)
    assert receiver.received.span_named("chat last")


def test_no_export_process_is_started_once_closed(receiver: HttpReceiver) -> None:
    _, process = _process_recorder(restart_after=0)
    child = process.pid
    assert child is not None
    process.close()
    assert process_gone(child)
    assert process.send([b"late"]) is False  # a batch closing after shutdown (a timer)
    assert process.pid is None


def test_a_lost_export_process_is_replaced(receiver: HttpReceiver) -> None:
    recorder, process = _process_recorder(restart_after=0)
    first = process.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: process_gone(first))
    started = _start(recorder)
    assert started is not None
    recorder.hand_over(_trace(started, requested="after"))
    recorder.batcher.flush()
    wait_for(lambda: receiver.received.span_named("chat after"))
    second = process.pid
    assert second is not None and second != first
    recorder.shutdown()
    assert process_gone(second)


def test_the_export_process_ends_with_the_server(tmp_path: Any,
                                                 receiver: HttpReceiver) -> None:
    """A server killed outright closes the pipe: the child exports what it has and exits."""
    script = tmp_path / "server.py"
    script.write_text(
        "import sys, time\n"
        "from opentelemetry.sdk.resources import Resource\n"
        "from opentelemetry.sdk.util.instrumentation import InstrumentationScope\n"
        "from modelberth.telemetry.export import SpanExportProcess\n"
        "p = SpanExportProcess(Resource.create({}), InstrumentationScope('m'), 'plain', 'INFO')\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n")
    server = psutil.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        child = int(server.stdout.readline())
        assert not process_gone(child)
        server.kill()
        server.wait(10)
        wait_for(lambda: process_gone(child))
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            server.kill()


def test_a_stalled_export_process_refuses_batches_and_is_killed_at_close(
        receiver: HttpReceiver) -> None:
    provider = TracerProvider()
    process = SpanExportProcess(provider.resource, InstrumentationScope("m"), "plain", "INFO",
                                max_backlog=1 << 20)
    child = process.pid
    assert child is not None
    os.kill(child, signal.SIGSTOP)  # reads nothing from now on
    try:
        group = [b"\0" * (300 << 10)]
        taken = [process.send(group) for _ in range(10)]
        # The pipe (1 MiB) takes three, the backlog three more, then batches are refused.
        assert taken == [True] * 6 + [False] * 4
        process.close(timeout=0.5)
        assert process.pid is None and process_gone(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


async def test_batches_a_sender_refuses_are_dropped_counted_and_warned_of_sparingly() -> None:
    refused: list[int] = []
    warnings: list[str] = []

    def refuse(batch: list[list[tuple[str]]]) -> bool:
        refused.append(sum(len(group) for group in batch))
        return False

    batcher = SpanBatcher(lambda group: group, refuse, lambda: None, max_batch=2,
                          worker=False)
    sink = logger.add(lambda message: warnings.append(message.record["message"]),
                      level="WARNING")
    try:
        for i in range(7):
            batcher.add(_raw(f"s{i}"))
        batcher.shutdown()
    finally:
        logger.remove(sink)
    assert refused == [2, 2, 2, 1]
    assert batcher.dropped == 7
    assert warnings == ["span export is behind: 2 requests' spans dropped so far"]  # one in 10 s
