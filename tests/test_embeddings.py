"""OpenAI's embeddings (`POST /v1/embeddings`) used as users use it: the official `openai` SDK's
`client.embeddings.create` (single, batch, token ids, base64, dimensions) through the simulator and
through the fake OpenAI upstream; the ledger's account (operation, usage, exact cost, no output
reserved); budgets, bad input, models no provider of which embeds, fallback; replay --verify."""

from __future__ import annotations

import base64
import json
import math
import struct
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from events.money import ZERO
from events.request import Request
from policies import budget
from policies.admission import Admitted, Candidate, TenantState, admit
from policies.cost import Price
from policies.embeddings import parse_embeddings_request
from policies.errors import InvalidRequest
from policies.routing import Deployment
from policies.tenant import TenantPolicy
from providers.tokens import estimate_input_tokens
from runtime.auth import DEMO_KEY, hash_key
from runtime.ledger.replay import verify_open
from tests.fake_openai import Behaviour, fake_openai
from tests.harness import (
    ADMIN,
    Running,
    in_thread,
    ledger_events,
    make_config,
    openai_provider,
    running_gateway,
    wait_for_events,
)
from tests.test_cli import tollgate

SIM_PRICING = {"sim/sim-1": {"input_per_mtok": "0.13", "output_per_mtok": "99"}}
UP_PRICING = {"up/text-embedding-test": {"input_per_mtok": "0.02", "output_per_mtok": "99"}}
MTOK = Decimal(1_000_000)
HI = [{"role": "user", "content": "x"}]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def embedding_events(events: list[Any]) -> tuple[list[Request.Admitted], list[Request.Settled]]:
    admitted = [e for e in events if isinstance(e, Request.Admitted) and e.operation == "embeddings"]
    ids = {e.originator_id for e in admitted}
    return admitted, [e for e in events if isinstance(e, Request.Settled) and e.originator_id in ids]


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(value * value for value in vector))


async def settled_events(gw: Running, count: int) -> tuple[list[Request.Admitted], list[Request.Settled]]:
    """The embeddings requests' events: a request is settled (durably) before its answer is sent."""
    admitted, settled = embedding_events(await ledger_events(gw))
    assert len(settled) == count, settled
    return admitted, settled


# --- through the simulator ---------------------------------------------------------------------------------------


async def test_single_batch_and_token_inputs_through_the_simulator_with_exact_costs() -> None:
    async with running_gateway(make_config(pricing=SIM_PRICING)) as gw:
        client = gw.client()
        raw = await in_thread(client.embeddings.with_raw_response.create, model="sim-1", input="a ledger of tokens")
        single = raw.parse()
        assert raw.headers["x-tollgate-cache"] == "bypass"  # the response cache is chat-only
        assert raw.headers["x-request-id"] and raw.headers["x-tollgate-ledger-id"]
        assert single.object == "list" and single.model == "sim-1"
        (only,) = single.data
        assert only.index == 0 and len(only.embedding) == 1536
        assert norm(only.embedding) == pytest.approx(1.0)
        assert single.usage.prompt_tokens == estimate_input_tokens("a ledger of tokens") == 5
        assert single.usage.total_tokens == single.usage.prompt_tokens
        assert single.model_extra["x_gateway"]["provider"] == "sim"

        texts = ["first", "a ledger of tokens", "third one"]
        batch = await in_thread(client.embeddings.create, model="sim-1", input=texts)
        assert [d.index for d in batch.data] == [0, 1, 2]
        assert batch.data[1].embedding == only.embedding  # deterministic: the same input, the same vector
        assert batch.data[0].embedding != batch.data[2].embedding
        assert batch.usage.prompt_tokens == estimate_input_tokens(texts)

        tokens = await in_thread(client.embeddings.create, model="sim-1", input=[[1, 2, 3], [4, 5]])
        assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 5  # a token id is one token
        ids = await in_thread(client.embeddings.create, model="sim-1", input=[7, 8, 9, 10])
        assert len(ids.data) == 1 and ids.usage.prompt_tokens == 4
        admitted, settled = await settled_events(gw, 4)
    assert [e.operation for e in admitted] == ["embeddings"] * 4
    assert all(not e.stream for e in admitted)
    usages = [single.usage.prompt_tokens, batch.usage.prompt_tokens, 5, 4]
    for event, prompt in zip(settled, usages, strict=True):
        assert isinstance(event, Request.Completed) and event.outcome == "ok"
        assert (event.prompt_tokens, event.completion_tokens, event.usage_source) == (prompt, 0, "provider")
        assert event.cost_usd == Decimal(prompt) * Decimal("0.13") / MTOK  # per input token, exact


