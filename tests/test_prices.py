"""Prices with cache-write rates, a long-context tier and a per-request fee (issue #17, Prices)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from events.pricelist import PriceList
from events.projections import Projections
from events.request import Request
from events.store import LedgerStore
from events.usage import Usage
from policies.budget import worst_case_cost
from policies.cost import LongContext, Price, cost_of, price_fields, price_from_fields
from policies.usage import UsageBounds, billed_usage, is_valid
from providers.anthropic import normalise_usage
from runtime.config import ConfigError
from runtime.http.dashboard import price_toml, reprice_body
from runtime.ledger.projector import catch_up
from runtime.ledger.replay import verify_open
from runtime.ledger.reprice import parse_prices
from tests.fake_anthropic import Behaviour, fake_anthropic
from tests.harness import ADMIN, ADMIN_KEY, in_thread, ledger_events, make_config, running_gateway, wait_for_events

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "Say something about ledgers. " * 80}]  # room for 1600 prompt tokens
D = Decimal
# Claude Sonnet 4's list prices: cache writes 1.25× (5 minutes) and 2× (1 hour) the input rate.
SONNET = Price(D(3), D(15), D("0.30"), D("3.75"), D(6))


def test_cache_reads_and_writes_are_each_billed_at_their_own_rate() -> None:
    usage = Usage(1000 + 400 + 200, 10, 400, cache_write_tokens=200, cache_write_1h_tokens=50)
    expected = (1000 * D(3) + 400 * D("0.30") + 150 * D("3.75") + 50 * D(6) + 10 * D(15)) / 1_000_000
    assert cost_of(usage, SONNET) == expected
    plain = Price(D(3), D(15))
    assert cost_of(usage, plain) == (1600 * D(3) + 10 * D(15)) / 1_000_000, "rates left out default to input"


def test_the_one_hour_rate_defaults_to_the_five_minute_rate() -> None:
    price = Price(D(1), D(1), cache_write_per_mtok=D(2))
    usage = Usage(100, 0, 0, cache_write_tokens=100, cache_write_1h_tokens=100)
    assert cost_of(usage, price) == D(200) / 1_000_000


def test_a_long_context_tier_prices_the_whole_request_above_its_threshold() -> None:
    tier = LongContext(200_000, D(6), D("22.50"), cache_write_per_mtok=D("7.50"))
    price = Price(D(3), D(15), D("0.30"), D("3.75"), per_request_usd=D("0.001"), long_context=tier)
    at = Usage(200_000, 1000, 0)
    above = Usage(200_001, 1000, 1, cache_write_tokens=10)
    assert cost_of(at, price) == (200_000 * D(3) + 1000 * D(15)) / 1_000_000 + D("0.001")
    tiered = (199_990 * D(6) + 1 * D("0.30") + 10 * D("7.50") + 1000 * D("22.50")) / 1_000_000 + D("0.001")
    assert cost_of(above, price) == tiered, "cached rate kept from the base price when the tier leaves it out"


def test_price_fields_round_trip() -> None:
    tier = LongContext(128_000, D(2), D(8), D("0.5"), None, D(9))
    for price in (SONNET, Price(D(1), D(2)), Price(D(1), D(2), per_request_usd=D("0.01"), long_context=tier)):
        assert price_from_fields(price_fields(price)) == price


rates = st.decimals(min_value=0, max_value=100, places=3)
maybe_rate = st.one_of(st.none(), rates)
tiers = st.one_of(
    st.none(), st.builds(LongContext, st.integers(0, 5000), rates, rates, maybe_rate, maybe_rate, maybe_rate)
)
prices = st.builds(Price, rates, rates, maybe_rate, maybe_rate, maybe_rate, maybe_rate, tiers)


@st.composite
def usages_within(draw: st.DrawFn) -> tuple[Usage, int, int]:
    prompt_bound, output_bound = draw(st.integers(0, 10_000)), draw(st.integers(0, 10_000))
    prompt = draw(st.integers(0, prompt_bound))
    cached = draw(st.integers(0, prompt))
    written = draw(st.integers(0, prompt - cached))
    usage = Usage(
        prompt, draw(st.integers(0, output_bound)), cached, "provider", None, written, draw(st.integers(0, written))
    )
    return usage, prompt_bound, output_bound


@given(prices, usages_within())
def test_the_reservation_covers_every_way_the_prompt_can_be_billed(price: Price, drawn: tuple[Usage, int, int]) -> None:
    usage, prompt_bound, output_bound = drawn
    assert is_valid(usage)
    assert cost_of(usage, price) <= worst_case_cost(prompt_bound, output_bound, price)


def test_the_reservation_is_at_the_cache_write_rate_when_it_is_the_dearest() -> None:
    """Before: the worst case took max(input, cached), so 1000 prompt tokens all written to the
    cache for an hour (2× input) cost more than was reserved."""
    assert worst_case_cost(1000, 0, SONNET) == 1000 * D(6) / 1_000_000
    tier = Price(D(1), D(1), long_context=LongContext(10, D(4), D(5)), per_request_usd=D("0.5"))
    assert worst_case_cost(1000, 100, tier) == (1000 * D(4) + 100 * D(5)) / 1_000_000 + D("0.5")


@pytest.mark.parametrize(
    "usage",
    [
        Usage(10, 0, 5, cache_write_tokens=6),  # reads and writes beyond the prompt
        Usage(10, 0, 0, cache_write_tokens=2, cache_write_1h_tokens=3),  # more 1-hour writes than writes
        Usage(10, 0, 0, cache_write_tokens=-1),
        Usage(10, 0, 0, cache_write_tokens=True),  # type: ignore[arg-type]
    ],
)
def test_cache_write_counts_that_cannot_be_true_are_not_billed(usage: Usage) -> None:
    assert not is_valid(usage)
    estimate = Usage(20, 3, 0)
    billed = billed_usage(usage, estimate, UsageBounds())
    assert billed.source == "provider_invalid" and billed.cache_write_tokens == 0


def test_a_capped_prompt_drops_its_cache_writes() -> None:
    billed = billed_usage(
        Usage(100, 0, 0, cache_write_tokens=90, cache_write_1h_tokens=90), Usage(1, 1), UsageBounds(50)
    )
    assert (billed.source, billed.prompt_tokens, billed.cache_write_tokens, billed.cache_write_1h_tokens) == (
        "provider_capped",
        50,
        0,
        0,
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"input_tokens": 5, "cache_creation_input_tokens": 20, "output_tokens": 1}, (25, 0, 20, 0)),
        (
            {
                "input_tokens": 5,
                "cache_read_input_tokens": 7,
                "cache_creation_input_tokens": 20,
                "cache_creation": {"ephemeral_5m_input_tokens": 12, "ephemeral_1h_input_tokens": 8},
                "output_tokens": 1,
            },
            (32, 7, 20, 8),
        ),
    ],
)
def test_anthropic_usage_reads_cache_writes_and_their_one_hour_part(
    raw: dict[str, Any], expected: tuple[int, int, int, int]
) -> None:
    usage = normalise_usage(raw)
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens) == expected


@pytest.mark.parametrize("split", ["lots", {"ephemeral_1h_input_tokens": -1}, {"ephemeral_1h_input_tokens": 1.5}])
def test_an_unreadable_cache_creation_split_is_invalid(split: Any) -> None:
    raw = {"input_tokens": 5, "cache_creation_input_tokens": 20, "cache_creation": split}
    assert normalise_usage(raw).source == "provider_invalid"


def anthropic_provider(fake_url: str) -> dict[str, Any]:
    return {
        "name": "claude",
        "kind": "anthropic",
        "base_url": fake_url,
        "api_key_env": "FAKE_KEY",
        "models": ["claude-test"],
    }


SONNET_TOML = {"input_per_mtok": "3", "output_per_mtok": "15", "cached_input_per_mtok": "0.30"}


@pytest.mark.parametrize("stream", [False, True])
async def test_gateway_bills_anthropic_cache_writes_at_their_rates(stream: bool) -> None:
    behaviour = Behaviour(
        input_tokens=100,
        cache_read_input_tokens=1000,
        cache_creation_input_tokens=500,
        cache_creation_1h_input_tokens=200,
    )
    pricing = {
        "claude/claude-test": {
            **SONNET_TOML,
            "cache_write_per_mtok": "3.75",
            "cache_write_1h_per_mtok": "6",
            "per_request_usd": "0.0001",
        }
    }
    async with fake_anthropic(behaviour) as fake:
        config = make_config(providers=[anthropic_provider(fake.url)], pricing=pricing)
        async with running_gateway(config) as gw:
            client = gw.client()
            if stream:
                chunks = await in_thread(
                    lambda: list(
                        client.chat.completions.create(
                            model="claude-test", messages=PROMPT, stream=True, stream_options={"include_usage": True}
                        )
                    )
                )
                usage = chunks[-1].usage
            else:
                completion = await in_thread(client.chat.completions.create, model="claude-test", messages=PROMPT)
                usage = completion.usage
            events = await wait_for_events(gw, lambda es: any(isinstance(e, Request.Completed) for e in es))
    assert usage is not None and usage.prompt_tokens == 1600
    [done] = [e for e in events if isinstance(e, Request.Completed)]
    assert (done.cached_tokens, done.cache_write_tokens, done.cache_write_1h_tokens) == (1000, 500, 200)
    output = done.completion_tokens
    expected = (100 * D(3) + 1000 * D("0.30") + 300 * D("3.75") + 200 * D(6) + output * D(15)) / 1_000_000
    assert done.cost_usd == expected + D("0.0001")


async def test_admin_pricing_sets_and_shows_every_field() -> None:
    async with (
        running_gateway(make_config(pricing={"sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}})) as gw,
        gw.http() as http,
    ):
        body = {
            "prices": {
                "sim/sim-1": {
                    "input_per_mtok": "3",
                    "output_per_mtok": "15",
                    "cache_write_per_mtok": "3.75",
                    "cache_write_1h_per_mtok": "6",
                    "per_request_usd": "0.01",
                    "long_context": {"above_prompt_tokens": 200000, "input_per_mtok": "6", "output_per_mtok": "22.5"},
                }
            }
        }
        put = await http.put("/admin/pricing", json=body, headers=ADMIN)
        assert put.status_code == 200, put.text
        [shown] = (await http.get("/admin/pricing", headers=ADMIN)).json()["data"]
        assert (shown["cache_write_per_mtok"], shown["cache_write_1h_per_mtok"], shown["per_request_usd"]) == (
            "3.75",
            "6",
            "0.01",
        )
        assert shown["long_context"]["above_prompt_tokens"] == 200000
        assert shown["long_context"]["input_per_mtok"] == "6"
        assert shown["long_context"]["cached_input_per_mtok"] is None
        entry = gw.gateway.books.prices.lookup("sim", "sim-1", gw.gateway.clock())
        assert entry is not None and entry.price == price_from_fields(
            {
                "input_per_mtok": D(3),
                "output_per_mtok": D(15),
                "cache_write_per_mtok": D("3.75"),
                "cache_write_1h_per_mtok": D(6),
                "per_request_usd": D("0.01"),
                "long_context_above_prompt_tokens": 200000,
                "long_context_input_per_mtok": D(6),
                "long_context_output_per_mtok": D("22.5"),
            }
        )
        for bad in (
            {
                "input_per_mtok": "1",
                "output_per_mtok": "1",
                "long_context": {"input_per_mtok": "2", "output_per_mtok": "2"},
            },
            {"input_per_mtok": "1", "output_per_mtok": "1", "cache_write_per_mtok": "-1"},
            {"input_per_mtok": "1", "output_per_mtok": "1", "cache_write_per_mtok": 1.25},
            {
                "input_per_mtok": "1",
                "output_per_mtok": "1",
                "long_context": {"above_prompt_tokens": -5, "input_per_mtok": "2", "output_per_mtok": "2"},
            },
            {"input_per_mtok": "1", "output_per_mtok": "1", "cache_wrte_per_mtok": "1"},
        ):
            response = await http.put("/admin/pricing", json={"prices": {"sim/sim-1": bad}}, headers=ADMIN)
            assert response.status_code == 400, (bad, response.text)
            assert response.json()["error"]["param"] == "prices.sim/sim-1"


def test_config_pricing_takes_the_new_fields_and_refuses_bad_ones() -> None:
    tier = {"above_prompt_tokens": 200000, "input_per_mtok": "6", "output_per_mtok": "22.5"}
    config = make_config(pricing={"sim/sim-1": {**SONNET_TOML, "cache_write_per_mtok": "3.75", "long_context": tier}})
    price = config.pricing["sim/sim-1"]
    assert price.cache_write_per_mtok == D("3.75") and price.long_context == LongContext(200000, D(6), D("22.5"))
    with pytest.raises(ConfigError, match="long_context"):
        make_config(
            pricing={"sim/sim-1": {**SONNET_TOML, "long_context": {"input_per_mtok": "6", "output_per_mtok": "1"}}}
        )


async def test_a_request_the_gateway_stopped_under_has_unknown_usage_not_zero_cost(tmp_path: Path) -> None:
    """Before: crash recovery recorded it with cost $0 (usage_source `estimated`), a $0 that is not true."""
    ledger = str(tmp_path / "ledger.sqlite3")
    store = LedgerStore(ledger)
    left_open = Request.admit("left-open", "demo", "sim-1", False, D("0.5"), datetime.now(UTC))
    store.append([left_open])  # a crash between admission and settlement
    store.close()
    pricing = {"sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}}
    async with running_gateway(make_config(ledger={"path": ledger}, pricing=pricing)) as gw, gw.http() as http:
        events = await ledger_events(gw)
        [failed] = [e for e in events if isinstance(e, Request.Failed)]
        assert (failed.outcome, failed.usage_source, failed.cost_usd) == ("interrupted", "unknown", None)
        report = (await http.get("/admin/spend", headers=ADMIN)).json()["totals"]
        assert (report["interrupted_unknown_usage"], report["unpriced"]) == (1, 0), "unknown is not unpriced"
        repriced = (await http.post("/admin/reprice", json={"ledger": True, "commit": True}, headers=ADMIN)).json()
        assert repriced["totals"]["restated"] == 0, "re-pricing never turns an unknown usage into $0"
        assert not [e for e in await ledger_events(gw) if isinstance(e, Request.CostRestated)]


def _settled(
    request_id: str, prompt: int, cached: int, written: int, cost: Decimal | None, source: str, ref: str | None = None
) -> Request:
    request = Request.admit(request_id, "demo", "sim-1", False, D("0.5"), datetime.now(UTC))
    request.settle(
        Request.Completed,
        provider="sim",
        served_model="sim-1",
        prompt_tokens=prompt,
        completion_tokens=0,
        cached_tokens=cached,
        cache_write_tokens=written,
        cache_write_1h_tokens=0,
        usage_source=source,
        cost_usd=cost,
        price_ref=ref,
        latency_us=0,
        overhead_us=0,
        outcome="ok",
    )
    return request


def test_replay_verify_checks_token_semantics(tmp_path: Path) -> None:
    store = LedgerStore(str(tmp_path / "ledger.sqlite3"))
    live = Projections(":memory:")
    try:
        free = PriceList.open()
        moment = datetime(2026, 1, 1, tzinfo=UTC)
        free.set_price("sim/free", moment, "api", **price_fields(Price(D(0), D(0))))
        fine = [
            free,
            _settled("at-a-free-price", 10, 0, 0, D(0), "provider", f"sim/free@{moment.isoformat()}"),
            _settled("priced", 10, 2, 3, D("0.01"), "provider"),
            _settled("unpriced", 10, 0, 0, None, "provider"),
            _settled("unknown", 0, 0, 0, None, "unknown"),
        ]
        store.append(fine)
        catch_up(store, live)
        assert verify_open(store, live) == []
        overlap = _settled("overlap", 10, 6, 5, D("0.01"), "provider")
        store.append([overlap, _settled("free", 10, 0, 0, D(0), "provider")])
        catch_up(store, live)
        problems = verify_open(store, live)
        assert len(problems) == 2
        assert "exceed its prompt tokens" in problems[0] and "10 tokens at a cost of 0" in problems[1]
    finally:
        store.close()
        live.close()


async def test_cli_sets_every_price_field() -> None:
    async with running_gateway(make_config()) as gw:
        tier = '{"above_prompt_tokens": 200000, "input_per_mtok": "6", "output_per_mtok": "22.5"}'
        args = ["--cache-write", "3.75", "--cache-write-1h", "6", "--per-request", "0.01", "--long-context", tier]
        command = [sys.executable, "-m", "runtime.cli", "pricing", "set", "sim/sim-1", "--input", "3", "--output", "15"]
        env = {**os.environ, "TOLLGATE_ADMIN_KEY": ADMIN_KEY}
        run = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [*command, *args, "--url", gw.url, "--format", "json"],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
                check=False,
            )
        )
        assert run.returncode == 0, run.stderr
        [shown] = json.loads(run.stdout)["data"]
        assert (shown["cache_write_per_mtok"], shown["cache_write_1h_per_mtok"], shown["per_request_usd"]) == (
            "3.75",
            "6",
            "0.01",
        )
        assert shown["long_context"]["output_per_mtok"] == "22.5"


TIERED = Price(D(3), D(15), long_context=LongContext(200_000, D(6), D("22.5")))


@pytest.mark.parametrize("price", [SONNET, Price(D(1), D(2)), TIERED])
def test_the_repricing_page_example_keeps_every_price_field(price: Price) -> None:
    """Before: the dashboard's example price set had only input and output rates, so re-pricing
    with it unedited dropped the cached and cache-write rates."""
    body = reprice_body(price_toml("sim/sim-1", price), {})
    assert parse_prices(body["prices"]) == {"sim/sim-1": price}
