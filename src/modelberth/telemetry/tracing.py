"""The proxy's per-request spans on the event loop: sampling, ids, propagation, and the
hand-over of each finished request.

Each request gets its trace and span ids and its sampling decision from the provider's own
id generator and sampler, as `Tracer.start_span` would, and a traceparent for the upstream.
When it ends it is handed over once, as one `RequestTrace` of plain values (handover.py);
its spans are built and exported in the span export process (export.py), so the loop pays
for an encoding of plain values in groups, not for an SDK span's locks and attribute
validation, nor for the SDK's BatchSpanProcessor on the calling thread.

Spans of rarer work (a model's start, a swap) still go through the SDK's tracer; they find a
request's span as their parent through `parent_span()`."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from loguru import logger
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from modelberth.telemetry.handover import RequestTrace, encode_traces

if TYPE_CHECKING:
    from modelberth.telemetry.export import SpanExportProcess

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")
_RANDOM_TRACE_ID = 0x02  # W3C trace-context level 2 flag, as the SDK sets it
_SAMPLED = int(TraceFlags.SAMPLED)
_ID_BITS = (1 << 64) - 1  # the part of a trace id TraceIdRatioBased decides on
_WARN_EVERY = 10.0  # seconds between warnings about dropped spans
GROUP = 64  # requests encoded and written to the export process at a time


class Started(NamedTuple):
    """A sampled request span: its ids, and its parent when the client sent one."""

    trace_id: int
    span_id: int
    flags: int
    trace_state: str  # the W3C tracestate header value, or ""
    parent_id: int  # the client's span, or 0
    sampler_attributes: dict[str, AttributeValue] | None
    carried: bool  # the request came with propagation headers


class SpanRecorder:
    """Sampling, ids and propagation of request spans on the event loop, and the hand-over of
    each finished request (`RequestTrace`) to the span export process."""

    def __init__(self, provider: TracerProvider, process: SpanExportProcess) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        # Encoded on the loop GROUP at a time and written to the process's pipe there too,
        # as each group fills; the process exports them in batches of
        # OTEL_BSP_MAX_EXPORT_BATCH_SIZE spans, the rest when a batch here ends
        # (OTEL_BSP_SCHEDULE_DELAY after its first request).
        self.batcher: SpanBatcher[RequestTrace, bytes] = SpanBatcher(
            encode_traces, process.send, process.end_batch, process.close, group=GROUP
        )
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
        self._root_bound = root_bound(provider.sampler) if self._ids.is_trace_id_random() else None
        self._root_flags = _SAMPLED | _RANDOM_TRACE_ID

    def start(
        self, name: str, kind: SpanKind, headers: list[tuple[bytes, bytes]], method: str, path: str
    ) -> Started | None:
        """A sampled span for a request with these headers, or None when the sampler leaves
        it out."""
        if self._root_bound is not None and not self._carries_context(headers):
            trace_id = self._ids.generate_trace_id()
            if trace_id & _ID_BITS >= self._root_bound:
                return None
            return Started(
                trace_id, self._ids.generate_span_id(), self._root_flags, "", 0, None, False
            )
        context = propagate.extract(headers, getter=_HEADERS)
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self._ids.generate_trace_id()
            random = self._ids.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random = bool(parent.trace_flags & _RANDOM_TRACE_ID)
        attributes = {
            "gen_ai.operation.name": name,
            "http.request.method": method,
            "url.path": path,
        }
        result = self._sampler.should_sample(context, trace_id, name, kind, attributes)
        if result.decision is not Decision.RECORD_AND_SAMPLE:
            return None
        flags = _SAMPLED | (_RANDOM_TRACE_ID if random else 0)
        state = result.trace_state.to_header() if result.trace_state else ""
        return Started(
            trace_id,
            self._ids.generate_span_id(),
            flags,
            state,
            parent.span_id if parent is not None else 0,
            dict(result.attributes) if result.attributes else None,
            self._carries_context(headers),
        )

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
        return SpanContext(
            started.trace_id,
            span_id or started.span_id,
            is_remote=False,
            trace_flags=TraceFlags(started.flags),
            trace_state=state,
        )

    def propagate(self, started: Started, span_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Put on the upstream request's `headers` what carries span `span_id` of this trace,
        in place of any the client sent."""
        if self._w3c_only:
            injected = [
                (
                    b"traceparent",
                    b"00-%032x-%016x-%02x" % (started.trace_id, span_id, started.flags),
                )
            ]
        else:
            carrier: dict[str, str] = {}
            context = trace.set_span_in_context(parent_span(self.context(started, span_id)))
            propagate.inject(carrier, context=context)
            injected = [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items()
            ]
        if started.carried:
            names = {name for name, _ in injected}
            headers[:] = [(k, v) for k, v in headers if k.lower() not in names]
        headers.extend(injected)

    def hand_over(self, trace: RequestTrace) -> None:
        """A finished request, to be made into spans and exported away from the loop."""
        self.batcher.add(trace)

    def shutdown(self) -> None:
        self.batcher.shutdown()


