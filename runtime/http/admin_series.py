"""Time series for the dashboard and for anyone's own tooling (admin key), read from the projections.

    GET /admin/series/spend       ?days=30&tenant=&stack=model|provider|tenant&basis=restated|as_recorded
                                  spend and requests per UTC day, one series per stack value
    GET /admin/series/tenants     each tenant's spend this budget period against its budget
    GET /admin/series/burn-down   ?tenant=  cumulative spend this period, the 50/80/100 % lines, the
                                  projected day the budget runs out at the period's pace so far
    GET /admin/series/providers   per provider: outcomes, failed attempts, error rate (from the projections)
    GET /admin/series/breakers    ?days=30  breaker transitions (Provider events) and each lane's segments

Money is a Decimal string everywhere. The functions below are what the routes and the dashboard's pages
share; `burn_down_of` and `breaker_lanes` are pure.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import trio
from quart import Blueprint, Response, request

from events.money import ZERO, usd, usd_str
from events.projections import SPEND_BASES, outcome_counts, spend_report
from events.provider import Provider, provider_id
from events.store import topic_of
from policies.errors import InvalidRequest
from policies.periods import period_bounds
from policies.tenant import TenantPolicy
from runtime.errors import NotFound
from runtime.gateway import Gateway
from runtime.ledger.books import TenantView

STACKS = ("model", "provider", "tenant")
MAX_DAYS = 366
THRESHOLDS = (("50 %", Decimal("0.5")), ("80 %", Decimal("0.8")), ("100 %", Decimal(1)))
TRANSITIONED = topic_of(Provider.BreakerTransitioned)
TRANSITION_FIELDS: dict[str, type] = {"from_state": str, "to_state": str, "reason": str, "timestamp": datetime}


def days_window(today: date, days: int) -> list[str]:
    """The `days` UTC days ending with `today`, oldest first, as ISO dates."""
    return [(today - timedelta(days=days - 1 - i)).isoformat() for i in range(days)]


def find_tenant(gateway: Gateway, ref: str) -> TenantView:
    books = gateway.books
    view = books.tenant(ref) or next((t for t in books.tenants() if t.name == ref), None)
    if view is None:
        raise NotFound(f"No tenant with id or name {ref!r}.")
    return view


async def spend_series(
    gateway: Gateway, *, days: int = 30, tenant: str | None = None, stack: str = "model", basis: str = "restated"
) -> dict[str, Any]:
    """Spend per day of the last `days` days, one series per `stack` value, with exact totals."""
    window = days_window(gateway.clock().date(), days)
    rows = await gateway.projector.query(
        lambda p: spend_report(
            p, tenant=tenant, day_from=window[0], day_to=window[-1], group_by=("day", stack), basis=basis
        )
    )
    at = {day: i for i, day in enumerate(window)}
    names = sorted({row[stack] for row in rows})
    cost = {name: [ZERO] * days for name in names}
    requests = {name: [0] * days for name in names}
    for row in rows:
        cost[row[stack]][at[row["day"]]] += Decimal(row["cost_usd"])
        requests[row[stack]][at[row["day"]]] += row["requests"]
    day_cost = [sum((cost[n][i] for n in names), ZERO) for i in range(days)]
    day_requests = [sum(requests[n][i] for n in names) for i in range(days)]
    return {
        "object": "series",
        "from": window[0],
        "to": window[-1],
        "stack": stack,
        "basis": basis,
        "tenant": tenant,
        "days": window,
        "series": [
            {
                "name": name,
                "cost_usd": [usd_str(v) for v in cost[name]],
                "requests": requests[name],
                "total_cost_usd": usd_str(sum(cost[name], ZERO)),
                "total_requests": sum(requests[name]),
            }
            for name in names
        ],
        "per_day": [
            {"day": day, "cost_usd": usd_str(day_cost[i]), "requests": day_requests[i]} for i, day in enumerate(window)
        ],
        "totals": {"cost_usd": usd_str(sum(day_cost, ZERO)), "requests": sum(day_requests)},
    }


async def tenant_budget(gateway: Gateway, view: TenantView) -> dict[str, Any]:
    """What `/v1/usage` says for one tenant: spend this budget period against its budget."""
    policy = TenantPolicy.from_record(view.policy)
    start, end = period_bounds(policy.budget_period, gateway.clock())
    spent = await gateway.spent(view.name, start, end)
    reserved = gateway.reserved_usd(view.name)
    budget = policy.budget_usd
    return {
        "tenant": view.name,
        "id": view.id,
        "enabled": view.enabled,
        "period": policy.budget_period,
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "spent_usd": usd_str(spent),
        "reserved_usd": usd_str(reserved),
        "budget_usd": None if budget is None else usd_str(budget),
        "used": None if not budget else f"{spent / budget:.4f}",
    }


def burn_down_of(
    daily: dict[str, Decimal], budget: Decimal | None, start: datetime, end: datetime, now: datetime
) -> dict[str, Any]:
    """Cumulative spend per day of [start, end) up to `now`'s day, the threshold amounts, and the day
    the budget runs out if spending goes on at the average daily pace so far (None: not within reach)."""
    days = (end.date() - start.date()).days
    period = [(start.date() + timedelta(days=i)).isoformat() for i in range(days)]
    today = now.astimezone(UTC).date().isoformat()
    running, points = ZERO, []
    for day in period:
        if day > today:
            break
        running += daily.get(day, ZERO)
        points.append({"day": day, "spent_usd": usd_str(running)})
    runs_out = None
    if budget is not None and points:
        if running >= budget:
            runs_out = next(p["day"] for p in points if Decimal(p["spent_usd"]) >= budget)
        elif running > 0:
            pace = running / len(points)
            more = int(((budget - running) / pace).to_integral_value(rounding="ROUND_CEILING"))
            day_out = date.fromisoformat(points[-1]["day"]) + timedelta(days=more)
            runs_out = day_out.isoformat() if day_out < end.date() else None
    return {
        "days": period,
        "points": points,
        "budget_usd": None if budget is None else usd_str(budget),
        "thresholds": []
        if budget is None
        else [{"label": label, "fraction": str(f), "usd": usd_str(usd(budget * f))} for label, f in THRESHOLDS],
        "spent_usd": usd_str(running),
        "projected_run_out": runs_out,
    }


async def burn_down(gateway: Gateway, view: TenantView) -> dict[str, Any]:
    policy = TenantPolicy.from_record(view.policy)
    now = gateway.clock()
    start, end = period_bounds(policy.budget_period, now)
    last_day = (end - timedelta(microseconds=1)).date().isoformat()
    rows = await gateway.projector.query(
        lambda p: spend_report(
            p, tenant=view.name, day_from=start.date().isoformat(), day_to=last_day, group_by=("day",)
        )
    )
    daily = {row["day"]: Decimal(row["cost_usd"]) for row in rows}
    return {
        "tenant": view.name,
        "period": policy.budget_period,
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        **burn_down_of(daily, policy.budget_usd, start, end, now),
    }


async def provider_health(gateway: Gateway) -> list[dict[str, Any]]:
    """Per provider: terminal outcomes, failed attempts by kind, rejections ('-'), and the error rate
    (requests that ended in a failure ÷ requests it ended), with the live breaker state."""
    rows = await gateway.projector.query(outcome_counts)
    stats = {s.name: s for s in gateway.statistics().providers}
    names = sorted({row["provider"] for row in rows} | set(stats))
    found = []
    for name in names:
        mine = [r for r in rows if r["provider"] == name]
        outcomes = {
            r["outcome"]: r["count"] for r in mine if not r["outcome"].startswith(("attempt_failed:", "rejected:"))
        }
        attempts = {r["outcome"][15:]: r["count"] for r in mine if r["outcome"].startswith("attempt_failed:")}
        rejected = {r["outcome"][9:]: r["count"] for r in mine if r["outcome"].startswith("rejected:")}
        ended = sum(outcomes.values())
        failed = sum(count for outcome, count in outcomes.items() if outcome not in ("ok", "cancelled"))
        live = stats.get(name)
        found.append(
            {
                "provider": name,
                "requests": ended,
                "outcomes": outcomes,
                "failed_attempts": attempts,
                "fallbacks": sum(attempts.values()),
                "rejected": rejected,
                "error_rate": f"{Decimal(failed) / ended:.4f}" if ended else None,
                "breaker": live.breaker if live else None,
            }
        )
    return found


def breaker_lanes(
    names: Sequence[str], transitions: Sequence[dict[str, Any]], start: datetime, end: datetime
) -> list[tuple[str, list[tuple[float, float, str]]]]:
    """Each provider's breaker state over [start, end) as (from, to, state) fractions of the window."""
    span = (end - start).total_seconds() or 1.0
    lanes = []
    for name in names:
        mine = [t for t in transitions if t["provider"] == name]
        before = [t for t in mine if t["at"] < start.isoformat()]
        state = before[-1]["to_state"] if before else "closed"
        at, segments = 0.0, []
        for t in mine:
            moment = datetime.fromisoformat(t["at"])
            if moment < start:
                continue
            fraction = min(max((moment - start).total_seconds() / span, 0.0), 1.0)
            segments.append((at, fraction, state))
            at, state = fraction, t["to_state"]
        # The last segment is the state now, kept even when a transition came at the very end.
        lanes.append((name, [s for s in segments if s[1] > s[0]] + [(at, 1.0, state)]))
    return lanes


