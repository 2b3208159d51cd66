"""Telemetry set-up: loguru (richuru on a terminal, JSON lines on request), and
OpenTelemetry traces, metrics and logs over OTLP, plus the Prometheus registry behind /metrics.

Standard-library loggers (uvicorn, aiohttp) are routed into loguru so there is one stream.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger
from opentelemetry import trace
from opentelemetry._logs import Logger as OtelLogger
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
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
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from modelberth import __version__
from modelberth.telemetry.export import SpanExportProcess
from modelberth.telemetry.tracing import SpanRecorder

if TYPE_CHECKING:
    from loguru import Message, Record

_PLAIN = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[_tag]}{message}"

LogFormat = Literal["auto", "rich", "json", "plain"]


class _ToLoguru(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def _json_sink(message: Message) -> None:
    record = message.record
    line: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
    }
    line.update({k: v for k, v in record["extra"].items() if isinstance(v, str | int | float)})
    if record["exception"] is not None:
        line["exception"] = repr(record["exception"].value)
    sys.stderr.write(json.dumps(line) + "\n")


_LOGGING = {"format": "plain", "level": "INFO"}  # as last set up, for child processes


def setup_logging(fmt: LogFormat = "auto", level: str = "INFO") -> None:
    if fmt == "auto":
        fmt = "rich" if sys.stderr.isatty() else "plain"
    _LOGGING.update(format=fmt, level=level)
    logger.remove()
    if fmt == "json":
        logger.add(_json_sink, level=level, format="{message}")
    elif fmt == "rich":
        from richuru import LoguruRichHandler

        handler = LoguruRichHandler(rich_tracebacks=True, tracebacks_show_locals=False,
                                    show_time=True, markup=False)
        logger.add(handler, level=level, format="{extra[_tag]}{message}", filter=_add_tag)
    else:
        logger.add(sys.stderr, level=level, format=_PLAIN, filter=_add_tag)
    logging.basicConfig(handlers=[_ToLoguru()], level=logging.INFO, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def _add_tag(record: Record) -> bool:
    extra = record["extra"]
    model = extra.get("model")
    if extra.get("upstream"):
        extra["_tag"] = f"[{model}:{extra.get('stream', 'out')}] "
    else:
        extra["_tag"] = f"[{model}] " if model else ""
    return True


# --- OpenTelemetry: traces, metrics and logs over OTLP ------------------------------------


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
    the SDK collected, before its exporter sees them."""

    _sources: list[MetricSource]

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
                         **kwargs: Any) -> None:
        super()._receive_metrics(  # type: ignore[safe-super]
            _with_sources(metrics_data, self._sources),  # type: ignore[arg-type]
            timeout_millis, **kwargs)


class _PrometheusReader(_WithSources, PrometheusMetricReader):
    def __init__(self, registry: CollectorRegistry, sources: list[MetricSource]) -> None:
        super().__init__(scope_info_enabled=False, registry=registry)
        self._sources = sources


class _OtlpReader(_WithSources, PeriodicExportingMetricReader):
    def __init__(self, exporter: MetricExporter, sources: list[MetricSource]) -> None:
        super().__init__(exporter)
        self._sources = sources


def _env(name: str, signal: str) -> str | None:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_{name}") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{name}")


def _enabled(signal: str) -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = os.environ.get(f"OTEL_{signal}_EXPORTER", "otlp").lower()
    return exporter != "none" and bool(_env("ENDPOINT", signal))


def _grpc(signal: str) -> bool:
    return (_env("PROTOCOL", signal) or "http/protobuf").lower() == "grpc"


def span_exporter() -> SpanExporter:
    if _grpc("TRACES"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    from modelberth.telemetry.otlp import OtlpHttpSpanExporter  # the SDK's, with a leaner encoder
    return OtlpHttpSpanExporter()


def _metric_exporter() -> MetricExporter:
    if _grpc("METRICS"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )
    return HttpMetricExporter()


def _log_exporter() -> LogRecordExporter:
    if _grpc("LOGS"):
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        return OTLPLogExporter()
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter as HttpLogExporter,
    )
    return HttpLogExporter()


_SEVERITY = {"TRACE": SeverityNumber.TRACE, "DEBUG": SeverityNumber.DEBUG,
             "INFO": SeverityNumber.INFO, "SUCCESS": SeverityNumber.INFO2,
             "WARNING": SeverityNumber.WARN, "ERROR": SeverityNumber.ERROR,
             "CRITICAL": SeverityNumber.FATAL}


def _not_from_the_sdk(record: Record) -> bool:
    return not (record["name"] or "").startswith("opentelemetry")


def _otel_log_sink(otel_logger: OtelLogger) -> Callable[[Message], None]:
    def sink(message: Message) -> None:
        record = message.record
        attributes: dict[str, str | int | float] = {
            f"modelberth.{k}": v for k, v in record["extra"].items()
            if isinstance(v, str | int | float) and not k.startswith("_")}
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
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                              "modelberth"),
                                "service.version": __version__})
    closers: list[Callable[[], object]] = []
    tracer: Tracer = trace.NoOpTracer()
    spans = None
    if _enabled("TRACES"):
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(span_exporter()))  # rare work's spans
        tracer = provider.get_tracer("modelberth", __version__)
        scope = InstrumentationScope("modelberth", __version__)
        spans = SpanRecorder(provider, SpanExportProcess(resource, scope, _LOGGING["format"],
                                                      _LOGGING["level"]), scope)
        closers += [spans.shutdown, provider.shutdown]
    prometheus = CollectorRegistry(auto_describe=True)
    sources: list[MetricSource] = []
    readers: list[MetricReader] = [_PrometheusReader(prometheus, sources)]
    if _enabled("METRICS"):
        readers.append(_OtlpReader(_metric_exporter(), sources))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    closers.append(meter_provider.shutdown)
    if _enabled("LOGS"):
        log_provider = LoggerProvider(resource=resource)
        log_provider.add_log_record_processor(BatchLogRecordProcessor(_log_exporter()))
        # The SDK's own log lines (routed into loguru like all standard logging) stay out of
        # this sink: an export problem logged while exporting would re-enter it.
        sink = logger.add(_otel_log_sink(log_provider.get_logger("modelberth", __version__)),
                          level=level, format="{message}", filter=_not_from_the_sdk)
        closers += [lambda: logger.remove(sink), log_provider.shutdown]
    logger.configure(patcher=_add_trace_id)
    return Telemetry(tracer, meter_provider.get_meter("modelberth", __version__), prometheus,
                     spans, closers, sources)
