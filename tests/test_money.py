"""Money under attack: every billed input is reserved, `n` is counted, reported usage is bounded,
interrupted requests are flagged, and rate-limit refusals say what they mean."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.money import ZERO, usd
from events.request import Request
from events.store import LedgerStore
from events.usage import Usage
from policies import budget
from policies.cost import Price, cost_of
from policies.errors import InvalidRequest
from policies.usage import ABSURD_TOKENS, UsageBounds, billed_usage
from policies.validation import MAX_N, parse_chat_request
from providers.anthropic import normalise_usage
from runtime.auth import DEMO_KEY
from runtime.ledger.replay import verify_open
from tests.fake_openai import Behaviour, fake_openai
from tests.harness import ADMIN, ledger_events, make_config, openai_provider, running_gateway

PROMPT = [{"role": "user", "content": "hi"}]
TEN = {"up/gpt-test": {"input_per_mtok": "10", "output_per_mtok": "10"}}  # $0.00001 a token, in or out


async def new_tenant(http: httpx.AsyncClient, name: str, **policy: Any) -> dict[str, str]:
    created = await http.post("/admin/tenants", json={"name": name, **policy}, headers=ADMIN)
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['api_key']}"}


async def post_chat(http: httpx.AsyncClient, auth: dict[str, str], **extra: Any) -> httpx.Response:
    body = {"model": "gpt-test", "messages": PROMPT, **extra}
    return await http.post("/v1/chat/completions", json=body, headers=auth)


async def spent(http: httpx.AsyncClient, auth: dict[str, str]) -> Decimal:
    return Decimal((await http.get("/v1/usage", headers=auth)).json()["spent_usd"])


def settled(events: list[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, Request.Settled)]


# --- item 1: every billed input is in the reservation ------------------------------------------------

BIG_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": "d" * 1000,
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }
    for i in range(100)
]


def test_every_billed_field_raises_the_prompt_bound() -> None:
    def bound(**extra: Any) -> int:
        chat = parse_chat_request({"model": "m", "messages": PROMPT, **extra})
        return budget.prompt_upper_bound(chat.prompt_bytes, chat.message_count, chat.image_parts, chat.tool_count)

    plain = bound()
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"description": "s" * 5000}}}
    fields: dict[str, Any] = {
        "tools": BIG_TOOLS[:5],
        "functions": [{"name": "f", "description": "f" * 5000}],
        "response_format": schema,
        "tool_choice": {"type": "function", "function": {"name": "n" * 5000}},
    }
    for name, value in fields.items():
        assert bound(**{name: value}) >= plain + len(json.dumps(value)) - 16, name
    system = [
        {"role": "system", "content": "s" * 5000},
        {"role": "developer", "content": [{"type": "text", "text": "d" * 5000}]},
    ]
    chat = parse_chat_request(
        {"model": "m", "messages": [*system, {"role": "user", "content": "hi", "name": "n" * 5000}]}
    )
    assert budget.prompt_upper_bound(chat.prompt_bytes, chat.message_count) >= 15000
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}}
    chat = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": [image, image, image]}]})
    assert chat.image_parts == 3
    assert budget.prompt_upper_bound(chat.prompt_bytes, 1, chat.image_parts) >= 3 * budget.IMAGE_PART_TOKENS
    assert budget.IMAGE_PART_TOKENS >= 2489  # above the largest documented per-image cost (see policies.budget)


async def test_a_tool_heavy_request_cannot_overspend_a_hard_budget() -> None:
    # ~100 KB of tools is ~25 000 billed prompt tokens: $0.25 at $10/M against a $0.05 budget.
    behaviour = Behaviour(prompt_tokens=25_000, completion_tokens=5)
    async with (
        fake_openai(behaviour) as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)], pricing=TEN)) as gw,
        gw.http() as http,
    ):
        auth = await new_tenant(http, "tools", budget_usd="0.05")
        refused = await post_chat(http, auth, tools=BIG_TOOLS, max_tokens=5)
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"]["code"] == "budget_exceeded"
        assert fake.bodies == [] and await spent(http, auth) == 0
        small = await post_chat(http, auth, tools=BIG_TOOLS[:1], max_tokens=5)  # 1 KB fits: about $0.02
        assert small.status_code == 200


# --- item 2: n -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, MAX_N + 1, "2", 1.5, True])
def test_n_must_be_an_integer_from_1_to_the_maximum(n: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request({"model": "m", "messages": PROMPT, "n": n})
    assert caught.value.param == "n"
    assert parse_chat_request({"model": "m", "messages": PROMPT, "n": MAX_N}).n == MAX_N


async def test_n_multiplies_the_reserved_output() -> None:
    # 16 choices × 100 tokens = 1 600 output tokens = $0.016 > $0.01; one choice would fit.
    behaviour = Behaviour(prompt_tokens=9, completion_tokens=1600)
    async with (
        fake_openai(behaviour) as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)], pricing=TEN)) as gw,
        gw.http() as http,
    ):
        auth = await new_tenant(http, "many", budget_usd="0.01")
        refused = await post_chat(http, auth, n=16, max_tokens=100)
        assert refused.status_code == 402, refused.text
        assert fake.bodies == [] and await spent(http, auth) == 0
        bad = await post_chat(http, auth, n=1000)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "n"
        fake.behaviour = Behaviour(prompt_tokens=9, completion_tokens=400)
        ok = await post_chat(http, auth, n=4, max_tokens=100)  # 400 tokens: $0.004 reserved and spent
        assert ok.status_code == 200
        admitted = [e for e in await ledger_events(gw) if isinstance(e, Request.Admitted)]
        assert admitted[-1].reserved_usd >= Decimal("0.004")
        assert [e.usage_source for e in settled(await ledger_events(gw))] == ["provider"]


async def test_the_hard_budget_output_cap_counts_every_choice() -> None:
    provider = openai_provider("", max_output_tokens=50)
    async with fake_openai(Behaviour(prompt_tokens=9, completion_tokens=200)) as fake:
        provider["base_url"] = fake.url
        async with (
            running_gateway(make_config(providers=[provider], pricing=TEN)) as gw,
            gw.http() as http,
        ):
            auth = await new_tenant(http, "capped", budget_usd="1")
            ok = await post_chat(http, auth, n=4)
            assert ok.status_code == 200
            assert fake.bodies[0]["max_tokens"] == 50  # per choice
            admitted = [e for e in await ledger_events(gw) if isinstance(e, Request.Admitted)][-1]
            assert admitted.reserved_usd >= usd(Decimal(200 * 10) / 1_000_000)
            (done,) = settled(await ledger_events(gw))
            assert (done.completion_tokens, done.usage_source) == (200, "provider")  # 4 × 50: within


# --- item 3: reported usage is bounded --------------------------------------------------------------------

HOSTILE: list[tuple[str, Any, str]] = [
    ("huge", {"prompt_tokens": 10**15, "completion_tokens": 10**15, "total_tokens": 2 * 10**15}, "provider_capped"),
    (
        "negative",
        {"prompt_tokens": -1_000_000, "completion_tokens": -5, "total_tokens": -1_000_005},
        "provider_invalid",
    ),
    (
        "cached_above_prompt",
        {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 50}},
        "provider_invalid",
    ),
    ("floats", {"prompt_tokens": 1.5, "completion_tokens": 2.0}, "provider_invalid"),
    ("strings", {"prompt_tokens": "9", "completion_tokens": "7"}, "provider_invalid"),
    ("bools", {"prompt_tokens": True, "completion_tokens": False}, "provider_invalid"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("name", "usage", "source"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_upstream_usage_never_lowers_spend_nor_breaks_a_hard_budget(
    name: str, usage: Any, source: str, stream: bool
) -> None:
    async with (
        fake_openai(Behaviour(usage=usage)) as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)], pricing=TEN)) as gw,
        gw.http() as http,
    ):
        auth = await new_tenant(http, "victim", budget_usd="0.01")
        before = ZERO
        for _ in range(3):
            response = await post_chat(http, auth, max_tokens=50, stream=stream)
            assert response.status_code == 200, response.text
            now = await spent(http, auth)
            assert before <= now <= Decimal("0.01")
            before = now
        events = await ledger_events(gw)
        reserved = [e.reserved_usd for e in events if isinstance(e, Request.Admitted)]
        done = settled(events)
        assert [e.usage_source for e in done] == [source] * 3
        for event, limit in zip(done, reserved, strict=True):
            assert event.cost_usd is not None and ZERO <= event.cost_usd <= limit
            assert 0 <= event.completion_tokens <= 50 and event.prompt_tokens >= 0
            assert event.cost_usd == cost_of(
                Usage(event.prompt_tokens, event.completion_tokens, event.cached_tokens),
                Price(Decimal(10), Decimal(10)),
            ), "the recorded cost is recomputable from the recorded counts"
        # The provider's own figures are in the ledger as they came (floats as text), flagged by the
        # source, and shown where a person audits the request.
        claim = {k: repr(v) if isinstance(v, float) else v for k, v in usage.items()}
        assert [e.reported_usage for e in done] == [claim] * 3
        audit = (await http.get("/admin/events", params={"tenant": "victim"}, headers=ADMIN)).json()["data"]
        shown = [e["data"] for e in audit if e["type"] in ("Request.Completed", "Request.Failed")]
        assert [(d["usage_source"], d["reported_usage"]) for d in shown] == [(source, claim)] * 3
        gateway = gw.gateway
        await gateway.projector.wait_for(gateway.journal.position)
        problems = await trio.to_thread.run_sync(
            lambda: verify_open(gateway.store, gateway.projector.projections), limiter=gateway.projector._limiter
        )
        assert problems == [], "replay --verify stays clean"


counts = st.one_of(
    st.integers(-(10**18), 10**18),
    st.integers(0, 10_000),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
hostile_usage = st.one_of(
    st.none(),
    st.integers(),
    st.fixed_dictionaries(
        {},
        optional={
            "prompt_tokens": counts,
            "completion_tokens": counts,
            "total_tokens": counts,
            "prompt_tokens_details": st.one_of(counts, st.fixed_dictionaries({}, optional={"cached_tokens": counts})),
        },
    ),
)
anthropic_usage = st.fixed_dictionaries(
    {},
    optional={
        k: counts for k in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    },
)
rates = st.decimals(min_value=0, max_value=1000, places=3, allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reported=st.one_of(hostile_usage.map(Usage.from_openai), anthropic_usage.map(normalise_usage)),
    prompt_bound=st.integers(1, 10**6),
    output_bound=st.one_of(st.none(), st.integers(1, 10**6)),
    delivered=st.integers(0, 10**6),
    price=st.builds(Price, rates, rates, st.one_of(st.none(), rates)),
    budget_usd=st.decimals(min_value=0, max_value=100, places=9, allow_nan=False, allow_infinity=False),
    spent_before=st.decimals(min_value=0, max_value=100, places=9, allow_nan=False, allow_infinity=False),
)
def test_no_hostile_usage_lowers_spend_or_exceeds_a_hard_budget(
    reported: Usage | None,
    prompt_bound: int,
    output_bound: int | None,
    delivered: int,
    price: Price,
    budget_usd: Decimal,
    spent_before: Decimal,
) -> None:
    """The documented bound for hard budgets is 0: whatever the upstream reports."""
    bounds = UsageBounds(prompt_bound, output_bound)
    estimate = Usage(prompt_bound // 2, delivered // 4, 0, "estimated")
    billed = billed_usage(reported, estimate, bounds)
    for value in (billed.prompt_tokens, billed.completion_tokens, billed.cached_tokens):
        assert type(value) is int and value >= 0
    assert billed.cached_tokens <= billed.prompt_tokens <= prompt_bound
    assert billed.completion_tokens <= (ABSURD_TOKENS if output_bound is None else output_bound)
    cost = cost_of(billed, price)
    state = budget.BudgetState(datetime(2026, 1, 1, tzinfo=UTC), usd(spent_before))
    settled_state = budget.settle(state, ZERO, cost)
    assert settled_state.spent >= state.spent
    if output_bound is not None:  # a hard budget always bounds the output
        worst = budget.worst_case_cost(prompt_bound, output_bound, price)
        reservation = budget.reserve(budget_usd, "hard", state, worst)
        if reservation.allowed:
            after = budget.settle(reservation.state, worst, cost)
            assert state.spent <= after.spent <= budget_usd
            assert after.reserved == 0


# --- item 5: interrupted requests are flagged in spend reports --------------------------------------------


async def test_interrupted_requests_are_flagged_in_spend_reports(tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger.sqlite3")
    store = LedgerStore(ledger)
    left_open = Request.admit("left-open", "demo", "sim-1", False, Decimal("0.5"), datetime.now(UTC))
    store.append([left_open])  # a crash between admission and settlement
    store.close()
    async with running_gateway(make_config(ledger={"path": ledger})) as gw, gw.http() as http:
        auth = {"Authorization": f"Bearer {DEMO_KEY}"}
        assert (
            await http.post("/v1/chat/completions", json={"model": "sim-1", "messages": PROMPT}, headers=auth)
        ).status_code == 200
        report = (await http.get("/admin/spend", headers=ADMIN)).json()
        rows = sorted((row["provider"], row["interrupted_unknown_usage"]) for row in report["data"])
        assert rows == [("-", 1), ("sim", 0)]
        assert report["totals"]["interrupted_unknown_usage"] == 1 and report["totals"]["requests"] == 2
        usage = (await http.get("/v1/usage", headers=auth)).json()
        assert usage["interrupted_unknown_usage"] == 1 and usage["requests"] == 2
        by_tenant = (await http.get("/admin/spend", params={"group_by": "tenant"}, headers=ADMIN)).json()
        assert [row["interrupted_unknown_usage"] for row in by_tenant["data"]] == [1]


# --- item 20 (part): rate-limit messages -------------------------------------------------------------------


async def test_a_zero_rpm_refusal_names_no_token_count_and_quotes_once() -> None:
    async with running_gateway(make_config()) as gw, gw.http() as http:
        auth = await new_tenant(http, "rl-0", rpm=0)
        body = {"model": "sim-1", "messages": PROMPT}
        refused = await http.post("/v1/chat/completions", json=body, headers=auth)
        assert refused.status_code == 429
        message = refused.json()["error"]["message"]
        assert message == "Tenant 'rl-0' has a requests-per-minute limit of 0, so no amount of waiting admits it."
        tokens = await new_tenant(http, "tpm-1", tpm=1)
        too_big = (await http.post("/v1/chat/completions", json=body, headers=tokens)).json()["error"]["message"]
        assert "tokens-per-minute limit of tenant 'tpm-1' (1)" in too_big and "''" not in too_big


ANTHROPIC_HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("negative_input", {"input_tokens": -1_000_000}, "provider_invalid"),
    ("string_input", {"input_tokens": "9"}, "provider_invalid"),
    ("huge_output", {"output_tokens": 10**15}, "provider_capped"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("name", "fields", "source"), ANTHROPIC_HOSTILE, ids=[h[0] for h in ANTHROPIC_HOSTILE])
async def test_hostile_anthropic_usage_is_bounded_too(
    name: str, fields: dict[str, Any], source: str, stream: bool
) -> None:
    from tests.fake_anthropic import Behaviour as AnthropicBehaviour
    from tests.fake_anthropic import fake_anthropic

    async with fake_anthropic(AnthropicBehaviour(**fields)) as fake:
        provider = {"name": "claude", "kind": "anthropic", "base_url": fake.url, "api_key_env": "FAKE_KEY"}
        pricing = {"claude/claude-test": {"input_per_mtok": "10", "output_per_mtok": "10"}}
        config = make_config(providers=[{**provider, "models": ["claude-test"]}], pricing=pricing)
        async with running_gateway(config) as gw, gw.http() as http:
            auth = await new_tenant(http, "victim", budget_usd="0.01")
            body = {"model": "claude-test", "messages": PROMPT, "max_tokens": 50, "stream": stream}
            response = await http.post("/v1/chat/completions", json=body, headers=auth)
            assert response.status_code == 200, response.text
            assert ZERO <= await spent(http, auth) <= Decimal("0.01")
            events = await ledger_events(gw)
            (reserved,) = [e.reserved_usd for e in events if isinstance(e, Request.Admitted)]
            (done,) = settled(events)
            assert done.usage_source == source
            assert done.reported_usage is not None  # the provider's own figures, as it sent them
            assert {k: done.reported_usage.get(k) for k in fields} == fields
            assert done.cost_usd is not None and ZERO <= done.cost_usd <= reserved
            assert 0 <= done.completion_tokens <= 50 and done.prompt_tokens >= 0


# --- admission prices the worst case where settlement prices the request: at its receipt -------------------


class TickingClock:
    """Wall time that moves one second on every read: each reader sees a later moment than the last."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.reads = 0

    def __call__(self) -> datetime:
        self.reads += 1
        return self.start + timedelta(seconds=self.reads - 1)

    def next_read(self) -> datetime:
        return self.start + timedelta(seconds=self.reads)


