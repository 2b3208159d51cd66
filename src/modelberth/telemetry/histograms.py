"""Per-model request histograms, aggregated here rather than by the OpenTelemetry SDK
(decision 9 in docs/decisions.md): the SDK's Histogram.record hashes attributes and takes
locks on every request.

Fenced: this module imports nothing of modelberth. Its limits: explicit buckets only, one
series per model name (never pruned: models are few), cumulative temporality like the SDK's
default, min/max kept from the process's start, no exemplars. The readers take the series
in at collection (telemetry/setup.py)."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
)


class _Series:
    __slots__ = ("counts", "max", "min", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")


class ModelHistogram:
    """An explicit-bucket histogram per model: a bisect and three additions per value, where
    the SDK's Histogram.record hashes attributes and takes locks. Cumulative, like the
    SDK's default."""

    def __init__(self, name: str, description: str, unit: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.description = description
        self.unit = unit
        self._bounds = tuple(float(b) for b in bounds)
        self._series: dict[str, _Series] = {}
        self._start_ns = time.time_ns()

    @property
    def recorded(self) -> bool:
        return bool(self._series)

    def record(self, value: float, model: str) -> None:
        series = self._series.get(model)
        if series is None:
            series = self._series[model] = _Series(len(self._bounds) + 1)
        series.counts[bisect_left(self._bounds, value)] += 1  # buckets are (low, high]
        series.sum += value
        # Comparisons, not min() and max(): the calls cost twice as much on every request.
        if value < series.min:  # noqa: PLR1730
            series.min = value
        if value > series.max:  # noqa: PLR1730
            series.max = value

    def collect(self, now_ns: int) -> Metric:
        points = []
        for model, series in list(self._series.items()):
            counts = list(series.counts)  # the count is their sum, so +Inf always equals it
            points.append(
                HistogramDataPoint(
                    attributes={"model": model},
                    start_time_unix_nano=self._start_ns,
                    time_unix_nano=now_ns,
                    count=sum(counts),
                    sum=series.sum,
                    bucket_counts=counts,
                    explicit_bounds=self._bounds,
                    min=series.min,
                    max=series.max,
                )
            )
        return Metric(
            self.name,
            self.description,
            self.unit,
            Histogram(
                data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE
            ),
        )
