"""The dashboard end to end in headless Chromium (Playwright for Python driving Debian's chromium).

The real gateway serves on a loopback port in the test's trio loop; Playwright's sync API blocks, so each
scenario runs in a worker thread (`trio.to_thread.run_sync`). Screenshots go to tests/artifacts/ (ignored)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from playwright import sync_api

from events.money import ZERO
from tests.dashboard_workload import (
    ACME_BUDGET,
    HistoryClock,
    ledger_spend,
    ledger_spend_by_day,
    run_history,
    run_workload,
    workload_config,
)
from tests.harness import ADMIN_KEY, running_gateway

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update"]
ARTIFACTS = Path(__file__).parent / "artifacts" / "dashboard"
T = TypeVar("T")

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make test)")


def in_browser(url: str, scenario: Callable[[Any, str], T]) -> T:
    """Run `scenario(page, url)` in a fresh headless Chromium (blocking: call it in a thread)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page.set_default_timeout(15_000)
            return scenario(page, url)
        finally:
            browser.close()


def sign_in(page: Any, url: str, key: str = ADMIN_KEY) -> Any:
    page.goto(url + "/dashboard")
    page.fill("#admin_key", key)
    with page.expect_navigation():
        page.click("#sign-in")
    return page


def segment_total(page: Any, figure: str) -> Decimal:
    values = page.eval_on_selector_all(f"{figure} rect.segment", "rects => rects.map(r => r.dataset.value)")
    return sum((Decimal(v) for v in values), ZERO)


async def test_a_wrong_key_is_refused_and_no_session_is_given() -> None:
    async with running_gateway(workload_config()) as gw:

        def scenario(page: Any, url: str) -> tuple[str, list[Any], str]:
            sign_in(page, url, "tga-not-the-key")
            page.screenshot(path=str(ARTIFACTS / "wrong-key.png"))
            message = page.inner_text("#sign-in-error")
            cookies = page.context.cookies()
            page.goto(url + "/dashboard/overview")  # no session: back to the sign-in page
            return message, cookies, page.url

        message, cookies, landed = await trio.to_thread.run_sync(in_browser, gw.url, scenario)
    assert "not the admin key" in message
    assert cookies == []
    assert landed.endswith("/dashboard")


