"""No upstream text reaches a tenant, a log or the ledger with a secret in it."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.anthropic import event_error
from providers.errors import error_for_status
from providers.redaction import REDACTED, redact
from runtime.auth import DEMO_KEY
from tests import fake_anthropic, fake_openai
from tests.harness import in_thread, ledger_events, make_config, openai_provider, running_gateway

UPSTREAM_KEY = "sk-fake-upstream"  # what tests/harness.py puts in FAKE_KEY
HEADER_SECRET = "org-token-5e1f2a9c"  # not shaped like a key: only the configured list can catch it
MESSAGES = [{"role": "user", "content": "hi"}]


def test_configured_secrets_and_credential_shapes_are_redacted() -> None:
    text = (
        "bad field 'frobnicate'; authorization: Bearer abc.DEF-123_x; x-api-key: k-42; "
        "key sk-proj-AbC123xyz and sk-ant-api03-Zz9_q-Q and ****plainsecret99**** "
    )
    out = redact(text, ["plainsecret99"])
    for secret in ("abc.DEF-123_x", "k-42", "sk-proj-AbC123xyz", "sk-ant-api03-Zz9_q-Q", "plainsecret99"):
        assert secret not in out
    assert "bad field 'frobnicate'" in out
    assert out.count(REDACTED) == 5


@given(st.text(), st.text(min_size=1), st.text())
def test_a_configured_secret_never_survives(before: str, secret: str, after: str) -> None:
    assert secret not in redact(before + secret + after, [secret]) or secret in REDACTED


def test_a_rejection_keeps_the_useful_part_and_cuts_after_redacting() -> None:
    error = error_for_status("up", 400, "x" * 495 + " sk-live-0123456789abcdef", secrets=["sk-live-0123456789abcdef"])
    assert "sk-live" not in error.message and "xxxx" in error.message
    streamed = event_error(
        "claude",
        {"type": "error", "error": {"type": "invalid_request_error", "message": "bad, key s3cr3t-v4lue"}},
        ["s3cr3t-v4lue"],
    )
    assert "s3cr3t" not in streamed.message and "bad, key" in streamed.message


def assert_no_trace(texts: list[str], events: list[Any], logs: str) -> None:
    everything = "\n".join([*texts, *(repr(event.__dict__) for event in events), logs])
    for secret in (UPSTREAM_KEY, HEADER_SECRET):
        assert secret not in everything


@pytest.mark.parametrize("stream", [False, True])
async def test_an_openai_upstream_echoing_its_key_in_a_400_leaks_nothing(
    stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    echo = fake_openai.Behaviour(status=400, echo_headers=True)
    async with fake_openai.fake_openai(echo) as fake:
        provider = openai_provider(fake.url, headers={"x-org-token": HEADER_SECRET})
        async with running_gateway(make_config(providers=[provider])) as gw:
            with pytest.raises(openai.BadRequestError) as caught:
                await in_thread(gw.client().chat.completions.create, model="gpt-test", messages=MESSAGES, stream=stream)
            events = await ledger_events(gw)
    assert fake.headers[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the fake did echo it
    message = caught.value.body["message"]  # type: ignore[index]
    assert "Unrecognized request argument supplied: frobnicate" in message
    assert_no_trace([message, caught.value.response.text], events, caplog.text)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_anthropic_upstream_echoing_its_key_in_a_400_leaks_nothing(
    stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    echo = fake_anthropic.Behaviour(status=400, error_message="max_tokens: too large", echo_headers=True)
    async with fake_anthropic.fake_anthropic(echo) as fake:
        provider = {
            "name": "claude",
            "kind": "anthropic",
            "base_url": fake.url,
            "api_key_env": "FAKE_KEY",
            "models": ["claude-test"],
            "headers": {"x-org-token": HEADER_SECRET},
        }
        async with running_gateway(make_config(providers=[provider])) as gw, gw.http() as http:
            body = {"model": "claude-test", "messages": MESSAGES, "stream": stream}
            response = await http.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {DEMO_KEY}"}
            )
            events = await ledger_events(gw)
    assert fake.headers[-1]["x-api-key"] == UPSTREAM_KEY
    assert response.status_code == 400
    assert "max_tokens: too large" in response.json()["error"]["message"]
    assert_no_trace([response.text], events, caplog.text)
