"""The proxy's per-request spans, recorded without the SDK's Span objects and batched on the
event loop.

Each request gets its trace and span ids and its sampling decision from the provider's own
id generator and sampler, as `Tracer.start_span` would; the finished span is handed over
once, as plain values (`RawSpan`). An SDK span takes a lock and validates every attribute it
is given (~20 us of the proxy's core per span). For OTLP/HTTP the values are encoded on the
event loop 64 at a time (otlp.py) and a thread of its own only POSTs the batches; for other
exporters that thread builds the SDK's ReadableSpans. The SDK's BatchSpanProcessor costs
~7 us per span on the calling thread (a getpid() system call, a lock, often a wake-up of its
worker).

Spans of rarer work (a model's start, a swap) still go through the SDK's tracer; they find a
request's span as their parent through `parent_span()`."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from loguru import logger
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from modelberth.otlp import OtlpHttpSpanExporter, encode_raw_spans

Prepared = TypeVar("Prepared")
_RANDOM_TRACE_ID = 0x02  # W3C trace-context level 2 flag, as the SDK sets it
_SAMPLED = int(TraceFlags.SAMPLED)
_ID_BITS = (1 << 64) - 1  # the part of a trace id TraceIdRatioBased decides on
_UNSET = Status()


class Started(NamedTuple):
    """A sampled request span: its ids, and its parent when the client sent one."""

    trace_id: int
    span_id: int
    flags: int
    trace_state: TraceState | None
    parent: SpanContext | None
    sampler_attributes: Mapping[str, AttributeValue]


# A finished span as the event loop hands it over: name, trace and span id, parent (a
# remote context, a span id in the same trace, or None), flags, trace state, kind, start and
# end (ns), attributes, status. The export thread makes the SDK's ReadableSpan of it.
RawSpan = tuple[str, int, int, SpanContext | int | None, int, TraceState | None, SpanKind, int,
                int, Mapping[str, AttributeValue], Status | None]


class SpanRecorder:
    def __init__(self, provider: TracerProvider, exporter: SpanExporter,
                 scope: InstrumentationScope) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self._resource = provider.resource
        self._scope = scope
        self.batcher: SpanBatcher[Any] = self._batcher(exporter)
        # Header names the configured propagators read: a request without any of them has
        # no parent context, and (with a standard sampler) is sampled here by its trace id.
        fields = propagate.get_global_textmap().fields
        self.propagation_headers = frozenset(name.lower().encode("latin-1") for name in fields)
        # With the default propagators (W3C trace context and baggage) the upstream's headers
        # are written here; the client's own baggage and tracestate are forwarded as they
        # came. Other propagators (b3, jaeger) go through propagate.inject.
        self._w3c_only = set(fields) == {"traceparent", "tracestate", "baggage"}
        # Requests without a parent are decided here when the sampler is a standard one:
        # the same comparison of trace-id bits the SDK's samplers make, without objects.
        self._root_bound = _root_bound(provider.sampler) \
            if self._ids.is_trace_id_random() else None
        self._root_flags = _SAMPLED | _RANDOM_TRACE_ID

    def start(self, name: str, kind: SpanKind, headers: list[tuple[bytes, bytes]],
              attributes: Mapping[str, AttributeValue]) -> Started | None:
        """A sampled span for a request with these headers, or None when the sampler leaves
        it out."""
        if self._root_bound is not None and not self._carries_context(headers):
            trace_id = self._ids.generate_trace_id()
            if trace_id & _ID_BITS >= self._root_bound:
                return None
            return Started(trace_id, self._ids.generate_span_id(), self._root_flags, None,
                           None, {})
        context = propagate.extract(headers, getter=_HEADERS)
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self._ids.generate_trace_id()
            random = self._ids.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random = bool(parent.trace_flags & _RANDOM_TRACE_ID)
        result = self._sampler.should_sample(context, trace_id, name, kind, attributes)
        if result.decision is not Decision.RECORD_AND_SAMPLE:
            return None
        flags = _SAMPLED | (_RANDOM_TRACE_ID if random else 0)
        return Started(trace_id, self._ids.generate_span_id(), flags, result.trace_state,
                       parent, result.attributes or {})

    def _carries_context(self, headers: list[tuple[bytes, bytes]]) -> bool:
        carried = self.propagation_headers
        # A plain loop: any() over a generator costs twice as much on every request.
        for key, _ in headers:  # noqa: SIM110
            if key in carried:
                return True
        return False

    def new_span_id(self) -> int:
        return self._ids.generate_span_id()

    def context(self, started: Started, span_id: int | None = None) -> SpanContext:
        return SpanContext(started.trace_id, span_id or started.span_id, is_remote=False,
                           trace_flags=TraceFlags(started.flags),
                           trace_state=started.trace_state)

    def propagation(self, started: Started, span_id: int) -> list[tuple[bytes, bytes]]:
        """The headers that carry span `span_id` of this trace to the upstream."""
        if self._w3c_only:
            parent = f"00-{started.trace_id:032x}-{span_id:016x}-{started.flags:02x}"
            return [(b"traceparent", parent.encode("ascii"))]
        carrier: dict[str, str] = {}
        context = trace.set_span_in_context(parent_span(self.context(started, span_id)))
        propagate.inject(carrier, context=context)
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items()]

    def record(self, name: str, started: Started, span_id: int,
               parent: SpanContext | int | None, kind: SpanKind, start_ns: int, end_ns: int,
               attributes: Mapping[str, AttributeValue], status: Status | None = None) -> None:
        """A finished span of the started trace; `parent` is a span id of the same trace,
        or the remote parent's context."""
        self.batcher.add((name, started.trace_id, span_id, parent, started.flags,
                          started.trace_state, kind, start_ns, end_ns, attributes, status))

    def shutdown(self) -> None:
        self.batcher.shutdown()

    def _batcher(self, exporter: SpanExporter) -> SpanBatcher[Any]:
        max_batch = int(os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") or 512)
        if isinstance(exporter, OtlpHttpSpanExporter) and exporter.sends_encoded:
            # Requests concatenate: their repeated resource_spans simply add up.
            def encode(batch: list[RawSpan]) -> bytes:
                return encode_raw_spans(batch, self._resource, self._scope)

            def send_encoded(parts: list[bytes]) -> object:
                return exporter.send_encoded(b"".join(parts))

            return SpanBatcher(encode, send_encoded, exporter.shutdown, max_batch=max_batch,
                               group=64)

        def keep(batch: list[RawSpan]) -> list[RawSpan]:
            return batch

        def send(batches: list[list[RawSpan]]) -> object:
            return exporter.export([self.readable(raw) for batch in batches for raw in batch])

        return SpanBatcher(keep, send, exporter.shutdown, max_batch=max_batch)

    def readable(self, raw: RawSpan) -> ReadableSpan:
        """The SDK's span for a span handed over as values."""
        name, trace_id, span_id, parent, flags, state, kind, start, end, attributes, status = raw
        trace_flags = TraceFlags(flags)
        if isinstance(parent, int):
            parent = SpanContext(trace_id, parent, False, trace_flags, state)
        return ReadableSpan(
            name=name, context=SpanContext(trace_id, span_id, False, trace_flags, state),
            parent=parent, resource=self._resource, attributes=attributes, kind=kind,
            status=status or _UNSET, start_time=start, end_time=end,
            instrumentation_scope=self._scope)


def _root_bound(sampler: Sampler) -> int | None:
    """The trace-id bound below which a request without a parent is sampled, for the SDK's
    standard samplers (always on/off, trace-id ratio, either parent-based); None for others,
    which are asked every time."""
    root = getattr(sampler, "_root", None) if isinstance(sampler, ParentBased) else sampler
    if root is ALWAYS_ON:
        return 1 << 64
    if root is ALWAYS_OFF:
        return 0
    if isinstance(root, TraceIdRatioBased):
        return root.bound
    return None


class _HeaderGetter(Getter[list[tuple[bytes, bytes]]]):
    """Reads propagation headers straight from the ASGI header list, without a dict."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.encode("latin-1")
        found = [v.decode("latin-1") for k, v in carrier if k.lower() == name]
        return found or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_HEADERS = _HeaderGetter()


def parent_span(context: SpanContext) -> NonRecordingSpan:
    """A stand-in for a recorded span, for `trace.use_span`: children made by the SDK's
    tracer meanwhile take it as their parent."""
    return NonRecordingSpan(context)


class SpanBatcher(Generic[Prepared]):
    """Finished spans collected on the event loop and handed, a batch at a time, to one worker
    thread that sends them.

    Spans are `prepare`d on the event loop in groups of `group`; a batch of prepared groups
    goes to the worker when it holds `max_batch` spans or `delay` seconds after its first
    (OTEL_BSP_MAX_EXPORT_BATCH_SIZE and OTEL_BSP_SCHEDULE_DELAY, as for the SDK's
    processor). With OTLP/HTTP, `prepare` encodes (a group of 64 takes well under a
    millisecond of the loop) and the worker only joins and POSTs: encoding in a second Python
    thread cost as much again in GIL hand-overs on the loop's core. Beyond `max_waiting`
    batches queued (the collector is slow or gone) new ones are dropped and counted."""

    def __init__(self, prepare: Callable[[list[RawSpan]], Prepared],
                 send: Callable[[list[Prepared]], object], close: Callable[[], object],
                 max_batch: int = 512, group: int | None = None, delay: float | None = None,
                 max_waiting: int = 16) -> None:
        self._prepare, self._send, self._close = prepare, send, close
        self._max_batch = max_batch
        self._group = min(group or max_batch, max_batch)
        self._delay = delay if delay is not None else float(
            os.environ.get("OTEL_BSP_SCHEDULE_DELAY") or 5000) / 1000
        self._pending: list[RawSpan] = []
        self._prepared: list[Prepared] = []
        self._count = 0  # spans in _pending and _prepared
        self._timer: asyncio.TimerHandle | None = None
        self._batches: queue.Queue[list[Prepared] | None] = queue.Queue(max_waiting)
        self.dropped = 0
        self._worker = threading.Thread(target=self._send_batches, name="modelberth-spans",
                                        daemon=True)
        self._worker.start()

    def add(self, span: RawSpan) -> None:
        self._pending.append(span)
        self._count += 1
        if len(self._pending) >= self._group:
            self._prepared.append(self._prepare(self._pending))
            self._pending = []
        if self._count >= self._max_batch:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)
            except RuntimeError:  # not on an event loop: nothing would fire the timer
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, count = self._take()
        if not batch:
            return
        try:
            self._batches.put_nowait(batch)
        except queue.Full:
            self.dropped += count
            logger.warning("span export is behind: dropped {} spans ({} so far)", count,
                           self.dropped)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Send what is pending and stop; called once the server has stopped serving."""
        batch, _ = self._take()
        try:
            if batch:
                self._batches.put(batch, timeout=timeout)
            self._batches.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._worker.join(timeout)
        self._close()

    def _take(self) -> tuple[list[Prepared], int]:
        if self._pending:
            self._prepared.append(self._prepare(self._pending))
            self._pending = []
        batch, count = self._prepared, self._count
        self._prepared, self._count = [], 0
        return batch, count

    def _send_batches(self) -> None:
        while (batch := self._batches.get()) is not None:
            try:
                self._send(batch)
            except Exception as exc:  # the exporter logs its own failures; this is a bug's
                logger.debug("span export failed: {}", exc)