async def breaker_history(gateway: Gateway, days: int = 30) -> dict[str, Any]:
    """Every breaker transition in the log (Provider events), oldest first, and the lanes of the window."""
    store = gateway.store
    names = {provider_id(name): name for name in gateway.providers}

    def scan() -> list[dict[str, Any]]:
        found = []
        for page in store.scan([TRANSITIONED], TRANSITION_FIELDS):
            for raw in page:
                moment = raw.state["timestamp"]
                found.append(
                    {
                        "position": raw.position,
                        "provider": names.get(uuid.UUID(raw.originator_id), raw.originator_id),
                        "at": moment.isoformat() if isinstance(moment, datetime) else str(moment),
                        "from_state": raw.state["from_state"],
                        "to_state": raw.state["to_state"],
                        "reason": raw.state["reason"],
                    }
                )
        return found

    transitions = await trio.to_thread.run_sync(scan, limiter=gateway.journal.limiter)
    # Events carry the store's wall time; the window ends now or at the latest transition (under a
    # virtual money clock in tests the two differ).
    now = max([gateway.clock(), *(datetime.fromisoformat(t["at"]) for t in transitions)])
    start = datetime.combine(now.date() - timedelta(days=days - 1), datetime.min.time(), UTC)
    lanes = breaker_lanes(sorted(gateway.providers), transitions, start, now)
    return {
        "from": start.isoformat(),
        "to": now.isoformat(),
        "transitions": transitions,
        "lanes": [
            {"provider": name, "segments": [{"from": a, "to": b, "state": s} for a, b, s in segments]}
            for name, segments in lanes
        ],
    }


