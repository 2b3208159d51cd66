"""Observability: OTLP traces/metrics/logs at a real receiver, /metrics, traceparent, events."""

from __future__ import annotations

import inspect
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from loguru import logger
from opentelemetry.sdk.metrics.export import MetricReader
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import EventReader, Modelberth, fake_model, wait_for
from modelberth.telemetry.histograms import ModelHistogram
from modelberth.telemetry.logs import setup_logging
from modelberth.telemetry.setup import setup_telemetry
from otlp_receiver import GrpcReceiver, HttpReceiver, attributes

CHAT = "/v1/chat/completions"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def otel_env(endpoint: str, protocol: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_SERVICE_NAME": "modelberth-test",
    }


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    receiver = GrpcReceiver()
    yield receiver
    receiver.close()


def traced_server(modelberth: Any, endpoint: str, protocol: str) -> Modelberth:
    mb: Modelberth = modelberth(
        {"models": {"m": fake_model(None, aliases=["gpt-4o-mini"])}}, start=False
    )
    return mb.start(env=otel_env(endpoint, protocol))


def test_spans_follow_genai_conventions_and_traceparent_reaches_the_upstream(
    http_receiver: HttpReceiver, modelberth: Any
) -> None:
    mb = traced_server(modelberth, http_receiver.endpoint, "http/protobuf")
    with mb.client() as client:
        response = client.post(
            CHAT,
            headers={"traceparent": TRACEPARENT},
            json={"model": "gpt-4o-mini", "messages": []},
        )
    assert response.status_code == 200
    received = http_receiver.received
    (server,) = wait_for(lambda: received.span_named("chat gpt-4o-mini"), timeout=10)
    assert server.trace_id.hex() == TRACE_ID
    assert server.parent_span_id.hex() == PARENT_ID  # the incoming traceparent is honoured
    attrs = attributes(server.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.usage.input_tokens"] == 3
    assert attrs["gen_ai.usage.output_tokens"] == 1
    assert attrs["modelberth.cold_start"] is True
    assert attrs["modelberth.queue_ms"] > 0
    assert attrs["http.response.status_code"] == 200

    def child(name: str) -> Any:
        spans = wait_for(lambda: received.span_named(name), timeout=10)
        assert spans[0].trace_id.hex() == TRACE_ID
        return spans[0]

    assert child("modelberth.queue").parent_span_id == server.span_id
    assert child("modelberth.model.start").parent_span_id == server.span_id
    upstream = child("POST /v1/chat/completions")
    assert upstream.parent_span_id == server.span_id
    # The upstream got a traceparent naming modelberth's client span as its parent.
    seen = {k.lower(): v for k, v in response.json()["echo"]["headers"].items()}
    forwarded = seen["traceparent"]
    assert forwarded == f"00-{TRACE_ID}-{upstream.span_id.hex()}-01"

    # Log records written while the request's start ran carry its trace.
    def start_logs() -> list[Any]:
        with received.lock:
            return [log for log in received.logs if "stopped -> starting" in log.body.string_value]

    (start_log,) = wait_for(start_logs, timeout=10)
    assert start_log.trace_id.hex() == TRACE_ID
    assert attributes(start_log.attributes)["modelberth.trace_id"] == TRACE_ID

    with mb.client() as client:  # a warm request: no cold start, no start span
        client.post(CHAT, json={"model": "m", "messages": []})
    warm = wait_for(lambda: received.span_named("chat m"), timeout=10)[0]
    assert attributes(warm.attributes)["modelberth.cold_start"] is False
    # It did not wait, so it has no queue span (exported before its root, which ends last).
    assert warm.trace_id not in {s.trace_id for s in received.span_named("modelberth.queue")}
    assert len(received.span_named("modelberth.model.start")) == 1


def test_metrics_and_logs_are_exported_over_otlp(
    http_receiver: HttpReceiver, modelberth: Any
) -> None:
    mb = traced_server(modelberth, http_receiver.endpoint, "http/protobuf")
    with mb.client() as client:
        assert client.post(CHAT, json={"model": "m", "messages": []}).status_code == 200
    received = http_receiver.received
    wait_for(
        lambda: (
            {
                "modelberth_requests",
                "modelberth_request_duration",
                "modelberth_model_state",
                "modelberth_model_start_duration",
            }
            <= received.metric_names()
        ),
        timeout=10,
    )

    def log_lines() -> list[tuple[str, dict[str, Any]]]:
        with received.lock:
            return [(value_text(log.body), attributes(log.attributes)) for log in received.logs]

    def value_text(body: Any) -> str:
        return str(body.string_value)

    ready = wait_for(
        lambda: [a for body, a in log_lines() if "ready (healthy)" in body], timeout=10
    )
    assert ready[0]["modelberth.model"] == "m"
    upstream = wait_for(
        lambda: [a for body, a in log_lines() if "fake upstream starting" in body], timeout=10
    )
    assert upstream[0]["modelberth.stream"] == "stdout"


def test_grpc_exporter(grpc_receiver: GrpcReceiver, modelberth: Any) -> None:
    mb = traced_server(modelberth, grpc_receiver.endpoint, "grpc")
    with mb.client() as client:
        assert client.post(CHAT, json={"model": "m", "messages": []}).status_code == 200
    spans = wait_for(lambda: grpc_receiver.received.span_named("chat m"), timeout=15)
    assert attributes(spans[0].attributes)["gen_ai.request.model"] == "m"
    wait_for(lambda: "modelberth_requests" in grpc_receiver.received.metric_names(), timeout=15)
    # The export process took every batch: none was dropped.
    assert scrape(mb)[("modelberth_spans_dropped_total", ())] == 0


def scrape(mb: Modelberth) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(mb.url + "/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_prometheus_metrics(modelberth: Any, tmp_path: Path) -> None:
    mb = modelberth({"models": {"m": fake_model(None)}})
    with mb.client() as client:
        for _ in range(3):
            assert client.post(CHAT, json={"model": "m", "messages": []}).status_code == 200
        streamed = client.post(CHAT, json={"model": "m", "stream": True, "chunks": 7})
        assert streamed.status_code == 200
        assert client.post(CHAT, json={"model": "nope", "messages": []}).status_code == 404
    samples = scrape(mb)
    m = (("model", "m"),)
    assert samples[("modelberth_requests_total", (("model", "m"), ("status", "200")))] == 4
    assert samples[("modelberth_requests_total", (("model", ""), ("status", "404")))] == 1
    assert samples[("modelberth_request_duration_seconds_count", m)] == 4
    assert samples[("modelberth_time_to_first_token_seconds_count", m)] == 4
    assert samples[("modelberth_model_start_duration_seconds_count", m)] == 1
    # 3 x usage.completion_tokens 1, plus 7 content chunks counted in the stream
    assert samples[("modelberth_tokens_total", (("model", "m"), ("type", "output")))] == 10
    assert samples[("modelberth_tokens_total", (("model", "m"), ("type", "input")))] == 9
    assert samples[("modelberth_output_tokens_per_second_count", m)] == 4
    # The per-model gauges say which node it runs on: this machine.
    here = (*m, ("node", "local"))
    assert samples[("modelberth_model_state", (*here, ("state", "ready")))] == 1
    assert samples[("modelberth_model_state", (*here, ("state", "stopped")))] == 0
    assert samples[("modelberth_queue_length", here)] == 0
    assert samples[("modelberth_in_flight", here)] == 0
    wait_for(
        lambda: scrape(mb).get(("modelberth_model_memory_bytes", here), 0) > 10 * 2**20, timeout=10
    )
    assert ("modelberth_host_memory_available_bytes", ()) in samples


def test_events_stream_evictions_and_start_progress(modelberth: Any, tmp_path: Path) -> None:
    mb = modelberth(
        {
            "resources": {"memory_budget_mb": 100},
            "models": {
                "a": fake_model(None, "--start-delay", "1.3", memory_mb=60),
                "b": fake_model(None, memory_mb=60),
            },
        }
    )
    reader = EventReader(mb.url, lambda kind, _: kind == "eviction")
    with mb.client() as client:
        assert client.post(CHAT, json={"model": "a", "messages": []}).status_code == 200
        assert client.post(CHAT, json={"model": "b", "messages": []}).status_code == 200
    seen = [{"event": kind, **data} for kind, data in reader.wait(15)]
    progress = [e for e in seen if e["event"] == "start_progress"]
    assert progress and progress[0]["model"] == "a"
    assert progress[0]["elapsed_seconds"] >= 1.0
    (eviction,) = [e for e in seen if e["event"] == "eviction"]
    assert eviction["model"] == "a"
    assert eviction["for_model"] == "b"


def test_waiting_stream_gets_loading_comments(modelberth: Any) -> None:
    mb = modelberth(
        {
            "server": {"stream_keepalive": 0.3},
            "models": {
                "slow": fake_model(None, "--start-delay", "1.2"),
                "broken": fake_model(None, "--start-delay", "1", "--exit-code", "3"),
            },
        }
    )
    with mb.client() as client:
        text = client.post(CHAT, json={"model": "slow", "stream": True, "chunks": 2}).text
        assert text.startswith(": loading slow 0.")
        assert text.count(": loading slow") >= 2
        assert text.count("tok") == 2
        plain = client.post(CHAT, json={"model": "slow", "messages": []})
        assert not plain.text.startswith(":")
        failed = client.post(CHAT, json={"model": "broken", "stream": True})
    assert failed.status_code == 200  # the headers went out while it was loading
    assert ": loading broken" in failed.text
    payload = json.loads(failed.text.split("event: error\ndata: ", 1)[1].split("\n", 1)[0])
    assert payload["error"]["code"] == "model_start_failed"
    assert "exit code 3" in payload["error"]["message"]


def test_dashboard_queries_only_name_metrics_that_exist(modelberth: Any) -> None:
    mb = modelberth(
        {
            "resources": {"memory_budget_mb": 100, "sample_interval": 0.3},
            "models": {"m": fake_model(None, memory_mb=60), "n": fake_model(None, memory_mb=60)},
        }
    )
    with mb.client() as client:
        for name in ("m", "n"):  # the second evicts the first
            assert client.post(CHAT, json={"model": name, "messages": []}).status_code == 200
    n = ("modelberth_model_memory_bytes", (("model", "n"), ("node", "local")))
    wait_for(lambda: n in scrape(mb), timeout=10)
    exposed = {name for name, _ in scrape(mb)}
    dashboard = json.loads(
        (
            Path(__file__).resolve().parent.parent / "deploy" / "signoz" / "dashboard.json"
        ).read_text()
    )
    queries = [q["query"] for w in dashboard["widgets"] for q in w["query"]["promql"]]
    named = {word for query in queries for word in re.findall(r"modelberth_\w+", query)}
    # GPU and VRAM gauges only appear with a GPU; the rest must be served right now.
    missing = {
        n
        for n in named - exposed
        if not n.startswith("modelberth_gpu_") and n != "modelberth_model_vram_bytes"
    }
    assert not missing, f"dashboard names metrics modelberth does not export: {missing}"
    assert len(named) >= 14


def test_logging_after_telemetry_shutdown_does_not_reenter_the_otlp_sink(
    http_receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Shutting down used to leave loguru's OTLP sink in place: the next log line reached the
    stopped SDK, which logged "Shutdown called, ignoring Log." into the same sink."""
    for key, value in otel_env(http_receiver.endpoint, "http/protobuf").items():
        monkeypatch.setenv(key, value)
    setup_logging("plain", "INFO")
    try:
        telemetry = setup_telemetry("INFO")
        logger.warning("before shutdown")
        telemetry.shutdown()
        logger.warning("after shutdown")
        logging.getLogger("opentelemetry.sdk.test").warning("an SDK line after shutdown")
    finally:
        logger.remove()
        logging.basicConfig(handlers=[logging.StreamHandler()], force=True)
    err = capfd.readouterr().err
    assert "after shutdown" in err
    assert "Logging error in Loguru" not in err
    bodies = [log.body.string_value for log in http_receiver.received.logs]
    assert "before shutdown" in bodies  # flushed by the shutdown
    assert "after shutdown" not in bodies


def test_the_sdk_still_hands_each_collection_to_receive_metrics(
    http_receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request histograms, aggregated outside the SDK, join each collection in
    `MetricReader._receive_metrics` (telemetry/setup.py, `_WithSources`): the SDK has no
    public hook between a collection and a reader's exporter. This fails first if it
    changes."""
    hint = (
        "the OpenTelemetry SDK changed MetricReader._receive_metrics(metrics_data, "
        "timeout_millis, **kwargs), through which telemetry/setup.py's _WithSources adds "
        "the request histograms to /metrics and to OTLP: adapt _WithSources"
    )
    receive = getattr(MetricReader, "_receive_metrics", None)
    assert receive is not None, hint
    assert list(inspect.signature(receive).parameters)[:3] == [
        "self",
        "metrics_data",
        "timeout_millis",
    ], hint
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", http_receiver.endpoint + "/v1/metrics"
    )  # metrics only
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")  # exported at shutdown
    telemetry = setup_telemetry("INFO")
    try:
        probe = ModelHistogram("modelberth_probe", "A histogram of the test's.", "s", (1.0,))
        probe.record(0.5, "m")
        telemetry.metric_sources.append(lambda: [probe.collect(time.time_ns())])
        telemetry.meter.create_counter("modelberth_probe_sdk").add(1)  # as the server has
        scraped = generate_latest(telemetry.prometheus).decode()
        assert 'modelberth_probe_seconds_count{model="m"} 1.0' in scraped, hint
    finally:
        telemetry.shutdown()
    assert "modelberth_probe" in http_receiver.received.metric_names(), hint