async def test_sign_in_and_the_overview_shows_the_ledgers_totals() -> None:
    clock = HistoryClock()
    async with running_gateway(workload_config(), clock) as gw, gw.http() as http:
        keys = await run_workload(gw, http)
        await run_history(http, clock, keys)
        ledger = await ledger_spend(gw)
        daily = await ledger_spend_by_day(gw)

        def scenario(page: Any, url: str) -> dict[str, Any]:
            sign_in(page, url)
            found: dict[str, Any] = {"url": page.url, "cookies": page.context.cookies()}
            found["total"] = page.get_attribute("#spend-per-day svg", "data-total")
            found["segments"] = segment_total(page, "#spend-per-day")
            found["by_model"] = page.eval_on_selector_all(
                "#spend-per-day rect.segment", "rects => rects.map(r => [r.dataset.series, r.dataset.value])"
            )
            found["bars"] = page.eval_on_selector_all(
                "#spend-per-day g.bar", "bars => bars.map(b => [b.dataset.category, b.dataset.total])"
            )
            found["requests"] = page.get_attribute("#requests-per-day svg", "data-total")
            found["budgets"] = page.eval_on_selector_all(
                "#budgets g.row", "rows => rows.map(r => [r.dataset.name, r.dataset.spent, r.dataset.budget])"
            )
            found["storage"] = page.evaluate("() => [localStorage.length, sessionStorage.length]")
            page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
            page.click("a[href='/dashboard/tenants/acme']")
            found["tenant_spent"] = page.inner_text("#tenant-spent")
            found["burn_last"] = page.get_attribute("#burn-down svg", "data-last")
            found["run_out"] = page.inner_text("#run-out")
            found["recent"] = page.locator("#recent tbody tr").count()
            page.screenshot(path=str(ARTIFACTS / "tenant.png"), full_page=True)
            page.click("nav >> text=Providers")
            found["lanes"] = page.eval_on_selector_all(
                "#breakers g.lane", "lanes => lanes.map(l => [l.dataset.name, l.lastElementChild.dataset.state])"
            )
            page.screenshot(path=str(ARTIFACTS / "providers.png"), full_page=True)
            page.click("nav >> text=Audit log")
            page.select_option("select[name=tenant]", "globex")
            page.fill("input[name=type]", "Completed")
            with page.expect_navigation():
                page.click("text=Filter")
            found["audit"] = page.eval_on_selector_all("#events tbody tr", "rows => rows.map(r => r.dataset.type)")
            page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=True)
            return found

        found = await trio.to_thread.run_sync(in_browser, gw.url, scenario)
    total = sum(ledger.values(), ZERO)
    assert found["url"].endswith("/dashboard/overview") and ADMIN_KEY not in found["url"]
    (cookie,) = found["cookies"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert ADMIN_KEY not in cookie["value"]
    assert found["storage"] == [0, 0]
    assert Decimal(found["total"]) == total == found["segments"] > 0
    bars = dict(found["bars"])
    assert len(bars) == 30 and max(bars) == clock.end.date().isoformat()
    assert {day: Decimal(v) for day, v in bars.items() if Decimal(v)} == {d: v for d, v in daily.items() if v}
    assert len([v for v in bars.values() if Decimal(v)]) == 20
    for model in ("sim-1", "sim-2", "bad-1"):
        shown = sum((Decimal(v) for m, v in found["by_model"] if m == model), ZERO)
        assert shown == sum((v for (_, m), v in ledger.items() if m == model), ZERO)
    assert found["requests"] == str(7 + sum(1 + day % 4 for day in range(20)))
    budgets = {name: (Decimal(spent), budget) for name, spent, budget in found["budgets"]}
    acme = sum((v for (t, _), v in ledger.items() if t == "acme"), ZERO)
    assert budgets["acme"] == (acme, ACME_BUDGET) and budgets["globex"][1] == ""
    assert Decimal(found["tenant_spent"].lstrip("$")) == acme == Decimal(found["burn_last"])
    assert found["run_out"] == "2026-11-29"  # $0.02002 in 25 days: $0.003 more at that pace takes 4 days
    assert found["recent"] == 20  # the last 20 of acme's
    assert dict(found["lanes"]) == {"bad": "open", "sim": "closed"}
    globex = 2 + sum((day + i) % 3 == 0 for day in range(20) for i in range(1 + day % 4))  # WORK + history
    assert found["audit"] == ["Request.Completed"] * globex


async def test_a_repricing_dry_run_and_commit_from_the_page_change_the_numbers_shown() -> None:
    async with running_gateway(workload_config()) as gw, gw.http() as http:
        await run_workload(gw, http)
        before = await ledger_spend(gw)
        sim_before = sum((v for (_, m), v in before.items() if m == "sim-1"), ZERO)
        doubled = '"sim/sim-1" = { input_per_mtok = "20", output_per_mtok = "40" }'

        def scenario(page: Any, url: str) -> dict[str, Any]:
            sign_in(page, url)
            found: dict[str, Any] = {"before": page.get_attribute("#spend-per-day svg", "data-total")}
            page.click("nav >> text=Re-pricing")
            page.fill("#prices", doubled)
            with page.expect_navigation():
                page.click("#dry-run")
            found["delta"] = page.get_attribute("#delta-total", "data-delta")
            found["chart"] = page.get_attribute("#delta svg", "data-total")
            page.screenshot(path=str(ARTIFACTS / "reprice-dry-run.png"), full_page=True)
            page.check("#confirm")
            with page.expect_navigation():
                page.click("#commit")
            found["committed"] = page.inner_text("#committed")
            found["restated"] = page.get_attribute("#restated-total", "data-cost")
            page.screenshot(path=str(ARTIFACTS / "reprice-committed.png"), full_page=True)
            page.click("text=See the overview")
            found["after"] = page.get_attribute("#spend-per-day svg", "data-total")
            return found

        found = await trio.to_thread.run_sync(in_browser, gw.url, scenario)
        after = await ledger_spend(gw)
    assert Decimal(found["delta"]) == sim_before == Decimal(found["chart"]) > 0  # doubling adds as much again
    assert "restated" in found["committed"]
    assert Decimal(found["restated"]) == sum(after.values(), ZERO) == Decimal(found["after"])
    assert Decimal(found["after"]) == Decimal(found["before"]) + sim_before
