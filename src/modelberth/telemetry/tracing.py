"""The proxy's per-request spans on the event loop: sampling, ids, propagation, and the
hand-over of each finished request.

Each request gets its trace and span ids and its sampling decision from the provider's own
id generator and sampler, as `Tracer.start_span` would, and a traceparent for the upstream.
When it ends it is handed over once, as one tuple of plain values (request_trace.py); its
spans are built, encoded and exported in the span export process (span_export.py), so the
loop's core pays ~0.5 us a request for pickling instead of ~15 us a span for building and
encoding. An SDK span would take a lock and validate every attribute (~20 us a span), and the
SDK's BatchSpanProcessor costs ~7 us a span on the calling thread.

Spans of rarer work (a model's start, a swap) still go through the SDK's tracer; they find a
request's span as their parent through `parent_span()`."""

from __future__ import annotations

import asyncio
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from loguru import logger
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
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

from modelberth.telemetry.export import SpanExportProcess, export_traces

if TYPE_CHECKING:
    from modelberth.telemetry.handover import RequestTrace

Prepared = TypeVar("Prepared")
_RANDOM_TRACE_ID = 0x02  # W3C trace-context level 2 flag, as the SDK sets it
_SAMPLED = int(TraceFlags.SAMPLED)
_ID_BITS = (1 << 64) - 1  # the part of a trace id TraceIdRatioBased decides on
_WARN_EVERY = 10.0  # seconds between warnings about dropped spans


class Started(NamedTuple):
    """A sampled request span: its ids, and its parent when the client sent one."""

    trace_id: int
    span_id: int
    flags: int
    trace_state: str  # the W3C tracestate header value, or ""
    parent_id: int  # the client's span, or 0
    sampler_attributes: Mapping[str, AttributeValue] | None
    carried: bool  # the request came with propagation headers


# A finished span as values: name, trace and span id, parent (a remote context, a span id in
# the same trace, or None), flags, trace state, kind, start and end (ns), attributes, status.
# Request spans are made of these off the event loop (request_trace.py) and encoded as they
# are (otlp.py) or made into the SDK's ReadableSpans (span_export.readable).
RawSpan = tuple[str, int, int, SpanContext | int | None, int, TraceState | None, SpanKind, int,
                int, Mapping[str, AttributeValue], Status | None]


