"""`tollgate pricing import --from genai-prices` as a user runs it: the real genai-prices package, a
real SQLite ledger, the command as a process against a running gateway."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import trio

from events.pricelist import PriceList
from events.request import Request
from policies.catalogue import CATALOGUE_EPOCH, Candidate, plan_import
from policies.cost import Price, PriceEntry
from runtime.auth import DEMO_KEY
from tests.harness import ledger_events, make_config, running_gateway
from tests.test_cli import tollgate

DEMO = {"Authorization": f"Bearer {DEMO_KEY}"}
PROVIDERS = [
    {
        "name": "openai",
        "kind": "simulator",
        "models": ["gpt-4o-mini", "gpt-4o-2024-08-06", "gpt-audio", "my-finetune"],
    },
    {"name": "claude-direct", "kind": "simulator", "models": ["claude-3-5-haiku-20241022", "claude-sonnet-4-6"]},
]
HAND = {"openai/gpt-4o-2024-08-06": {"input_per_mtok": "1", "output_per_mtok": "2"}}
BOTH = ("--provider", "openai", "--provider", "anthropic=claude-direct")


def config(ledger: Path) -> Any:
    return make_config(providers=PROVIDERS, pricing=HAND, ledger={"path": str(ledger)})


async def run_import(url: str, *args: str) -> tuple[int, dict[str, Any], str]:
    done: subprocess.CompletedProcess[str] = await trio.to_thread.run_sync(
        lambda: tollgate("pricing", "import", "--from", "genai-prices", "--url", url, "--json", *args)
    )
    return done.returncode, json.loads(done.stdout), done.stderr


def statuses(report: dict[str, Any]) -> dict[tuple[str, str | None], str]:
    return {(row["key"], row["effective_from"]): row["status"] for row in report["data"]}


def by_key(report: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in report["data"]:
        found.setdefault(row["key"], set()).add(row["status"])
    return found


async def price_sets(running: Any) -> list[PriceList.PriceSet]:
    return [e for e in await ledger_events(running) if isinstance(e, PriceList.PriceSet)]


EPOCH = CATALOGUE_EPOCH.isoformat()


async def test_import_dry_run_conflicts_idempotence_overwrite_and_cost(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    async with running_gateway(config(ledger)) as gw, gw.http() as http:
        before = await price_sets(gw)
        assert [e.source for e in before] == ["config"]

        code, report, err = await run_import(gw.url, *BOTH, "--dry-run")
        assert code == 1, "a conflict with a hand-set price was refused"
        assert "dry run" in err and report["dry_run"] is True
        assert await price_sets(gw) == before, "a dry run appends nothing"
        keys = by_key(report)
        assert keys["openai/gpt-4o-mini"] == {"imported"}
        assert keys["openai/gpt-4o-2024-08-06"] == {"conflict"}
        assert keys["openai/gpt-audio"] == {"skipped"} and keys["openai/my-finetune"] == {"skipped"}
        assert keys["claude-direct/claude-3-5-haiku-20241022"] == {"imported"}
        skipped = {row["key"]: row["note"] for row in report["data"] if row["status"] == "skipped"}
        assert "input_audio_mtok" in skipped["openai/gpt-audio"]
        assert "not in genai-prices" in skipped["openai/my-finetune"]
        # a dated catalogue change: the long-context tier until 2026-03-13, then one price
        sonnet = {row["effective_from"]: row for row in report["data"] if row["key"].endswith("claude-sonnet-4-6")}
        assert sonnet[EPOCH]["long_context"]["above_prompt_tokens"] == 200000
        assert sonnet["2026-03-13T00:00:00+00:00"]["long_context"] is None

        code, report, err = await run_import(gw.url, *BOTH)
        assert code == 1 and "--overwrite" in err
        imported = [e for e in await price_sets(gw) if e.source == "genai-prices"]
        assert len(imported) == sum(1 for s in statuses(report).values() if s == "imported") == 4
        assert {e.catalogue for e in imported} == {genai_prices.__version__}
        mini = next(e for e in imported if e.key == "openai/gpt-4o-mini")
        assert (mini.input_per_mtok, mini.output_per_mtok) == (Decimal("0.15"), Decimal("0.6"))
        assert mini.effective_from == CATALOGUE_EPOCH
        kept = gw.gateway.books.prices.entry_at("openai/gpt-4o-2024-08-06", datetime.now(UTC))
        assert kept is not None and kept.source == "config" and kept.price == Price(Decimal(1), Decimal(2))

        count = len(await price_sets(gw))
        code, again, _ = await run_import(gw.url, *BOTH)
        assert code == 1
        assert {s for k, s in statuses(again).items() if k[0] != "openai/gpt-4o-2024-08-06"} <= {"unchanged", "skipped"}
        assert len(await price_sets(gw)) == count, "a second import appends nothing"

        code, replaced, _ = await run_import(gw.url, *BOTH, "--overwrite")
        assert code == 0
        assert by_key(replaced)["openai/gpt-4o-2024-08-06"] == {"imported", "overwritten"}
        now = datetime.now(UTC)
        entry = gw.gateway.books.prices.entry_at("openai/gpt-4o-2024-08-06", now)
        assert entry is not None and entry.source == "genai-prices"
        assert entry.price is not None and entry.price.input_per_mtok == Decimal("2.5")
        code, settled, _ = await run_import(gw.url, *BOTH)
        assert code == 0 and "conflict" not in statuses(settled).values(), "the overwrite holds"

        answer = await http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers=DEMO,
        )
        assert answer.status_code == 200, answer.text
        completed = [e for e in await ledger_events(gw) if isinstance(e, Request.Completed)]
        assert len(completed) == 1
        done = completed[0]
        expected = (done.prompt_tokens * Decimal("0.15") + done.completion_tokens * Decimal("0.6")) / 10**6
        assert done.cost_usd == expected.quantize(Decimal("1e-9")) and done.cost_usd > 0
        assert done.price_ref == f"openai/gpt-4o-mini@{EPOCH}"

    config_file = tmp_path / "config.toml"
    config_file.write_text(f'[ledger]\npath = "{ledger}"\n')
    verified = await trio.to_thread.run_sync(lambda: tollgate("replay", "--verify", "--config", str(config_file)))
    assert verified.returncode == 0, verified.stderr

    # a start re-asserts only what the config prices: the imported gpt-4o-mini stays, the config's wins
    async with running_gateway(config(ledger)) as gw:
        now = datetime.now(UTC)
        mini_entry = gw.gateway.books.prices.entry_at("openai/gpt-4o-mini", now)
        assert mini_entry is not None and mini_entry.source == "genai-prices"
        pinned = gw.gateway.books.prices.entry_at("openai/gpt-4o-2024-08-06", now)
        assert pinned is not None and pinned.source == "config"


async def test_import_models_glob_and_default_mapping(tmp_path: Path) -> None:
    async with running_gateway(config(tmp_path / "ledger.sqlite3")) as gw:
        code, report, _ = await run_import(gw.url, "--provider", "anthropic=claude-direct", "--models", "claude-3-5*")
        assert code == 0
        assert set(by_key(report)) == {"claude-direct/claude-3-5-haiku-20241022"}
        imported = [e for e in await price_sets(gw) if e.source == "genai-prices"]
        assert [e.key for e in imported] == ["claude-direct/claude-3-5-haiku-20241022"]
        assert imported[0].cache_write_1h_per_mtok == Decimal("1.6")

        # without --provider: the configured providers named like a catalogue provider (openai), never by kind
        code, report, _ = await run_import(gw.url, "--dry-run", "--models", "gpt-4o-mini")
        assert code == 0 and set(by_key(report)) == {"openai/gpt-4o-mini"}

        bad = await trio.to_thread.run_sync(
            lambda: tollgate("pricing", "import", "--from", "genai-prices", "--url", gw.url, "--provider", "nope")
        )
        assert bad.returncode == 1 and "genai-prices has no provider 'nope'" in bad.stderr


def test_plan_keeps_hand_prices_and_updates_its_own() -> None:
    at = datetime(2026, 6, 1, tzinfo=UTC)
    cheap, dear = Price(Decimal(1), Decimal(2)), Price(Decimal(3), Decimal(4))
    timeline = [Candidate("p/m", CATALOGUE_EPOCH, cheap), Candidate("p/m", at, dear)]
    hand = PriceEntry("p/m", datetime(2026, 7, 1, tzinfo=UTC), cheap, "api")
    plan = plan_import(timeline, [hand], "genai-prices", overwrite=False)
    assert [o.status for o in plan.outcomes] == ["conflict"] and plan.appends == []
    forced = plan_import(timeline, [hand], "genai-prices", overwrite=True)
    assert [(o.status, o.effective_from) for o in forced.outcomes] == [
        ("imported", CATALOGUE_EPOCH),
        ("imported", at),
        ("overwritten", hand.effective_from),
    ]
    assert forced.appends[-1].price == dear
    agreeing = PriceEntry("p/m", datetime(2026, 7, 1, tzinfo=UTC), dear, "api")
    assert plan_import(timeline, [agreeing], "genai-prices", overwrite=False).count("imported") == 2
    older = PriceEntry("p/m", at, cheap, "genai-prices")  # an earlier catalogue version: updated, not a conflict
    updated = plan_import(timeline, [older], "genai-prices", overwrite=False)
    assert [o.status for o in updated.outcomes] == ["imported", "imported"]


def test_catalogue_prices_our_model_cannot_express_are_skipped_with_the_reason() -> None:
    from datetime import time

    from genai_prices import types

    from runtime.cli import catalogue

    def model(model_id: str, prices: Any) -> Any:
        return types.ModelInfo(id=model_id, match=types.ClauseEquals(equals=model_id), prices=prices)

    def tiered(base: str, *tiers: tuple[int, str]) -> Any:
        return types.TieredPrices(Decimal(base), [types.Tier(start, Decimal(price)) for start, price in tiers])

    plain = types.ModelPrice
    provider = types.Provider(
        id="acme",
        name="Acme",
        api_pattern="",
        models=[
            model("fee", plain(input_mtok=Decimal(1), output_mtok=Decimal(2), requests_kcount=Decimal(5))),
            model("two-tiers", plain(input_mtok=tiered("1", (1000, "2"), (5000, "3")), output_mtok=Decimal(2))),
            model("odd-tiers", plain(input_mtok=tiered("1", (1000, "2")), output_mtok=tiered("2", (2000, "4")))),
            model("one-tier", plain(input_mtok=tiered("1", (1000, "2")), output_mtok=Decimal(2))),
            model(
                "off-peak",
                [
                    types.ConditionalPrice(prices=plain(input_mtok=Decimal(1), output_mtok=Decimal(2))),
                    types.ConditionalPrice(
                        types.TimeOfDateConstraint(time(16, 30), time(0, 30)),
                        prices=plain(input_mtok=Decimal("0.5"), output_mtok=Decimal(1)),
                    ),
                ],
            ),
            model("embed", plain(input_mtok=Decimal("0.02"))),
        ],
    )
    served = {"ours": ["fee", "two-tiers", "odd-tiers", "one-tier", "off-peak", "embed"]}
    selection = catalogue.select("9.9", [provider], {"ours": "acme"}, served, None)
    prices = {row["key"]: row["price"] for row in selection.prices}
    assert prices["ours/fee"]["per_request_usd"] == "0.005"
    assert prices["ours/one-tier"]["long_context"] == {
        "above_prompt_tokens": 1000,
        "input_per_mtok": "2",
        "output_per_mtok": "2",
    }
    reasons = {row["key"]: row["note"] for row in selection.skipped}
    assert set(reasons) == {"ours/two-tiers", "ours/odd-tiers", "ours/off-peak", "ours/embed"}
    assert "more than one price tier" in reasons["ours/two-tiers"]
    assert "different input-token thresholds" in reasons["ours/odd-tiers"]
    assert "time-of-day" in reasons["ours/off-peak"]
    assert "no output_mtok price" in reasons["ours/embed"]
