"""OpenTelemetry traces (issue #15): off unless `[tracing] enabled = true` or the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` is set; spans are exported over OTLP/HTTP.

A leaf: the HTTP edge opens one server span per request (continuing the client's `traceparent`:
its trace id is `x_gateway.trace_id`), chat/ opens child spans through the request's `Exchange`
(admission, each provider attempt with the GenAI attributes, the ledger commit). No prompt or
completion content is ever put on a span.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NoOpTracer, Tracer

from runtime.config import TracingConfig

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"


class Telemetry:
    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("tollgate") if provider is not None else NoOpTracer()

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    @classmethod
    def start(cls, config: TracingConfig, environ: Mapping[str, str]) -> Telemetry:
        endpoint = environ.get(ENDPOINT_ENV)
        if not (config.enabled or endpoint):
            return cls()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        traces = f"{endpoint.rstrip('/')}/v1/traces" if endpoint else None  # the exporter's default otherwise
        return cls.with_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces)))

    @classmethod
    def with_processor(cls, processor: SpanProcessor) -> Telemetry:
        provider = TracerProvider(resource=Resource.create({"service.name": "tollgate"}))
        provider.add_span_processor(processor)
        return cls(provider)

    def flush(self) -> None:
        """Export what is buffered (blocking: call it in a thread)."""
        if self.provider is not None:
            self.provider.force_flush()

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