class SpanRecorder:
    """Sampling, ids and propagation of request spans on the event loop, and the hand-over of
    each finished request (`RequestTrace`) to where its spans are built and exported: the span
    export process, or, given an SDK exporter, a thread of this process."""

    def __init__(self, provider: TracerProvider, exporter: SpanExporter | SpanExportProcess,
                 scope: InstrumentationScope) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self.batcher: SpanBatcher[Any] = self._batcher(exporter, provider.resource, scope)
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
              method: str, path: str) -> Started | None:
        """A sampled span for a request with these headers, or None when the sampler leaves
        it out."""
        if self._root_bound is not None and not self._carries_context(headers):
            trace_id = self._ids.generate_trace_id()
            if trace_id & _ID_BITS >= self._root_bound:
                return None
            return Started(trace_id, self._ids.generate_span_id(), self._root_flags, "", 0,
                           None, False)
        context = propagate.extract(headers, getter=_HEADERS)
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self._ids.generate_trace_id()
            random = self._ids.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random = bool(parent.trace_flags & _RANDOM_TRACE_ID)
        attributes = {"gen_ai.operation.name": name, "http.request.method": method,
                      "url.path": path}
        result = self._sampler.should_sample(context, trace_id, name, kind, attributes)
        if result.decision is not Decision.RECORD_AND_SAMPLE:
            return None
        flags = _SAMPLED | (_RANDOM_TRACE_ID if random else 0)
        state = result.trace_state.to_header() if result.trace_state else ""
        return Started(trace_id, self._ids.generate_span_id(), flags, state,
                       parent.span_id if parent is not None else 0,
                       dict(result.attributes) if result.attributes else None,
                       self._carries_context(headers))

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
        state = TraceState.from_header([started.trace_state]) if started.trace_state else None
        return SpanContext(started.trace_id, span_id or started.span_id, is_remote=False,
                           trace_flags=TraceFlags(started.flags), trace_state=state)

    def propagate(self, started: Started, span_id: int,
                  headers: list[tuple[bytes, bytes]]) -> None:
        """Put on the upstream request's `headers` what carries span `span_id` of this trace,
        in place of any the client sent."""
        if self._w3c_only:
            injected = [(b"traceparent", b"00-%032x-%016x-%02x" % (
                started.trace_id, span_id, started.flags))]
        else:
            carrier: dict[str, str] = {}
            context = trace.set_span_in_context(parent_span(self.context(started, span_id)))
            propagate.inject(carrier, context=context)
            injected = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                        for k, v in carrier.items()]
        if started.carried:
            names = {name for name, _ in injected}
            headers[:] = [(k, v) for k, v in headers if k.lower() not in names]
        headers.extend(injected)

    def hand_over(self, trace: RequestTrace) -> None:
        """A finished request, to be made into spans and exported away from the loop."""
        self.batcher.add(trace)

    def shutdown(self) -> None:
        self.batcher.shutdown()

    def _batcher(self, exporter: SpanExporter | SpanExportProcess, resource: Resource,
                 scope: InstrumentationScope) -> SpanBatcher[Any]:
        max_batch = int(os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") or 512)
        if isinstance(exporter, SpanExportProcess):
            # Pickled on the loop 64 at a time (~0.4 us a request) and written to the
            # process's pipe there too, as each group fills; the process exports them in
            # batches of OTEL_BSP_MAX_EXPORT_BATCH_SIZE spans, the rest when a batch here
            # ends (OTEL_BSP_SCHEDULE_DELAY after its first request).
            def pack(group: list[RequestTrace]) -> bytes:
                return pickle.dumps(group, pickle.HIGHEST_PROTOCOL)

            return SpanBatcher(pack, exporter.send, exporter.close, group=64, worker=False,
                               end_batch=exporter.end_batch)

        def keep(group: list[RequestTrace]) -> list[RequestTrace]:
            return group

        def send(groups: list[list[RequestTrace]]) -> object:
            traces = [trace for group in groups for trace in group]
            return export_traces(exporter, traces, resource, scope, self._ids.generate_span_id)

        return SpanBatcher(keep, send, exporter.shutdown, max_batch=max_batch)


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
    """Finished requests collected on the event loop and handed, a batch at a time, to one
    worker thread that sends them.

    Items are `prepare`d on the event loop in groups of `group`; a batch of prepared groups
    goes to the worker when it holds `max_batch` items or `delay` seconds after its first
    (OTEL_BSP_MAX_EXPORT_BATCH_SIZE and OTEL_BSP_SCHEDULE_DELAY, as for the SDK's
    processor). Beyond `max_waiting` batches queued (the collector is slow or gone) new ones
    are dropped and counted. Without a `worker`, batches are sent where they close; given
    `end_batch` (no worker then), each group is sent as it fills and `end_batch` called
    `delay` seconds after the first item of a batch, whatever `max_batch` says (the span
    export process, which sizes its exports itself: `prepare` pickles, `send` writes to its
    pipe without blocking, or returns False when the process is behind: those items are
    dropped and counted)."""

    def __init__(self, prepare: Callable[[list[Any]], Prepared],
                 send: Callable[[list[Prepared]], object], close: Callable[[], object],
                 max_batch: int = 512, group: int | None = None, delay: float | None = None,
                 max_waiting: int = 16, worker: bool = True,
                 end_batch: Callable[[], object] | None = None) -> None:
        self._prepare, self._send, self._close = prepare, send, close
        self._end_batch = end_batch
        # Streamed groups are exported by the receiver in batches of its own size; the batch
        # here only ends after `delay`, for the receiver to export what it holds.
        self._max_batch = max_batch if end_batch is None else sys.maxsize
        self._group = min(group or max_batch, max_batch)
        self._delay = delay if delay is not None else float(
            os.environ.get("OTEL_BSP_SCHEDULE_DELAY") or 5000) / 1000
        self._pending: list[Any] = []
        self._prepared: list[Prepared] = []
        self._count = 0  # items of the batch being gathered (sent already, with end_batch)
        self._timer: asyncio.TimerHandle | None = None
        self._batches: queue.Queue[list[Prepared] | None] = queue.Queue(max_waiting)
        self.dropped = 0
        self._warned = float("-inf")
        self._worker: threading.Thread | None = None
        if worker and end_batch is None:
            self._worker = threading.Thread(target=self._send_batches, name="modelberth-spans",
                                            daemon=True)
            self._worker.start()

    def add(self, item: Any) -> None:
        self._pending.append(item)
        self._count += 1
        if len(self._pending) >= self._group:
            self._close_group()
        if self._count >= self._max_batch:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)
            except RuntimeError:  # not on an event loop: nothing would fire the timer
                self.flush()

    def _close_group(self) -> None:
        group, self._pending = self._pending, []
        prepared = self._prepare(group)
        if self._end_batch is not None:
            self._send_here([prepared], len(group))
        else:
            self._prepared.append(prepared)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._end_batch is not None:
            self._end_streamed()
            return
        batch, count = self._take()
        if not batch:
            return
        if self._worker is None:
            self._send_here(batch, count)
            return
        try:
            self._batches.put_nowait(batch)
        except queue.Full:
            self._drop(count)

    def _drop(self, count: int) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:  # a slow collector must not flood the log
            self._warned = now
            logger.warning("span export is behind: {} requests' spans dropped so far",
                           self.dropped)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Send what is pending and stop; called once the server has stopped serving."""
        if self._end_batch is not None:
            self._end_streamed()
            self._close()
            return
        batch, count = self._take()
        if self._worker is None:
            if batch:
                self._send_here(batch, count)
            self._close()
            return
        try:
            if batch:
                self._batches.put(batch, timeout=timeout)
            self._batches.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._worker.join(timeout)
        self._close()

    def _end_streamed(self) -> None:
        """Close a batch whose groups went out as they filled."""
        if self._pending:
            self._close_group()
        if self._count:
            self._count = 0
            assert self._end_batch is not None
            self._end_batch()

    def _take(self) -> tuple[list[Prepared], int]:
        if self._pending:
            self._prepared.append(self._prepare(self._pending))
            self._pending = []
        batch, count = self._prepared, self._count
        self._prepared, self._count = [], 0
        return batch, count

    def _send_here(self, batch: list[Prepared], count: int) -> None:
        """Send on the caller's thread; a batch the sender refuses (False) is dropped."""
        try:
            taken = self._send(batch)
        except Exception as exc:  # a bug's: sending must not break the caller
            logger.error("span export failed: {}", exc)
            return
        if taken is False:
            self._drop(count)

    def _send_batches(self) -> None:
        while (batch := self._batches.get()) is not None:
            try:
                self._send(batch)
            except Exception as exc:  # the exporter logs its own failures; this is a bug's
                logger.debug("span export failed: {}", exc)
