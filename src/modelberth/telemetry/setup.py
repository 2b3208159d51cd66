"""Telemetry set-up: OpenTelemetry traces, metrics and logs over OTLP (exporters.py), the
span export process for request spans, and the Prometheus registry behind /metrics. Logging
itself is logs.py."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger
from opentelemetry import trace
from opentelemetry._logs import Logger as OtelLogger
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Metric,
    MetricExporter,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from modelberth import __version__
from modelberth.telemetry.export import SpanExportProcess
from modelberth.telemetry.tracing import SpanRecorder

if TYPE_CHECKING:
    from loguru import Message, Record

from modelberth.telemetry import logs
from modelberth.telemetry.exporters import enabled, log_exporter, metric_exporter, span_exporter


@dataclass
class Telemetry:
    """The providers for one server. Tracing and OTLP export are on only when an OTLP endpoint
    is configured with the standard OTEL_EXPORTER_OTLP_* variables; Prometheus always is."""

    tracer: Tracer
    meter: Meter
    prometheus: CollectorRegistry
    spans: SpanRecorder | None = None  # the proxy's request spans, when tracing
    _shutdown: list[Callable[[], object]] = field(default_factory=list)
    # Metrics aggregated outside the SDK (the request-path histograms), added at collection.
    metric_sources: list[MetricSource] = field(default_factory=list)

    def shutdown(self) -> None:
        for close in self._shutdown:
            try:
                close()
            except Exception as exc:  # exporting at exit must not block it
                logger.debug("telemetry shutdown: {}", exc)


MetricSource = Callable[[], list[Metric]]


def _with_sources(data: MetricsData | None, sources: list[MetricSource]) -> MetricsData | None:
    """The SDK's collection plus the metrics from `sources`, under modelberth's own scope."""
    extra = [metric for read in list(sources) for metric in read()]
    if data is None or not data.resource_metrics or not extra:
        return data
    first, *rest = data.resource_metrics
    scopes = list(first.scope_metrics)
    for i, scoped in enumerate(scopes):
        if scoped.scope.name == "modelberth":
            scopes[i] = ScopeMetrics(scoped.scope, [*scoped.metrics, *extra], scoped.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(InstrumentationScope("modelberth", __version__), extra, ""))
    return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *rest])


class _WithSources(MetricReader):
    """A reader that adds the histograms aggregated outside the SDK (metric sources) to what
    the SDK collected, before its exporter sees them.

    The one use of a private SDK method: the SDK has no public hook between a collection and
    a reader's export. tests/test_telemetry.py fails, saying so, if the SDK changes it."""

    _sources: list[MetricSource]

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        super()._receive_metrics(  # type: ignore[safe-super]
            _with_sources(metrics_data, self._sources),  # type: ignore[arg-type]
            timeout_millis,
            **kwargs,
        )


class _PrometheusReader(_WithSources, PrometheusMetricReader):
    def __init__(self, registry: CollectorRegistry, sources: list[MetricSource]) -> None:
        super().__init__(scope_info_enabled=False, registry=registry)
        self._sources = sources


class _OtlpReader(_WithSources, PeriodicExportingMetricReader):
    def __init__(self, exporter: MetricExporter, sources: list[MetricSource]) -> None:
        super().__init__(exporter)
        self._sources = sources


_SEVERITY = {
    "TRACE": SeverityNumber.TRACE,
    "DEBUG": SeverityNumber.DEBUG,
    "INFO": SeverityNumber.INFO,
    "SUCCESS": SeverityNumber.INFO2,
    "WARNING": SeverityNumber.WARN,
    "ERROR": SeverityNumber.ERROR,
    "CRITICAL": SeverityNumber.FATAL,
}


def _not_from_the_sdk(record: Record) -> bool:
    return not (record["name"] or "").startswith("opentelemetry")


def _otel_log_sink(otel_logger: OtelLogger) -> Callable[[Message], None]:
    def sink(message: Message) -> None:
        record = message.record
        attributes: dict[str, str | int | float] = {
            f"modelberth.{k}": v
            for k, v in record["extra"].items()
            if isinstance(v, str | int | float) and not k.startswith("_")
        }
        attributes["code.function"] = record["function"]
        attributes["logger.name"] = record["name"] or ""
        otel_logger.emit(
            timestamp=int(record["time"].timestamp() * 1e9),
            severity_number=_SEVERITY.get(record["level"].name, SeverityNumber.INFO),
            severity_text=record["level"].name,
            body=record["message"],
            attributes=attributes,
        )

    return sink


def _add_trace_id(record: Record) -> None:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        record["extra"]["trace_id"] = format(context.trace_id, "032x")


def setup_telemetry(level: str = "INFO") -> Telemetry:
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", "modelberth"),
            "service.version": __version__,
        }
    )
    closers: list[Callable[[], object]] = []
    tracer: Tracer = trace.NoOpTracer()
    spans = None
    if enabled("TRACES"):
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(span_exporter()))  # rare work's spans
        tracer = provider.get_tracer("modelberth", __version__)
        scope = InstrumentationScope("modelberth", __version__)
        spans = SpanRecorder(
            provider,
            SpanExportProcess(resource, scope, logs.CURRENT["format"], logs.CURRENT["level"]),
        )
        closers += [spans.shutdown, provider.shutdown]
    prometheus = CollectorRegistry(auto_describe=True)
    sources: list[MetricSource] = []
    readers: list[MetricReader] = [_PrometheusReader(prometheus, sources)]
    if enabled("METRICS"):
        readers.append(_OtlpReader(metric_exporter(), sources))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    closers.append(meter_provider.shutdown)
    if enabled("LOGS"):
        log_provider = LoggerProvider(resource=resource)
        log_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter()))
        # The SDK's own log lines (routed into loguru like all standard logging) stay out of
        # this sink: an export problem logged while exporting would re-enter it.
        sink = logger.add(
            _otel_log_sink(log_provider.get_logger("modelberth", __version__)),
            level=level,
            format="{message}",
            filter=_not_from_the_sdk,
        )
        closers += [lambda: logger.remove(sink), log_provider.shutdown]
    logger.configure(patcher=_add_trace_id)
    return Telemetry(
        tracer,
        meter_provider.get_meter("modelberth", __version__),
        prometheus,
        spans,
        closers,
        sources,
    )


async def run_bounded(work: Callable[[], object], seconds: float) -> None:
    """Run blocking work in a daemon thread; stop waiting after `seconds` (an unreachable
    collector must not hold up the exit)."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def run() -> None:
        try:
            work()
        finally:
            loop.call_soon_threadsafe(done.set)

    threading.Thread(target=run, name="telemetry-shutdown", daemon=True).start()
    try:
        await asyncio.wait_for(done.wait(), seconds)
    except TimeoutError:
        logger.warning("telemetry was not flushed within {}s; exiting anyway", seconds)
