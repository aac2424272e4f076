"""The access log (issue #15): one line per request on `tollgate.access`, JSON or text, with the
request's account — never a key or message content."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

import pytest

from runtime.auth import DEMO_KEY
from runtime.config import LoggingConfig
from runtime.http.observe import access_log, configure_logging
from tests.harness import in_thread, make_config, openai_provider, running_gateway

SECRET = "the secret prompt nobody may log"
PROMPT = [{"role": "user", "content": SECRET}]
PRICING = {"sim/sim-1": {"input_per_mtok": "10", "output_per_mtok": "20"}}
FALLBACK = {"fast": {"deployments": [{"provider": "dead", "model": "x"}, {"provider": "sim", "model": "sim-1"}]}}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "tollgate.access"]


async def test_json_access_log_has_the_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tollgate.access")
    providers = [
        openai_provider("http://127.0.0.1:1/v1", name="dead", models=()),
        {"name": "sim", "kind": "simulator", "models": ["sim-1"]},
    ]
    config = make_config(providers=providers, models=FALLBACK, pricing=PRICING, logging={"format": "json"})
    async with running_gateway(config) as gw, gw.http() as http:
        completion = await in_thread(gw.client().chat.completions.create, model="fast", messages=PROMPT)
        x = completion.model_extra["x_gateway"]
        stream = await in_thread(gw.client().chat.completions.create, model="sim-1", messages=PROMPT, stream=True)
        await in_thread(lambda: list(stream))
        assert (await http.get("/healthz")).status_code == 200
    lines = [json.loads(record.getMessage()) for record in access_lines(caplog)]
    chat = [line for line in lines if line["path"] == "/v1/chat/completions"]
    assert len(chat) == 2 and len(lines) == 3
    first: dict[str, Any] = chat[0]
    assert first["request_id"] == x["request_id"] and first["trace_id"] == x["trace_id"]
    assert first["tenant"] == "demo" and first["model"] == "fast" and first["provider"] == "sim"
    assert first["status"] == 200 and first["outcome"] == "ok" and first["stream"] is False
    assert first["attempts"] == 2 and first["failures"] == ["dead: connect_failed"]
    assert first["prompt_tokens"] == completion.usage.prompt_tokens
    assert first["completion_tokens"] == completion.usage.completion_tokens
    assert first["cost_usd"] == x["cost_usd"]
    assert first["latency_ms"] > 0 and first["overhead_ms"] >= 0 and first["client_disconnected"] is False
    assert first["time"].endswith("+00:00") and first["method"] == "POST"
    assert chat[1]["stream"] is True and chat[1]["outcome"] == "ok" and chat[1]["attempts"] == 1
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert SECRET not in text and DEMO_KEY not in text


async def test_text_access_log_and_refusals(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tollgate.access")
    async with running_gateway(make_config()) as gw, gw.http() as http:
        refused = await http.post(
            "/v1/chat/completions",
            json={"model": "nope", "messages": PROMPT},
            headers={"Authorization": f"Bearer {DEMO_KEY}"},
        )
        assert refused.status_code == 404
        assert (await http.post("/v1/chat/completions", json={"model": "sim-1", "messages": PROMPT})).status_code == 401
    lines = [record.getMessage() for record in access_lines(caplog)]
    assert len(lines) == 2
    assert "status=404" in lines[0] and "outcome=model_not_found" in lines[0] and "tenant=demo" in lines[0]
    assert f"request_id={refused.headers['x-request-id']}" in lines[0] and "model=nope" in lines[0]
    assert "status=401" in lines[1] and "tenant=" not in lines[1]
    assert all(SECRET not in line and DEMO_KEY not in line for line in lines)


def test_configure_logging_silences_httpx_and_gives_json_lines_their_own_handler() -> None:
    tollgate = logging.getLogger("tollgate")
    saved = (access_log.handlers[:], access_log.propagate, logging.getLogger().level, tollgate.level, access_log.level)
    try:
        configure_logging(LoggingConfig(format="json", level="WARNING"))
        assert logging.getLogger("httpx").level == logging.WARNING
        assert logging.getLogger("httpcore").level == logging.WARNING
        assert logging.getLogger().level == logging.WARNING
        assert access_log.propagate is False and access_log.getEffectiveLevel() == logging.INFO
        [handler] = access_log.handlers
        assert handler.formatter is not None and handler.formatter._fmt == "%(message)s"
    finally:
        access_log.handlers[:], access_log.propagate = saved[0], saved[1]
        logging.getLogger().setLevel(saved[2])
        tollgate.setLevel(saved[3])
        access_log.setLevel(saved[4])


async def _one_request_through_configured_logging(settings: dict[str, Any]) -> tuple[str, str]:
    """A request through a gateway whose access log is set up as `tollgate serve` sets it up, written
    to a string: the request id and what was written."""
    saved = (access_log.handlers[:], access_log.propagate, logging.getLogger().level, access_log.level)
    tollgate_level = logging.getLogger("tollgate").level
    written = io.StringIO()
    try:
        configure_logging(LoggingConfig(**settings), stream=written)
        async with running_gateway(make_config(logging=settings)) as gw:
            completion = await in_thread(gw.client().chat.completions.create, model="sim-1", messages=PROMPT)
    finally:
        access_log.handlers[:], access_log.propagate = saved[0], saved[1]
        logging.getLogger().setLevel(saved[2])
        access_log.setLevel(saved[3])
        logging.getLogger("tollgate").setLevel(tollgate_level)
    return completion.model_extra["x_gateway"]["request_id"], written.getvalue()


async def test_access_log_through_its_own_handler_writes_whole_lines() -> None:
    request_id, written = await _one_request_through_configured_logging({"format": "json"})
    [line] = written.splitlines()
    fields = json.loads(line)
    assert fields["request_id"] == request_id and fields["status"] == 200 and fields["tenant"] == "demo"
    assert fields["outcome"] == "ok" and fields["provider"] == "sim" and fields["time"].endswith("+00:00")
    assert SECRET not in written and DEMO_KEY not in written


async def test_text_access_log_through_its_own_handler_keeps_the_formatter_prefix() -> None:
    request_id, written = await _one_request_through_configured_logging({"format": "text"})
    [line] = written.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO tollgate\.access: method=POST .*", line)
    assert f"request_id={request_id}" in line and "status=200" in line and "outcome=ok" in line


async def test_access_false_logs_no_access_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tollgate.access")
    async with running_gateway(make_config(logging={"access": False})) as gw:
        await in_thread(gw.client().chat.completions.create, model="sim-1", messages=PROMPT)
    assert access_lines(caplog) == []
    _, written = await _one_request_through_configured_logging({"access": False})
    assert written == ""