def root_bound(sampler: Sampler) -> int | None:
    """The trace-id bound below which a request without a parent is sampled, for the SDK's
    standard samplers (those OTEL_TRACES_SAMPLER names; subclasses excluded, as they may
    decide otherwise); None for others, which are asked every time."""
    if sampler is ALWAYS_ON or sampler is DEFAULT_ON:
        return 1 << 64
    if sampler is ALWAYS_OFF or sampler is DEFAULT_OFF:
        return 0
    if type(sampler) is TraceIdRatioBased:
        return sampler.bound
    if type(sampler) is ParentBasedTraceIdRatio:
        rate = _parent_based_rate(sampler)
        if rate is not None:
            return TraceIdRatioBased.get_bound_for_rate(rate)
    return None


# The root of a ParentBasedTraceIdRatio is not public; its description names its rate.
_RATIO_ROOT = re.compile(r"ParentBased\{root:TraceIdRatioBased\{([^{}]+)\},")


def _parent_based_rate(sampler: Sampler) -> float | None:
    """The rate a ParentBasedTraceIdRatio describes itself with, if its description reads
    back exactly (any other format is left to the sampler)."""
    description = _described(sampler)
    found = _RATIO_ROOT.match(description)
    if found is None:
        return None
    try:
        rate = float(found[1])
        again = ParentBasedTraceIdRatio(rate)
    except ValueError:  # not a number, or not a rate
        return None
    return rate if _described(again) == description else None


def _described(sampler: Sampler) -> str:
    return sampler.get_description()


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


class SpanBatcher(Generic[Item, Prepared]):
    """Finished requests gathered on the event loop and sent on a group at a time.

    Each group of `group` items is `prepare`d and handed to `send` as it fills; `send`
    returns False when it cannot take it (the export process is behind, or gone), and those
    items are dropped and counted. `delay` seconds after the first item of a batch
    (OTEL_BSP_SCHEDULE_DELAY, as for the SDK's processor) what is pending goes too and
    `end_batch` is called: the receiver exports what it holds, having sized its exports
    itself meanwhile."""

    def __init__(
        self,
        prepare: Callable[[list[Item]], Prepared],
        send: Callable[[Prepared], bool],
        end_batch: Callable[[], object],
        close: Callable[[], object],
        group: int = GROUP,
        delay: float | None = None,
    ) -> None:
        self._prepare, self._send, self._end_batch, self._close = prepare, send, end_batch, close
        self._group = group
        self._delay = (
            delay
            if delay is not None
            else float(os.environ.get("OTEL_BSP_SCHEDULE_DELAY") or 5000) / 1000
        )
        self._pending: list[Item] = []
        self._count = 0  # items of the batch being gathered, sent already or pending
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0
        self._warned = float("-inf")

    def add(self, item: Item) -> None:
        self._pending.append(item)
        self._count += 1
        if len(self._pending) >= self._group:
            self._send_group()
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)
            except RuntimeError:  # not on an event loop: nothing would fire the timer
                self.flush()

    def flush(self) -> None:
        """End the batch: send what is pending, and have the receiver export it all."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            self._send_group()
        if self._count:
            self._count = 0
            self._end_batch()

    def shutdown(self) -> None:
        """Send what is pending and close; called once the server has stopped serving."""
        self.flush()
        self._close()

    def _send_group(self) -> None:
        group, self._pending = self._pending, []
        try:
            taken = self._send(self._prepare(group))
        except Exception as exc:  # a bug's: sending must not break the request that ended
            logger.error("span export failed: {}", exc)
            taken = False
        if not taken:
            self._drop(len(group))

    def _drop(self, count: int) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:  # a slow collector must not flood the log
            self._warned = now
            logger.warning("span export is behind: {} requests' spans dropped so far", self.dropped)
