"""OpenTelemetry traces (issue #15): one server span per request continuing the client's trace,
child spans for admission, each provider attempt (GenAI attributes) and the ledger commit; no
content; and real OTLP/HTTP export requests."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.auth import DEMO_KEY
from runtime.config import TracingConfig
from runtime.telemetry import Telemetry
from tests.harness import in_thread, make_config, openai_provider, running_gateway
from tests.test_alerts import receiver

SECRET = "a prompt no span may carry"
PROMPT = [{"role": "user", "content": SECRET}]
PRICING = {"sim/sim-1": {"input_per_mtok": "10", "output_per_mtok": "20"}}
FALLBACK = {"fast": {"deployments": [{"provider": "dead", "model": "x"}, {"provider": "sim", "model": "sim-1"}]}}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_span_tree_and_attributes() -> None:
    exporter = InMemorySpanExporter()
    providers = [
        openai_provider("http://127.0.0.1:1/v1", name="dead", models=()),
        {"name": "sim", "kind": "simulator", "models": ["sim-1"]},
    ]
    config = make_config(providers=providers, models=FALLBACK, pricing=PRICING)
    async with running_gateway(config) as gw, gw.http() as http:
        gw.gateway.telemetry = Telemetry.with_processor(SimpleSpanProcessor(exporter))
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "fast", "messages": PROMPT},
            headers={"Authorization": "Bearer " + DEMO_KEY, "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
        )
        assert response.status_code == 200
        x = response.json()["x_gateway"]
    spans = list(exporter.get_finished_spans())
    [server] = by_name(spans, "POST /v1/chat/completions")
    assert x["trace_id"] == CLIENT_TRACE == f"{server.context.trace_id:032x}"
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CLIENT_SPAN
    assert response.headers["traceparent"] == f"00-{CLIENT_TRACE}-{server.context.span_id:016x}-01"
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    assert server.attributes["tollgate.tenant"] == "demo" and server.attributes["tollgate.cost_usd"] == x["cost_usd"]
    children = [span for span in spans if span.parent is not None and span.parent.span_id == server.context.span_id]
    names = [span.name for span in sorted(children, key=lambda span: span.start_time or 0)]
    assert names == ["tollgate.admission", "chat fast", "chat fast", "tollgate.ledger.commit"]
    failed, served = by_name(spans, "chat fast")
    assert failed.attributes is not None and served.attributes is not None
    assert (
        failed.attributes["gen_ai.provider.name"] == "dead"
        and failed.attributes["tollgate.outcome"] == "connect_failed"
    )
    assert dict(served.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "sim",
        "gen_ai.request.model": "fast",
        "gen_ai.response.model": "sim-1",
        "gen_ai.usage.input_tokens": response.json()["usage"]["prompt_tokens"],
        "gen_ai.usage.output_tokens": response.json()["usage"]["completion_tokens"],
        "tollgate.attempt": 2,
        "tollgate.tenant": "demo",
        "tollgate.outcome": "ok",
        "tollgate.cost_usd": x["cost_usd"],
    }
    everything = repr([(span.name, dict(span.attributes or {}), span.events) for span in spans])
    assert SECRET not in everything and DEMO_KEY not in everything


async def test_tracing_is_off_by_default() -> None:
    async with running_gateway(make_config()) as gw:
        assert not gw.gateway.telemetry.enabled
        await in_thread(gw.client().chat.completions.create, model="sim-1", messages=PROMPT)
    assert not Telemetry.start(TracingConfig(), {}).enabled
    assert Telemetry.start(TracingConfig(enabled=True), {}).enabled


async def test_spans_are_exported_over_otlp_http() -> None:
    async with receiver([]) as collector, running_gateway(make_config()) as gw:
        base = collector.url.removesuffix("/hooks/budget")
        telemetry = Telemetry.start(TracingConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": base})
        assert telemetry.enabled
        gw.gateway.telemetry = telemetry
        await in_thread(gw.client().chat.completions.create, model="sim-1", messages=PROMPT)
        await in_thread(telemetry.flush)
        telemetry.shutdown()
    assert collector.raw and collector.paths == ["/v1/traces"] * len(collector.raw)
    exported: list[Any] = []
    for body in collector.raw:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        exported += [
            span for resource in request.resource_spans for scope in resource.scope_spans for span in scope.spans
        ]
    assert {span.name for span in exported} >= {"POST /v1/chat/completions", "chat sim-1", "tollgate.admission"}
