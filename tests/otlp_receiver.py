"""A real OTLP receiver for the tests: HTTP/protobuf and gRPC, decoding what arrives with the
opentelemetry-proto messages and keeping it for assertions."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(items: Any) -> dict[str, Any]:
    return {item.key: value_of(item.value) for item in items if isinstance(item, KeyValue)}


@dataclass
class Received:
    spans: list[Any] = field(default_factory=list)
    metrics: list[Any] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    trace_exports: int = 0  # export requests with spans
    export_sizes: list[int] = field(default_factory=list)  # spans in each export request
    # Each span's resource attributes and scope (name, version), by span id.
    origins: dict[bytes, tuple[dict[str, Any], str, str]] = field(default_factory=dict)

    def add_traces(self, request: Any) -> None:
        with self.lock:
            self.trace_exports += 1
            size = 0
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.origins[span.span_id] = (resource, ss.scope.name, ss.scope.version)
                    self.spans += ss.spans
                    size += len(ss.spans)
            self.export_sizes.append(size)

    def add_metrics(self, request: Any) -> None:
        with self.lock:
            self.metrics += [
                metric
                for rm in request.resource_metrics
                for sm in rm.scope_metrics
                for metric in sm.metrics
            ]

    def add_logs(self, request: Any) -> None:
        with self.lock:
            self.logs += [
                log
                for rl in request.resource_logs
                for sl in rl.scope_logs
                for log in sl.log_records
            ]

    def span_named(self, prefix: str) -> list[Any]:
        with self.lock:
            return [span for span in self.spans if span.name.startswith(prefix)]

    def metric_names(self) -> set[str]:
        with self.lock:
            return {metric.name for metric in self.metrics}


_ROUTES: dict[str, tuple[Any, str, Any]] = {
    "/v1/traces": (
        trace_service_pb2.ExportTraceServiceRequest,
        "add_traces",
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "/v1/metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        "add_metrics",
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "/v1/logs": (
        logs_service_pb2.ExportLogsServiceRequest,
        "add_logs",
        logs_service_pb2.ExportLogsServiceResponse,
    ),
}


class HttpReceiver:
    def __init__(self) -> None:
        self.received = Received()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                route = _ROUTES.get(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if route is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                request_type, add, response_type = route
                request = request_type()
                request.ParseFromString(body)
                getattr(received, add)(request)
                payload = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GrpcReceiver:
    def __init__(self) -> None:
        self.received = Received()
        received = self.received

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                received.add_traces(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                received.add_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                received.add_logs(request)
                return logs_service_pb2.ExportLogsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        register: Any = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        register(Traces(), self.server)
        register = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
        register(Metrics(), self.server)
        register = logs_service_pb2_grpc.add_LogsServiceServicer_to_server
        register(Logs(), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"
        self.server.start()

    def close(self) -> None:
        self.server.stop(0)


Receiver = TypeVar("Receiver", HttpReceiver, GrpcReceiver)


@contextlib.contextmanager
def exporting_to(
    receiver: Receiver, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Receiver]:
    """Point the OTLP exporters (OTEL_* variables) at `receiver`; close it afterwards."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    try:
        yield receiver
    finally:
        receiver.close()