async def test_a_price_change_between_receipt_and_admission_cannot_overspend_a_hard_budget() -> None:
    # $1000/M when the request arrives, $10/M from half a second later (a price change scheduled for
    # then). Settlement prices at receipt; admission, one clock read later, must too: reserving at the
    # later, lower price let a $0.059 answer through a $0.01 budget.
    clock = TickingClock(datetime(2026, 10, 1, 12, tzinfo=UTC))
    behaviour = Behaviour(prompt_tokens=9, completion_tokens=50)
    async with (
        fake_openai(behaviour) as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)]), clock=clock) as gw,
        gw.http() as http,
    ):
        auth = await new_tenant(http, "scheduled", budget_usd="0.01")
        high = {"input_per_mtok": "1000", "output_per_mtok": "1000"}
        low = {"input_per_mtok": "10", "output_per_mtok": "10"}
        for price, at in ((high, clock.start - timedelta(days=1)), (low, None)):
            at = at or clock.next_read() + timedelta(seconds=0.5)
            put = await http.put(
                "/admin/pricing",
                json={"prices": {"up/gpt-test": price}, "effective_from": at.isoformat()},
                headers=ADMIN,
            )
            assert put.status_code == 200, put.text
        received = clock.next_read()
        response = await post_chat(http, auth, max_tokens=50)
        assert clock.reads > 1 + (received - clock.start).total_seconds(), "admission read the clock after receipt"
        assert await spent(http, auth) <= Decimal("0.01")
        assert response.status_code == 402, response.text  # the worst case at $1000/M: above $0.01
        assert fake.bodies == []
        (rejected,) = [e for e in await ledger_events(gw) if isinstance(e, Request.Rejected)]
        assert rejected.received_at == received and rejected.reason == "budget_exceeded"


