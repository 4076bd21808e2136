"""In-memory OpenTelemetry for the tests: global providers can be set once per process, so
they are installed once and shared; tests tell their data apart by attribute (registry)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@dataclass(frozen=True, slots=True)
class Point:
    metric: str
    attributes: dict[str, Any]
    value: Any
    """The sum of a counter; (count, sum) of a histogram."""


@dataclass(frozen=True, slots=True)
class Telemetry:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def points(self) -> list[Point]:
        data = self.reader.get_metrics_data()
        found: list[Point] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = (point.count, point.sum) if hasattr(point, "count") else point.value
                        found.append(Point(metric.name, dict(point.attributes or {}), value))
        return found

    def finished_spans(self) -> tuple[ReadableSpan, ...]:
        return tuple(self.spans.get_finished_spans())


@functools.cache
def in_memory_telemetry() -> Telemetry:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return Telemetry(spans=spans, reader=reader)
