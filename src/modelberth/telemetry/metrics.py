"""Metrics: one set of OpenTelemetry instruments, exported over OTLP (when configured) and
served as Prometheus text at GET /metrics."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics.export import (
    Metric,
)

from modelberth.models.probe import WEDGED
from modelberth.models.state import ModelState, StateEvent
from modelberth.telemetry.histograms import ModelHistogram

if TYPE_CHECKING:
    from modelberth.models.model import Model
    from modelberth.models.registry import Registry

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_RATE = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class Metrics:
    def __init__(
        self, meter: Meter, registry: Registry, spans_dropped: Callable[[], int | None]
    ) -> None:
        self._registry = registry
        self._spans_dropped = spans_dropped
        # Counters on the request path are plain dict increments, read by OTel at collection:
        # an SDK Counter.add (locks, attribute hashing) would cost more than the request.
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._tokens: dict[tuple[str, str], int] = defaultdict(int)
        self._fallbacks: dict[tuple[str, str], int] = defaultdict(int)
        meter.create_observable_counter(
            "modelberth_requests",
            callbacks=[self._read_requests],
            description="Proxied requests by model and status.",
        )
        meter.create_observable_counter(
            "modelberth_tokens",
            callbacks=[self._read_tokens],
            description="Tokens by model and type (input/output).",
        )
        meter.create_observable_counter(
            "modelberth_fallbacks",
            callbacks=[self._read_fallbacks],
            description="Requests a model failed before answering, handed to a fallback.",
        )
        # The per-request histograms are aggregated here, not by the SDK, for the same reason;
        # the readers take them in at collection (see setup.py).
        self.duration = ModelHistogram(
            "modelberth_request_duration", "Whole request, queue included.", "s", _SECONDS
        )
        self.ttft = ModelHistogram(
            "modelberth_time_to_first_token",
            "From the request to the first byte of the answer.",
            "s",
            _SECONDS,
        )
        self.queue_wait = ModelHistogram(
            "modelberth_queue_wait",
            "Time waiting for the model (start, room, concurrency).",
            "s",
            _SECONDS,
        )
        self.tokens_per_second = ModelHistogram(
            "modelberth_output_tokens_per_second",
            "Output tokens per second of generation.",
            "",
            _RATE,
        )
        self._histograms = (self.duration, self.ttft, self.queue_wait, self.tokens_per_second)
        self.start_duration = meter.create_histogram(
            "modelberth_model_start_duration",
            unit="s",
            description="From start to healthy.",
            explicit_bucket_boundaries_advisory=_SECONDS,
        )
        self.evictions = meter.create_counter(
            "modelberth_evictions", description="Models stopped to make room."
        )
        self.sleeps = meter.create_counter(
            "modelberth_model_sleeps", description="Models put to sleep (vLLM's sleep mode)."
        )
        self.wakes = meter.create_counter(
            "modelberth_model_wakes", description="Sleeping models woken and ready again."
        )
        self.wake_duration = meter.create_histogram(
            "modelberth_model_wake_duration",
            unit="s",
            description="From waking (room found) to ready.",
            explicit_bucket_boundaries_advisory=_SECONDS,
        )
        self.probe_restarts = meter.create_counter(
            "modelberth_probe_restarts",
            description="Models restarted because their "
            "generation probe failed `failures` times in a row (wedged).",
        )
        meter.create_observable_counter(
            "modelberth_spans_dropped",
            callbacks=[self._read_spans_dropped],
            description="Traced requests whose spans were dropped: span export was behind.",
        )
        self._rejected: dict[str, int] = defaultdict(int)
        meter.create_observable_counter(
            "modelberth_http_rejected",
            callbacks=[self._read_rejected],
            description="Client connections or requests the server refused or closed, by "
            "reason (head too large, header or body timeout, connection limit...).",
        )
        self._gauge(
            meter, "modelberth_model_state", "1 for the state each model is in.", self._states
        )
        self._gauge(
            meter,
            "modelberth_queue_length",
            "Requests waiting for each model.",
            self._per_model(lambda m: m.waiting),
        )
        self._gauge(
            meter,
            "modelberth_in_flight",
            "Requests being answered by each model.",
            self._per_model(lambda m: m.in_flight),
        )
        self._gauge(
            meter,
            "modelberth_model_memory_bytes",
            "RAM used by each model.",
            self._per_model(lambda m: m.memory_bytes if m.upstream else None),
            "By",
        )
        self._gauge(
            meter,
            "modelberth_model_vram_bytes",
            "VRAM used by each model.",
            self._per_model(lambda m: m.vram_bytes if m.upstream else None),
            "By",
        )
        self._gauge(
            meter,
            "modelberth_gpu_memory_used_bytes",
            "Memory used on each GPU.",
            self._per_gpu("memory_used_bytes"),
            "By",
        )
        self._gauge(
            meter,
            "modelberth_gpu_memory_total_bytes",
            "Memory of each GPU.",
            self._per_gpu("memory_total_bytes"),
            "By",
        )
        self._gauge(
            meter,
            "modelberth_gpu_utilization_percent",
            "Utilisation of each GPU.",
            self._per_gpu("utilization_percent"),
        )
        self._gauge(
            meter, "modelberth_host_memory_available_bytes", "Host RAM available.", self._host, "By"
        )

    def collect_histograms(self) -> list[Metric]:
        """The request-path histograms as OTel data, for the metric readers."""
        now = time.time_ns()
        return [h.collect(now) for h in self._histograms if h.recorded]

    def count_request(self, model: str, status: int) -> None:
        self._requests[(model, status)] += 1  # the status becomes a label text when read

    def count_tokens(self, model: str, kind: str, count: int) -> None:
        self._tokens[(model, kind)] += count

    def count_fallback(self, model: str, fallback: str) -> None:
        self._fallbacks[(model, fallback)] += 1

    def _read_fallbacks(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {"model": m, "fallback": f})
            for (m, f), n in list(self._fallbacks.items())
        ]

    def _read_requests(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {"model": m, "status": str(s)})
            for (m, s), n in list(self._requests.items())
        ]

    def _read_tokens(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"model": m, "type": t}) for (m, t), n in list(self._tokens.items())]

    def rejected(self, reason: str) -> None:
        self._rejected[reason] += 1

    def _read_rejected(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"reason": r}) for r, n in list(self._rejected.items())]

    def _read_spans_dropped(self, _: CallbackOptions) -> Iterable[Observation]:
        dropped = self._spans_dropped()
        return [Observation(dropped)] if dropped is not None else []

    def on_state_event(self, event: StateEvent) -> None:
        """Start durations, evictions, probe restarts, sleeps and wakes, from the models'
        state changes."""
        labels = {"model": event.model}
        if event.new is ModelState.READY and "start_seconds" in event.detail:
            self.start_duration.record(event.detail["start_seconds"], labels)
        if event.new is ModelState.STOPPING and event.reason.startswith("evicted"):
            self.evictions.add(1, labels)
        if event.new is ModelState.SLEEPING and "level" in event.detail:  # not adopted asleep
            self.sleeps.add(1, labels)
        if event.new is ModelState.READY and "wake_seconds" in event.detail:
            self.wakes.add(1, labels)
            self.wake_duration.record(event.detail["wake_seconds"], labels)
        if event.new is ModelState.FAILED and WEDGED in event.reason:  # the probe's reason
            self.probe_restarts.add(1, labels)

    @staticmethod
    def _gauge(
        meter: Meter,
        name: str,
        description: str,
        read: Callable[[], Iterable[Observation]],
        unit: str = "",
    ) -> None:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            return list(read())

        meter.create_observable_gauge(
            name, callbacks=[callback], unit=unit, description=description
        )

    def _states(self) -> Iterable[Observation]:
        for model in list(self._registry.models.values()):
            for state in ModelState:
                yield Observation(
                    int(model.state is state),
                    {"model": model.name, "node": node_of(model), "state": state.value},
                )

    def _per_model(
        self, value: Callable[[Model], int | float | None]
    ) -> Callable[[], Iterable[Observation]]:
        def read() -> Iterable[Observation]:
            for model in list(self._registry.models.values()):
                number = value(model)
                if number is not None:
                    yield Observation(number, {"model": model.name, "node": node_of(model)})

        return read

    def _per_gpu(self, field: str) -> Callable[[], Iterable[Observation]]:
        def read() -> Iterable[Observation]:
            for gpu in self._registry.monitor.snapshot.gpus:
                number = getattr(gpu, field)
                if number is not None:
                    yield Observation(number, {"gpu": str(gpu.index), "name": gpu.name})

        return read

    def _host(self) -> Iterable[Observation]:
        yield Observation(self._registry.monitor.snapshot.host.memory_available_bytes)


def node_of(model: Model) -> str:
    """The `node` label: the name of the node its upstream runs on; `local` for this
    machine (and while it runs nowhere)."""
    node = model.node
    return node.name if node is not None else "local"