@pytest.mark.parametrize("where", ["standalone", "on_content", "complete"])
@pytest.mark.parametrize(("name", "usage", "source"), HOSTILE[:2], ids=[h[0] for h in HOSTILE[:2]])
async def test_the_usage_a_client_is_shown_is_what_was_billed(name: str, usage: Any, source: str, where: str) -> None:
    fault = "usage_on_last_content" if where == "on_content" else None
    async with (
        fake_openai(Behaviour(usage=usage, fault=fault)) as fake,
        running_gateway(make_config(providers=[openai_provider(fake.url)], pricing=TEN)) as gw,
        gw.http() as http,
    ):
        auth = await new_tenant(http, "shown", budget_usd="0.01")
        if where == "complete":
            answer = await post_chat(http, auth, max_tokens=50)
            assert answer.status_code == 200, answer.text
            (done,) = settled(await ledger_events(gw))
            assert done.usage_source == source
            billed = Usage(done.prompt_tokens, done.completion_tokens, done.cached_tokens).as_openai()
            assert answer.json()["usage"] == billed
            return
        response = await post_chat(http, auth, max_tokens=50, stream=True, stream_options={"include_usage": True})
        assert response.status_code == 200, response.text
        lines = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        closing = json.loads(lines[-2])
        (done,) = settled(await ledger_events(gw))
        assert done.usage_source == source
        billed = Usage(done.prompt_tokens, done.completion_tokens, done.cached_tokens).as_openai()
        assert closing["usage"] == billed
        assert all(json.loads(line).get("usage") is None for line in lines[:-2])