def int_arg(name: str, default: int, low: int = 1, high: int = MAX_DAYS) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise InvalidRequest(f"'{name}' must be an integer from {low} to {high}.", param=name, code="invalid_value")
    return number


def _json(body: Any) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), 200, content_type="application/json")


def admin_series(gateway: Gateway) -> Blueprint:
    series = Blueprint("admin_series", __name__)

    @series.before_request
    async def check_admin() -> None:
        gateway.admin.check(request.headers.get("Authorization"))

    @series.get("/admin/series/spend")
    async def get_spend_series() -> Response:
        stack = request.args.get("stack") or "model"
        if stack not in STACKS:
            raise InvalidRequest(f"'stack' is one of {', '.join(STACKS)}.", param="stack", code="invalid_value")
        basis = request.args.get("basis") or "restated"
        if basis not in SPEND_BASES:
            raise InvalidRequest(f"'basis' is one of {', '.join(SPEND_BASES)}.", param="basis", code="invalid_value")
        tenant = request.args.get("tenant")
        name = None if tenant is None else find_tenant(gateway, tenant).name
        days = int_arg("days", 30)
        return _json(await spend_series(gateway, days=days, tenant=name, stack=stack, basis=basis))

    @series.get("/admin/series/tenants")
    async def get_tenants() -> Response:
        data = [await tenant_budget(gateway, view) for view in gateway.books.tenants()]
        return _json({"object": "list", "data": data})

    @series.get("/admin/series/burn-down")
    async def get_burn_down() -> Response:
        tenant = request.args.get("tenant")
        if tenant is None:
            raise InvalidRequest(
                "Missing required parameter: 'tenant'.", param="tenant", code="missing_required_parameter"
            )
        return _json(await burn_down(gateway, find_tenant(gateway, tenant)))

    @series.get("/admin/series/providers")
    async def get_providers() -> Response:
        return _json({"object": "list", "data": await provider_health(gateway)})

    @series.get("/admin/series/breakers")
    async def get_breakers() -> Response:
        return _json(await breaker_history(gateway, int_arg("days", 30)))

    return series
