"""Request spans come out as the SDK's tracer would make them: same sampling, ids, flags and
parentage, built in the span export process from what each request hands over, and exported
by the official OTLP exporter to a real receiver."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from loguru import logger
from opentelemetry import trace
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

from conftest import process_gone, wait_for
from modelberth.telemetry.export import CHILD_NAME, SpanExportProcess
from modelberth.telemetry.exporters import span_exporter
from modelberth.telemetry.handover import RequestTrace
from modelberth.telemetry.tracing import SpanBatcher, SpanRecorder, Started, parent_span, root_bound
from otlp_receiver import HttpReceiver, attributes, exporting_to

TRACEPARENT = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
REMOTE_TRACE, REMOTE_SPAN = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
RESOURCE = {"service.name": "modelberth-test"}
SCOPE = InstrumentationScope("modelberth", "1")
Recorders = Callable[..., tuple[SpanRecorder, TracerProvider]]


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpReceiver]:
    with exporting_to(HttpReceiver(), "http/protobuf", monkeypatch) as receiver:
        yield receiver


@pytest.fixture
def recorders(receiver: HttpReceiver) -> Iterator[Recorders]:
    """Recorders as setup.py makes them: request spans through a span export process, the
    SDK tracer's own spans through the SDK's processor, both to the receiver."""
    made: list[tuple[SpanRecorder, TracerProvider]] = []

    def make(
        sampler: Sampler | None = None, restart_after: float = 5.0
    ) -> tuple[SpanRecorder, TracerProvider]:
        provider = TracerProvider(resource=Resource.create(RESOURCE), sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(span_exporter()))
        process = SpanExportProcess(provider.resource, SCOPE, "plain", "INFO", restart_after)
        made.append((SpanRecorder(provider, process), provider))
        return made[-1]

    yield make
    for recorder, provider in made:
        recorder.shutdown()
        provider.shutdown()


def _start(
    recorder: SpanRecorder,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Started | None:
    return recorder.start("chat", SpanKind.SERVER, headers or [], "POST", "/v1/chat/completions")


def _trace(started: Started, **fields: Any) -> RequestTrace:
    """What RequestObservation hands over for a request that went through."""
    values: dict[str, Any] = {
        "began_ns": 5,
        "end_ns": 25,
        "operation": "chat",
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "m",
        "requested": "gpt-4o-mini",
        "queue": (6, 1, False),
        "upstream": (0xC11E, 10, "http://127.0.0.1:9/v1/chat"),
        "status": 200,
        "usage": (3, 1, "m-0"),
        "error": None,
        **fields,
    }
    return RequestTrace(
        trace_id=started.trace_id,
        span_id=started.span_id,
        flags=started.flags,
        parent_id=started.parent_id,
        trace_state=started.trace_state,
        sampler_attributes=started.sampler_attributes,
        **values,
    )


def _exported(recorder: SpanRecorder, receiver: HttpReceiver, count: int) -> list[Any]:
    recorder.batcher.flush()
    spans: list[Any] = wait_for(
        lambda: len(receiver.received.spans) >= count and list(receiver.received.spans)
    )
    assert len(spans) == count
    return spans


def _id(value: bytes) -> int:
    return int.from_bytes(value, "big")


def test_a_root_span_matches_what_the_sdk_tracer_makes(
    recorders: Recorders, receiver: HttpReceiver
) -> None:
    recorder, provider = recorders()
    started = _start(recorder)
    assert started is not None and started.parent_id == 0 and not started.carried
    sdk_span = provider.get_tracer("x").start_span("chat", kind=SpanKind.SERVER)
    assert started.flags == sdk_span.get_span_context().trace_flags  # sampled, random id
    recorder.hand_over(_trace(started, status=502, error="boom", usage=None))
    upstream, root = _exported(recorder, receiver, 2)
    assert _id(upstream.trace_id) == _id(root.trace_id) == started.trace_id
    assert _id(upstream.span_id) == 0xC11E
    assert _id(root.span_id) == started.span_id
    assert upstream.parent_span_id == root.span_id
    assert upstream.kind == PbSpan.SPAN_KIND_CLIENT and root.kind == PbSpan.SPAN_KIND_SERVER
    assert upstream.status.code == root.status.code == PbStatus.STATUS_CODE_ERROR
    assert upstream.status.message == "boom"
    assert (upstream.name, upstream.start_time_unix_nano, upstream.end_time_unix_nano) == (
        "POST /v1/chat/completions",
        10,
        25,
    )
    assert attributes(upstream.attributes) == {
        "url.full": "http://127.0.0.1:9/v1/chat",
        "gen_ai.request.model": "m",
        "http.response.status_code": 502,
    }
    assert root.parent_span_id == b""
    assert not root.flags & SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    assert (root.name, root.start_time_unix_nano, root.end_time_unix_nano) == (
        "chat gpt-4o-mini",
        5,
        25,
    )
    assert attributes(root.attributes) == {
        "gen_ai.operation.name": "chat",
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "gen_ai.request.model": "gpt-4o-mini",
        "modelberth.model": "m",
        "modelberth.cold_start": False,
        "modelberth.queue_ms": 0.0,
        "http.response.status_code": 502,
    }
    resource, scope, version = receiver.received.origins[root.span_id]
    assert resource == dict(provider.resource.attributes)  # the server's, whole
    assert (scope, version) == ("modelberth", "1")


def test_a_request_that_waited_or_started_its_model_gets_a_queue_span(
    recorders: Recorders, receiver: HttpReceiver
) -> None:
    recorder, _ = recorders()
    started = _start(recorder)
    assert started is not None
    recorder.hand_over(
        _trace(
            started,
            queue=(6, 2_500_000, False),  # waited 2.5 ms
            usage=(3, 1, "m-0"),
        )
    )
    recorder.hand_over(_trace(started, queue=(6, 10, True)))  # a cold start, however short
    recorder.hand_over(_trace(started, queue=(6, 999_999, False)))  # just under 1 ms: none
    spans = _exported(recorder, receiver, 8)
    queues = [span for span in spans if span.name == "modelberth.queue"]
    assert [(q.start_time_unix_nano, q.end_time_unix_nano) for q in queues] == [
        (6, 2_500_006),
        (6, 16),
    ]
    assert [attributes(q.attributes) for q in queues] == [
        {"modelberth.cold_start": False},
        {"modelberth.cold_start": True},
    ]
    assert all(_id(q.parent_span_id) == started.span_id for q in queues)
    assert all(q.kind == PbSpan.SPAN_KIND_INTERNAL for q in queues)
    root = spans[2]
    assert root.kind == PbSpan.SPAN_KIND_SERVER
    assert root.status.code == PbStatus.STATUS_CODE_UNSET
    root_attributes = attributes(root.attributes)
    assert root_attributes["modelberth.queue_ms"] == 2.5
    assert root_attributes["gen_ai.response.model"] == "m-0"
    assert root_attributes["gen_ai.usage.input_tokens"] == 3
    assert root_attributes["gen_ai.usage.output_tokens"] == 1


def test_a_request_refused_before_its_model_is_known_is_one_server_span(
    recorders: Recorders, receiver: HttpReceiver
) -> None:
    recorder, _ = recorders()
    started = _start(recorder)
    assert started is not None
    recorder.hand_over(
        _trace(
            started,
            model="",
            requested="",
            queue=None,
            upstream=None,
            status=404,
            usage=None,
            error="model 'x' not found",
        )
    )
    (root,) = _exported(recorder, receiver, 1)
    assert root.name == "chat"
    assert root.status.code == PbStatus.STATUS_CODE_ERROR
    assert root.status.message == "model 'x' not found"
    assert "gen_ai.request.model" not in attributes(root.attributes)


def test_a_remote_parent_is_continued(recorders: Recorders, receiver: HttpReceiver) -> None:
    recorder, _ = recorders()
    started = _start(recorder, [TRACEPARENT])
    assert started is not None and started.carried
    assert started.parent_id == REMOTE_SPAN
    assert started.trace_id == REMOTE_TRACE
    assert started.flags == 1  # no random-id flag the parent did not have
    recorder.hand_over(_trace(started, upstream=None))
    (span,) = _exported(recorder, receiver, 1)
    assert span.flags & SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    assert (_id(span.trace_id), _id(span.parent_span_id)) == (REMOTE_TRACE, REMOTE_SPAN)


def test_the_providers_sampler_decides(recorders: Recorders) -> None:
    recorder, _ = recorders(ALWAYS_OFF)
    assert _start(recorder) is None
    recorder, _ = recorders(ParentBasedTraceIdRatio(0.5))
    decisions = [_start(recorder) is not None for _ in range(4000)]
    assert 1700 < sum(decisions) < 2300
    unsampled = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
    assert _start(recorder, [unsampled]) is None  # parent said no
    assert _start(recorder, [TRACEPARENT]) is not None


def test_a_sampler_of_another_kind_is_asked_for_every_request(recorders: Recorders) -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    class Counting(StaticSampler):
        def should_sample(self, *args: Any, **kwargs: Any) -> Any:
            asked.append((kwargs["name"], dict(kwargs["attributes"])))
            return super().should_sample(*args, **kwargs)

    recorder, _ = recorders(ParentBased(Counting(Decision.RECORD_AND_SAMPLE)))
    assert _start(recorder) is not None
    assert asked == [
        (
            "chat",
            {
                "gen_ai.operation.name": "chat",
                "http.request.method": "POST",
                "url.path": "/v1/chat/completions",
            },
        )
    ]


STANDARD: list[tuple[Sampler, int]] = [
    (ALWAYS_ON, 1 << 64),
    (DEFAULT_ON, 1 << 64),
    (ALWAYS_OFF, 0),
    (DEFAULT_OFF, 0),
    (TraceIdRatioBased(0.25), TraceIdRatioBased(0.25).bound),
    *[
        (ParentBasedTraceIdRatio(rate), TraceIdRatioBased(rate).bound)
        for rate in (0.0, 0.001, 0.1, 0.5, 1 / 3, 1.0)
    ],
]


@pytest.mark.parametrize(
    ("sampler", "bound"), STANDARD, ids=[sampler.get_description()[:60] for sampler, _ in STANDARD]
)
def test_standard_samplers_decide_roots_by_trace_id_as_the_sdk_does(
    sampler: Sampler, bound: int
) -> None:
    assert root_bound(sampler) == bound, (
        f"tracing.root_bound no longer recognises {sampler.get_description()!r}: "
        "requests without a parent now ask the sampler one by one (correct, but slower); "
        "if the SDK changed how its samplers describe themselves, update root_bound"
    )
    rng = random.Random(16)
    for _ in range(2000):
        trace_id = rng.getrandbits(128)
        ours = trace_id & ((1 << 64) - 1) < bound
        result = sampler.should_sample(None, trace_id, "chat", SpanKind.SERVER)
        assert ours == (result.decision is Decision.RECORD_AND_SAMPLE), hex(trace_id)


def test_samplers_set_by_the_environment_are_standard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert root_bound(TracerProvider().sampler) == TraceIdRatioBased(0.25).bound
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert root_bound(TracerProvider().sampler) == 0
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    assert root_bound(TracerProvider().sampler) == 1 << 64  # parentbased_always_on


def test_samplers_that_may_decide_otherwise_are_asked() -> None:
    class Ratio(ParentBasedTraceIdRatio):
        pass

    for sampler in (
        Ratio(0.5),
        ParentBased(TraceIdRatioBased(0.5)),
        ParentBased(ALWAYS_ON),
        StaticSampler(Decision.RECORD_AND_SAMPLE),
    ):
        assert root_bound(sampler) is None, sampler.get_description()


def test_the_upstream_gets_a_traceparent_naming_the_client_span(recorders: Recorders) -> None:
    recorder, _ = recorders()
    started = _start(recorder, [TRACEPARENT])
    assert started is not None
    headers = [(b"content-type", b"application/json"), TRACEPARENT]  # the client's, forwarded
    recorder.propagate(started, 0xDEF, headers)
    assert headers == [
        (b"content-type", b"application/json"),
        (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-0000000000000def-01"),
    ]
    root = _start(recorder)
    assert root is not None
    headers = []
    recorder.propagate(root, 0xABC, headers)
    assert headers == [(b"traceparent", f"00-{root.trace_id:032x}-{0xABC:016x}-03".encode())]


def test_sdk_spans_made_meanwhile_take_the_recorded_span_as_parent(
    recorders: Recorders, receiver: HttpReceiver
) -> None:
    recorder, provider = recorders()
    started = _start(recorder)
    assert started is not None
    with trace.use_span(parent_span(recorder.context(started))):
        provider.get_tracer("x").start_span("modelberth.model.start").end()
    (start,) = wait_for(lambda: receiver.received.span_named("modelberth.model.start"))
    assert _id(start.parent_span_id) == started.span_id
    assert _id(start.trace_id) == started.trace_id


def _raw(name: str) -> tuple[str]:
    return (name,)


def _joined(group: list[tuple[str]]) -> str:
    return ",".join(raw[0] for raw in group)


async def test_groups_go_out_as_they_fill_and_the_batch_ends_after_the_delay() -> None:
    sent: list[object] = []

    def send(group: str) -> bool:
        sent.append(group)
        return group != "s2,s3"  # refused: the receiver is behind

    batcher = SpanBatcher(
        _joined, send, lambda: sent.append("end"), lambda: sent.append("closed"), group=2, delay=0.1
    )
    for i in range(7):  # however many: the receiver sizes its exports
        batcher.add(_raw(f"s{i}"))
    assert sent == ["s0,s1", "s2,s3", "s4,s5"]
    assert batcher.dropped == 2
    await asyncio.sleep(0.3)
    assert sent[3:] == ["s6", "end"]  # the timer ends the batch, with what was pending
    batcher.add(_raw("s7"))
    batcher.shutdown()
    assert sent[5:] == ["s7", "end", "closed"]


async def test_batches_a_sender_refuses_are_dropped_counted_and_warned_of_sparingly() -> None:
    refused: list[int] = []
    warnings: list[str] = []

    def refuse(group: list[tuple[str]]) -> bool:
        refused.append(len(group))
        return False

    batcher = SpanBatcher(lambda group: group, refuse, lambda: None, lambda: None, group=2)
    sink = logger.add(lambda message: warnings.append(message.record["message"]), level="WARNING")
    try:
        for i in range(7):
            batcher.add(_raw(f"s{i}"))
        batcher.shutdown()
    finally:
        logger.remove(sink)
    assert refused == [2, 2, 2, 1]
    assert batcher.dropped == 7
    assert warnings == ["span export is behind: 2 requests' spans dropped so far"]  # one in 10 s


def _process_recorder(restart_after: float = 5.0) -> tuple[SpanRecorder, SpanExportProcess]:
    provider = TracerProvider(resource=Resource.create(RESOURCE))
    process = SpanExportProcess(provider.resource, SCOPE, "plain", "INFO", restart_after)
    return SpanRecorder(provider, process), process


def _ignores(pid: int, sig: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        mask = next(line for line in status if line.startswith("SigIgn:")).split()[1]
    return bool(int(mask, 16) & (1 << (sig - 1)))


async def test_the_export_process_builds_and_exports_the_spans(
    receiver: HttpReceiver,
) -> None:
    recorder, process = _process_recorder()
    child = process.pid
    assert child is not None and not process_gone(child)
    assert CHILD_NAME in psutil.Process(child).cmdline()  # for ps and the benchmarks
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
        wait_for, lambda: len(receiver.received.spans) >= 302 and receiver.received.spans
    )
    assert len(spans) == 302 and receiver.received.trace_exports == 2
    server = next(span for span in spans if span.name == "chat gpt-4o-mini")
    assert server.trace_id.hex() == f"{REMOTE_TRACE:032x}"
    assert server.parent_span_id.hex() == f"{REMOTE_SPAN:016x}"
    assert attributes(server.attributes)["gen_ai.usage.input_tokens"] == 3
    recorder.hand_over(_trace(started, requested="last"))
    recorder.shutdown()  # what is pending is exported before the child exits
    assert process.pid is None and process_gone(child)
    assert receiver.received.span_named("chat last")


async def test_the_export_process_exports_in_batches_of_the_configured_size(
    receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "50")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")  # the batch ends when flushed
    recorder, _ = _process_recorder()
    started = _start(recorder)
    assert started is not None
    try:
        for i in range(64):  # one group: 128 spans, two spans a request
            recorder.hand_over(_trace(started, requested=f"r{i}"))
        received = receiver.received
        await asyncio.to_thread(wait_for, lambda: received.export_sizes == [50, 50])
        await asyncio.sleep(0.3)
        assert received.export_sizes == [50, 50]  # the rest waits for the batch to end
        recorder.batcher.flush()
        await asyncio.to_thread(wait_for, lambda: len(received.export_sizes) == 3)
        assert received.export_sizes == [50, 50, 28]
        assert len({span.name for span in received.spans if span.name.startswith("chat r")}) == 64
    finally:
        recorder.shutdown()


def test_no_export_process_is_started_once_closed(receiver: HttpReceiver) -> None:
    _, process = _process_recorder(restart_after=0)
    child = process.pid
    assert child is not None
    process.close()
    assert process_gone(child)
    assert process.send(b"late") is False  # a batch closing after shutdown (a timer)
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


def test_the_export_process_ends_with_the_server(tmp_path: Any, receiver: HttpReceiver) -> None:
    """A server killed outright closes the pipe: the child exports what it has and exits."""
    script = tmp_path / "server.py"
    script.write_text(
        "import sys, time\n"
        "from opentelemetry.sdk.resources import Resource\n"
        "from opentelemetry.sdk.util.instrumentation import InstrumentationScope\n"
        "from modelberth.telemetry.export import SpanExportProcess\n"
        "p = SpanExportProcess(Resource.create({}), InstrumentationScope('m'), 'plain', 'INFO')\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
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
    receiver: HttpReceiver,
) -> None:
    provider = TracerProvider()
    process = SpanExportProcess(
        provider.resource, InstrumentationScope("m"), "plain", "INFO", max_backlog=1 << 20
    )
    child = process.pid
    assert child is not None
    os.kill(child, signal.SIGSTOP)  # reads nothing from now on
    try:
        group = b"\0" * (300 << 10)
        taken = [process.send(group) for _ in range(10)]
        # The pipe (1 MiB) takes three, the backlog three more, then batches are refused.
        assert taken == [True] * 6 + [False] * 4
        process.close(timeout=0.5)
        assert process.pid is None and process_gone(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
