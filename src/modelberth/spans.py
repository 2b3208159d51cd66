"""The proxy's per-request spans, recorded without the SDK's Span objects and batched on the
event loop.

Each request gets its trace and span ids and its sampling decision from the provider's own
id generator and sampler, as `Tracer.start_span` would; the finished span is built once, as a
ReadableSpan with all its attributes. An SDK span takes a lock and validates every attribute
it is given (~20 us of the proxy's core per span). Finished spans are collected in a list and
handed to the exporter a batch at a time, on a thread of its own: the SDK's
BatchSpanProcessor costs ~7 us per span on the calling thread (a getpid() system call, a
lock, often a wake-up of its worker).

Spans of rarer work (a model's start, a swap) still go through the SDK's tracer; they find a
request's span as their parent through `parent_span()`."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable, Mapping
from typing import NamedTuple

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
        self.batcher = SpanBatcher(exporter, self._readable)
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
        carried = self.propagation_headers
        if self._root_bound is not None and not any(key in carried for key, _ in headers):
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

    def _readable(self, raw: RawSpan) -> ReadableSpan:
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


class SpanBatcher:
    """Finished spans collected on the event loop, exported a batch at a time by one worker
    thread: when `max_batch` are waiting or `delay` seconds after the first (the SDK's
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE and OTEL_BSP_SCHEDULE_DELAY). Beyond `max_waiting` batches
    queued for export (the collector is slow or gone) new batches are dropped and counted."""

    def __init__(self, exporter: SpanExporter, build: Callable[[RawSpan], ReadableSpan],
                 max_batch: int | None = None, delay: float | None = None,
                 max_waiting: int = 16) -> None:
        self._exporter = exporter
        self._build = build
        self._max_batch = max_batch or int(
            os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") or 512)
        self._delay = delay if delay is not None else float(
            os.environ.get("OTEL_BSP_SCHEDULE_DELAY") or 5000) / 1000
        self._pending: list[RawSpan] = []
        self._timer: asyncio.TimerHandle | None = None
        self._batches: queue.Queue[list[RawSpan] | None] = queue.Queue(max_waiting)
        self.dropped = 0
        self._worker = threading.Thread(target=self._export_batches, name="modelberth-spans",
                                        daemon=True)
        self._worker.start()

    def add(self, span: RawSpan) -> None:
        self._pending.append(span)
        if len(self._pending) >= self._max_batch:
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
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._batches.put_nowait(batch)
        except queue.Full:
            self.dropped += len(batch)
            logger.warning("span export is behind: dropped {} spans ({} so far)", len(batch),
                           self.dropped)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Export what is pending and stop; called once the server has stopped serving."""
        batch, self._pending = self._pending, []
        try:
            if batch:
                self._batches.put(batch, timeout=timeout)
            self._batches.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._worker.join(timeout)
        self._exporter.shutdown()

    def _export_batches(self) -> None:
        while (batch := self._batches.get()) is not None:
            try:
                self._exporter.export([self._build(raw) for raw in batch])
            except Exception as exc:  # the exporter logs its own failures; this is a bug's
                logger.debug("span export failed: {}", exc)