async def test_base64_and_dimensions_through_the_simulator() -> None:
    async with running_gateway(make_config()) as gw:
        client = gw.client()
        floats = await in_thread(
            client.embeddings.create, model="sim-1", input="vectors", dimensions=64, encoding_format="float"
        )
        packed = await in_thread(
            client.embeddings.create, model="sim-1", input="vectors", dimensions=64, encoding_format="base64"
        )
    vector = floats.data[0].embedding
    assert len(vector) == 64 and norm(vector) == pytest.approx(1.0)
    encoded = packed.data[0].embedding
    assert isinstance(encoded, str)
    decoded = struct.unpack("<64f", base64.b64decode(encoded))
    assert decoded == pytest.approx(vector, abs=1e-6)


async def test_metrics_name_the_operation_embeddings() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        client = gw.client()
        await in_thread(client.embeddings.create, model="sim-1", input="x")
        await in_thread(client.chat.completions.create, model="sim-1", messages=HI)
        text = (await http.get("/metrics")).text
    durations = [
        sample.labels["gen_ai_operation_name"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gen_ai_client_operation_duration_seconds_count"
    ]
    assert sorted(durations) == ["chat", "embeddings"]


# --- through an OpenAI-kind upstream -------------------------------------------------------------------------------


async def test_openai_upstream_gets_the_body_passed_through_and_its_usage_is_billed() -> None:
    behaviour = Behaviour(prompt_tokens=23)
    async with fake_openai(behaviour) as fake:
        provider = openai_provider(fake.url, models=("text-embedding-test",))
        async with running_gateway(make_config(providers=[provider], pricing=UP_PRICING)) as gw:
            client = gw.client()
            answer = await in_thread(
                client.embeddings.create,
                model="text-embedding-test",
                input=["one", "two"],
                dimensions=5,
                encoding_format="base64",
                user="end-user-7",
                extra_body={"some_future_field": {"kept": True}},
                extra_headers={"traceparent": TRACEPARENT, "X-Request-ID": "embed-1"},
            )
            floats = await in_thread(client.embeddings.create, model="up/text-embedding-test", input="one")
            _, settled = await settled_events(gw, 2)
    sent = fake.bodies[0]
    assert sent == {
        "model": "text-embedding-test",
        "input": ["one", "two"],
        "dimensions": 5,
        "encoding_format": "base64",
        "user": "end-user-7",
        "some_future_field": {"kept": True},
    }
    assert fake.headers[0]["authorization"] == "Bearer sk-fake-upstream"
    # the request id and the trace reach the upstream (the trace continued: same trace id, a new span)
    assert fake.headers[0]["x-request-id"] == "embed-1"
    assert fake.headers[0]["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    assert answer.model_extra["x_gateway"]["request_id"] == "embed-1"
    assert len(answer.data) == 2 and isinstance(answer.data[1].embedding, str)
    assert struct.unpack("<5f", base64.b64decode(answer.data[1].embedding)) == pytest.approx(
        [0.02, 0.04, 0.06, 0.08, 0.10]
    )
    # the SDK asks for base64 unless told otherwise, and decodes it (float32 precision)
    assert "encoding_format" not in fake.bodies[1] or fake.bodies[1]["encoding_format"] == "base64"
    assert floats.data[0].embedding == pytest.approx([0.01, 0.02, 0.03], abs=1e-7)
    assert answer.usage.prompt_tokens == 23 and answer.usage.total_tokens == 23
    for event in settled:
        assert (event.provider, event.served_model) == ("up", "text-embedding-test")
        assert (event.prompt_tokens, event.completion_tokens) == (23, 0)
        assert event.cost_usd == Decimal(23) * Decimal("0.02") / MTOK


async def test_upstream_usage_beyond_the_input_bound_is_billed_at_the_bound() -> None:
    """A hostile upstream cannot bill more input tokens than the request can hold."""
    async with fake_openai(Behaviour(prompt_tokens=10**9)) as fake:
        provider = openai_provider(fake.url, models=("text-embedding-test",))
        async with running_gateway(make_config(providers=[provider], pricing=UP_PRICING)) as gw:
            client = gw.client()
            answer = await in_thread(client.embeddings.create, model="text-embedding-test", input="abc")
            _, (event,) = await settled_events(gw, 1)
    bound = budget.prompt_upper_bound(3, 1)
    assert event.usage_source == "provider_capped" and event.prompt_tokens == bound
    assert answer.usage.prompt_tokens == bound and answer.usage.total_tokens == bound


async def test_a_failing_upstream_falls_back_to_the_next_provider() -> None:
    async with fake_openai(Behaviour(status=500)) as fake:
        providers = [
            openai_provider(fake.url, models=("text-embedding-test",)),
            {"name": "sim", "kind": "simulator", "models": ["text-embedding-test"]},
        ]
        async with running_gateway(make_config(providers=providers)) as gw:
            client = gw.client()
            answer = await in_thread(client.embeddings.create, model="text-embedding-test", input="fall back")
            events = await ledger_events(gw)
    assert answer.model_extra["x_gateway"]["provider"] == "sim"
    assert answer.model_extra["x_gateway"]["attempts"] == 2
    assert len(fake.bodies) == 1
    chain = [type(e).__name__ for e in events if isinstance(e, Request.Event)]
    assert chain == ["Admitted", "AttemptFailed", "Completed"]
    (failed,) = [e for e in events if isinstance(e, Request.AttemptFailed)]
    assert (failed.provider, failed.status, failed.retryable) == ("up", 500, True)


async def test_embeddings_bypass_the_response_cache_of_a_tenant_that_caches_everything() -> None:
    tenant = {"name": "demo", "api_key_sha256": hash_key(DEMO_KEY), "cache": "all", "cache_ttl_s": 600}
    async with running_gateway(make_config(tenants=[tenant], pricing=SIM_PRICING)) as gw:
        client = gw.client()
        chat = [await in_thread(client.chat.completions.with_raw_response.create, model="sim-1", messages=HI)]
        chat.append(await in_thread(client.chat.completions.with_raw_response.create, model="sim-1", messages=HI))
        embedded = [
            await in_thread(client.embeddings.with_raw_response.create, model="sim-1", input="same") for _ in range(2)
        ]
        events = await ledger_events(gw)
    assert [raw.headers["x-tollgate-cache"] for raw in chat] == ["miss", "hit"]  # the cache is on ...
    assert [raw.headers["x-tollgate-cache"] for raw in embedded] == ["bypass", "bypass"]  # ... and chat-only
    _, settled = embedding_events(events)
    assert [type(e).__name__ for e in settled] == ["Completed", "Completed"]
    assert all(e.cost_usd and e.cost_usd > 0 for e in settled)


async def test_embeddings_are_rate_limited_like_chat() -> None:
    tenant = {"name": "demo", "api_key_sha256": hash_key(DEMO_KEY), "rpm": 1}
    async with running_gateway(make_config(tenants=[tenant])) as gw:
        client = gw.client()
        await in_thread(client.embeddings.create, model="sim-1", input="first")
        with pytest.raises(openai.RateLimitError) as limited:
            await in_thread(client.embeddings.create, model="sim-1", input="second")
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"]
    assert limited.value.response.headers["x-ratelimit-limit-requests"] == "1"


async def test_a_client_leaving_is_settled_as_cancelled_with_its_input_estimate() -> None:
    """Fails without the embeddings case of `estimate_usage`: it counted chat messages, and an
    embeddings body has none (3 tokens, whatever the input)."""
    texts = ["a longer text to embed, " * 8, "and another"]
    async with fake_openai(Behaviour(first_byte_delay_s=3600)) as fake:
        provider = openai_provider(fake.url, models=("text-embedding-test",))
        async with running_gateway(make_config(providers=[provider], pricing=UP_PRICING)) as gw, gw.http() as http:
            body = {"model": "text-embedding-test", "input": texts}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(http.post, "/v1/embeddings", json=body, headers={"Authorization": f"Bearer {DEMO_KEY}"})
                )
                with trio.fail_after(10):
                    await fake.wait_for_requests(1)
                nursery.cancel_scope.cancel()  # the client hangs up while the upstream works
            events = await wait_for_events(gw, lambda events: bool(embedding_events(events)[1]))
    (cancelled,) = embedding_events(events)[1]
    assert isinstance(cancelled, Request.Cancelled) and cancelled.outcome == "client_disconnected"
    assert cancelled.usage_source == "estimated"
    assert (cancelled.prompt_tokens, cancelled.completion_tokens) == (estimate_input_tokens(texts), 0)
    assert cancelled.cost_usd == Decimal(estimate_input_tokens(texts)) * Decimal("0.02") / MTOK


async def test_an_upstream_refusing_the_body_is_passed_back_without_fallback() -> None:
    refusal = '{"error":{"message":"This model does not support dimensions","type":"invalid_request_error"}}'
    async with fake_openai(Behaviour(status=400, error_body=refusal)) as fake:
        providers = [
            openai_provider(fake.url, models=("text-embedding-test",)),
            {"name": "sim", "kind": "simulator", "models": ["text-embedding-test"]},
        ]
        async with running_gateway(make_config(providers=providers)) as gw:
            client = gw.client()
            with pytest.raises(openai.BadRequestError) as rejected:
                await in_thread(client.embeddings.create, model="text-embedding-test", input="x", dimensions=3)
            events = await ledger_events(gw)
    assert rejected.value.code == "upstream_rejected" and "dimensions" in rejected.value.message
    chain = [type(e).__name__ for e in events if isinstance(e, Request.Event)]
    assert chain == ["Admitted", "AttemptFailed", "Failed"]  # the simulator was not tried: the body is at fault
    (failed,) = embedding_events(events)[1]
    assert failed.outcome == "upstream_rejected" and failed.cost_usd == 0


# --- refusals ------------------------------------------------------------------------------------------------------


async def test_a_hard_budget_refuses_as_it_refuses_chat() -> None:
    poor = {"name": "poor", "api_key_sha256": hash_key("tg-poor"), "budget_usd": "0", "budget_mode": "hard"}
    demo = {"name": "demo", "api_key_sha256": hash_key(DEMO_KEY)}
    async with running_gateway(make_config(pricing=SIM_PRICING, tenants=[demo, poor])) as gw:
        client = gw.client("tg-poor")
        with pytest.raises(openai.APIStatusError) as chat:
            await in_thread(client.chat.completions.create, model="sim-1", messages=HI)
        with pytest.raises(openai.APIStatusError) as refused:
            await in_thread(client.embeddings.create, model="sim-1", input="x")
        events = await ledger_events(gw)
    assert refused.value.status_code == chat.value.status_code == 402
    assert refused.value.code == chat.value.code == "budget_exceeded"
    assert refused.value.type == "insufficient_quota"
    rejected = [e for e in events if isinstance(e, Request.Rejected)]
    assert [(e.operation, e.reason, e.status) for e in rejected] == [
        ("chat", "budget_exceeded", 402),
        ("embeddings", "budget_exceeded", 402),
    ]


async def test_a_budget_reserves_the_input_bound_and_no_output() -> None:
    """Fails without the `max_tokens == 0` rule in admission: the output limit was reserved too (at
    $99/Mtok), so a budget of a cent refused every embeddings request."""
    tenant = {"name": "frugal", "api_key_sha256": hash_key("tg-frugal"), "budget_usd": "0.01", "budget_mode": "hard"}
    async with running_gateway(make_config(pricing=SIM_PRICING, tenants=[tenant])) as gw:
        client = gw.client("tg-frugal")
        texts = ["déjà vu", "ledger"]
        await in_thread(client.embeddings.create, model="sim-1", input=texts)
        (admitted,), (event,) = await settled_events(gw, 1)
    bound = budget.prompt_upper_bound(len("déjà vu".encode()) + len("ledger"), 2)
    assert admitted.reserved_usd == Decimal(bound) * Decimal("0.13") / MTOK
    assert event.completion_tokens == 0


BAD_BODIES = [
    ({"model": "sim-1"}, "input", "missing_required_parameter"),
    ({"input": "x"}, "model", "missing_required_parameter"),
    ({"model": 3, "input": "x"}, "model", "invalid_type"),
    ({"model": "sim-1", "input": ""}, "input", "invalid_value"),
    ({"model": "sim-1", "input": []}, "input", "invalid_value"),
    ({"model": "sim-1", "input": {"text": "x"}}, "input", "invalid_type"),
    ({"model": "sim-1", "input": ["ok", 3]}, "input[1]", "invalid_type"),
    ({"model": "sim-1", "input": ["ok", ""]}, "input[1]", "invalid_value"),
    ({"model": "sim-1", "input": [[1, 2], []]}, "input[1]", "invalid_value"),
    ({"model": "sim-1", "input": [[1, "2"]]}, "input[0][1]", "invalid_type"),
    ({"model": "sim-1", "input": [1, -2]}, "input[1]", "invalid_type"),
    ({"model": "sim-1", "input": ["x"] * 2049}, "input", "invalid_value"),
    ({"model": "sim-1", "input": "x", "encoding_format": "hex"}, "encoding_format", "invalid_value"),
    ({"model": "sim-1", "input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
    ({"model": "sim-1", "input": "x", "dimensions": "8"}, "dimensions", "invalid_type"),
    ({"model": "sim-1", "input": "x", "dimensions": True}, "dimensions", "invalid_type"),
    ({"model": "sim-1", "input": "x", "user": 5}, "user", "invalid_type"),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD_BODIES)
def test_bad_bodies_name_the_field(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_embeddings_request(body)
    assert (refused.value.param, refused.value.code) == (param, code)


async def test_bad_input_is_a_400_in_openais_shape_and_recorded() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        key = {"Authorization": f"Bearer {DEMO_KEY}"}
        answers = [await http.post("/v1/embeddings", json=body, headers=key) for body, _, _ in BAD_BODIES[:8]]
        not_json = await http.post("/v1/embeddings", content=b"{nope", headers=key)
        unknown = await http.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=key)
        anonymous = await http.post("/v1/embeddings", json={"model": "sim-1", "input": "x"})
        client = gw.client()
        with pytest.raises(openai.BadRequestError) as sdk:
            await in_thread(client.embeddings.create, model="sim-1", input="")
        events = await ledger_events(gw)
    for answer, (_, param, code) in zip(answers, BAD_BODIES, strict=False):
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
        assert error["message"]
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
    assert sdk.value.param == "input"
    rejected = [e for e in events if isinstance(e, Request.Rejected)]
    assert len(rejected) == 8 + 3 and {e.operation for e in rejected} == {"embeddings"}
    assert not [e for e in events if isinstance(e, Request.Admitted)]


async def test_a_model_no_provider_of_which_embeds_is_model_not_embeddings() -> None:
    providers = [
        {"name": "claude", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "models": ["claude-test"]},
        {"name": "sim", "kind": "simulator", "models": ["sim-1"]},
    ]
    models = {
        "mixed": {
            "deployments": [{"provider": "claude", "model": "claude-test"}, {"provider": "sim", "model": "sim-1"}]
        }
    }
    async with running_gateway(make_config(providers=providers, models=models)) as gw:
        client = gw.client()
        with pytest.raises(openai.BadRequestError) as refused:
            await in_thread(client.embeddings.create, model="claude-test", input="x")
        mixed = await in_thread(client.embeddings.create, model="mixed", input="x")  # only its embedder serves
        events = await ledger_events(gw)
    assert refused.value.code == "model_not_embeddings" and refused.value.param == "model"
    assert refused.value.type == "invalid_request_error"
    assert mixed.model_extra["x_gateway"]["provider"] == "sim"
    (rejected,) = [e for e in events if isinstance(e, Request.Rejected)]
    assert (rejected.operation, rejected.reason, rejected.status) == ("embeddings", "model_not_embeddings", 400)


# --- the pure parts ------------------------------------------------------------------------------------------------


def test_admission_reserves_no_output_for_max_tokens_zero() -> None:
    chat = parse_embeddings_request({"model": "m", "input": ["ab", "cde"]})
    assert (chat.max_tokens, chat.inputs, chat.prompt_bytes, chat.message_count) == (0, 2, 5, 2)
    price = Price(Decimal("1"), Decimal("1000"))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    policy = TenantPolicy(budget_usd=Decimal("1"), budget_mode="hard")
    decided = admit(
        policy,
        TenantState(budget.BudgetState(start)),
        chat,
        4096,
        [Candidate(Deployment("p", "m"), price)],
        0.0,
        tenant="t",
    )
    assert isinstance(decided, Admitted)
    bound = budget.prompt_upper_bound(5, 2)
    assert decided.hold.usd == Decimal(bound) / MTOK and decided.hold.tokens == bound
    assert decided.output_cap is None and decided.usage_bounds.completion_tokens == 0


TEXTS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
TOKEN_IDS = st.lists(st.integers(0, 200_000), min_size=1, max_size=40)
INPUTS = st.one_of(
    TEXTS, st.lists(TEXTS, min_size=1, max_size=8), TOKEN_IDS, st.lists(TOKEN_IDS, min_size=1, max_size=8)
)


@settings(max_examples=200, deadline=None)
@given(INPUTS)
def test_the_reserved_input_bound_covers_the_estimate_and_every_tokenizer(value: Any) -> None:
    """One token per UTF-8 byte (no tokenizer makes more) or per token id: the bound admission reserves
    covers what settlement may bill as an estimate, and any provider's count."""
    chat = parse_embeddings_request({"model": "m", "input": value})
    bound = budget.prompt_upper_bound(chat.prompt_bytes, chat.message_count)
    items = [value] if isinstance(value, str) or isinstance(value[0], int) else value
    most = sum(len(item.encode()) if isinstance(item, str) else len(item) for item in items)
    assert estimate_input_tokens(value) <= most <= bound
    assert chat.max_tokens == 0 and chat.inputs == len(items)


# --- replay ------------------------------------------------------------------------------------------------------


async def test_replay_verify_is_clean_after_embeddings(tmp_path: Path) -> None:
    async with fake_openai(Behaviour(prompt_tokens=4)) as fake:
        providers = [
            openai_provider(fake.url, models=("text-embedding-test",)),
            {"name": "sim", "kind": "simulator", "models": ["sim-1"]},
        ]
        config = make_config(
            providers=providers, pricing={**SIM_PRICING, **UP_PRICING}, ledger={"path": str(tmp_path / "l.db")}
        )
        async with running_gateway(config) as gw:
            client = gw.client()
            for model in ("sim-1", "text-embedding-test"):
                await in_thread(client.embeddings.create, model=model, input=["a", "b"])
                await in_thread(client.chat.completions.create, model=model, messages=HI)
            with pytest.raises(openai.BadRequestError):
                await in_thread(client.embeddings.create, model="sim-1", input=[])
            gateway = gw.gateway
            await gateway.projector.wait_for(gateway.journal.position)
            problems = await trio.to_thread.run_sync(
                lambda: verify_open(gateway.store, gateway.projector.projections), limiter=gateway.projector._limiter
            )
    assert problems == []


# --- spend by operation --------------------------------------------------------------------------------------------

MIXED_PRICING = {"sim/sim-1": {"input_per_mtok": "3", "output_per_mtok": "15"}}
DOUBLED = {"sim/sim-1": {"input_per_mtok": "6", "output_per_mtok": "30"}}


def by_operation(events: list[Any]) -> dict[str, dict[str, Any]]:
    """What the ledger's events say each operation spent (requests, tokens, cost as restated)."""
    operation = {e.originator_id: e.operation for e in events if isinstance(e, Request.Admitted)}
    totals: dict[str, dict[str, Any]] = {}
    for event in events:
        if isinstance(event, Request.Settled | Request.CostRestated):
            row = totals.setdefault(operation[event.originator_id], {"requests": 0, "prompt_tokens": 0, "cost": ZERO})
        if isinstance(event, Request.Settled):
            row["requests"] += 1
            row["prompt_tokens"] += event.prompt_tokens
            row["cost"] += event.cost_usd
        elif isinstance(event, Request.CostRestated):
            row["cost"] += event.new_cost_usd - event.old_cost_usd
    return totals


async def test_spend_groups_by_operation_exactly_and_sums_to_the_total() -> None:
    """Fails before the spend projection knew each request's operation: `group_by=operation` was a 400."""
    async with running_gateway(make_config(pricing=MIXED_PRICING)) as gw, gw.http() as http:
        client = gw.client()
        claude = anthropic.Anthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0)
        try:
            for text in ("one", "two"):
                await in_thread(
                    client.chat.completions.create, model="sim-1", messages=[{"role": "user", "content": text}]
                )
                await in_thread(
                    claude.messages.create, model="sim-1", max_tokens=8, messages=[{"role": "user", "content": text}]
                )
            for texts in (["a", "bb"], "ccc", [[1, 2, 3]]):
                await in_thread(client.embeddings.create, model="sim-1", input=texts)
            await in_thread(client.responses.create, model="sim-1", input="respond")
        finally:
            claude.close()
        gateway = gw.gateway

        async def spend(**params: str) -> dict[str, Any]:
            await gateway.projector.wait_for(gateway.journal.position)
            answer = await http.get("/admin/spend", params=params, headers=ADMIN)
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            return body

        grouped, total = await spend(group_by="operation"), await spend(group_by="")
        recorded = by_operation(await ledger_events(gw))
        committed = await http.post("/admin/reprice", json={"prices": DOUBLED, "commit": True}, headers=ADMIN)
        assert committed.json()["committed"] is True, committed.text
        restated = await spend(group_by="operation,model")
        events = await ledger_events(gw)
        cli = await trio.to_thread.run_sync(
            lambda: tollgate("spend", "--group-by", "operation", "--url", gw.url, "--format", "json")
        )
    assert set(recorded) == {"chat", "messages", "embeddings", "responses"}
    assert {row["operation"]: row["requests"] for row in grouped["data"]} == {
        "chat": 2,
        "messages": 2,
        "embeddings": 3,
        "responses": 1,
    }
    for row in grouped["data"]:
        expected = recorded[row["operation"]]
        assert Decimal(row["cost_usd"]) == expected["cost"] > 0
        assert row["prompt_tokens"] == expected["prompt_tokens"]
    embeddings = next(row for row in grouped["data"] if row["operation"] == "embeddings")
    assert embeddings["completion_tokens"] == 0
    (whole,) = total["data"]
    assert sum(Decimal(row["cost_usd"]) for row in grouped["data"]) == Decimal(whole["cost_usd"])
    assert Decimal(grouped["totals"]["cost_usd"]) == Decimal(whole["cost_usd"])
    assert sum(row["requests"] for row in grouped["data"]) == whole["requests"] == 8
    # re-pricing restates each request under its own operation (CostRestated v2 carries it)
    restatements = [e for e in events if isinstance(e, Request.CostRestated)]
    admitted = {e.originator_id: e.operation for e in events if isinstance(e, Request.Admitted)}
    assert len(restatements) == 8 and all(e.operation == admitted[e.originator_id] for e in restatements)
    assert {row["operation"]: Decimal(row["cost_usd"]) for row in restated["data"]} == {
        operation: 2 * row["cost"] for operation, row in recorded.items()
    }
    assert {row["model"] for row in restated["data"]} == {"sim-1"}
    assert cli.returncode == 0, cli.stderr
    from_cli = {row["operation"]: Decimal(row["cost_usd"]) for row in json.loads(cli.stdout)["data"]}
    assert from_cli == {operation: 2 * row["cost"] for operation, row in recorded.items()}


async def test_group_by_a_field_the_projection_lacks_is_a_400_naming_operation() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        bad = await http.get("/admin/spend", params={"group_by": "colour"}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
    assert "operation" in bad.json()["error"]["message"]
