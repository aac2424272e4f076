"""Admin API (admin key) and the tenant's own usage endpoint.

    POST   /admin/tenants                      create (201; the key is returned once, as api_key)
    GET    /admin/tenants, /admin/tenants/{id}
    PATCH  /admin/tenants/{id}                 policy fields, enabled
    POST   /admin/tenants/{id}/rotate-key      {"grace_period_s": N} keeps the old key working N s
    POST   /admin/tenants/{id}/disable|enable
    GET    /admin/pricing, PUT /admin/pricing  the price list; set prices with an effective_from
    POST   /admin/pricing/import               a catalogue's prices (`tollgate pricing import`): a report,
                                               appended unless dry_run; hand-set prices kept unless overwrite
    GET    /admin/spend                        ?tenant=&from=&to=&group_by=tenant,model,provider,day,operation
                                               &basis=restated|as_recorded
    POST   /admin/reprice                      a price set + filters; a dry-run report, or commit restatements
    GET    /admin/events                       ?after=&limit=&tenant=&request_id=&ledger_id=  (paged audit log)
    GET    /admin/providers, /admin/ledger     actor and journal statistics
    GET    /v1/usage                           the calling tenant's spend this budget period

Every change is an event committed through the Journal before the response is sent, through the
aggregates' one door (`gateway.aggregates.change`): a tenant or price list changes in memory only
once committed. A Blueprint of module-level handlers; `register_admin` sets the gateway as the app's
extension, where they find it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs
import cattrs
from quart import Blueprint, Response, current_app, request
from quart_trio import QuartTrio

from events.money import ZERO, usd_str
from events.pricelist import PRICE_LIST_ID, PriceList
from events.projections import SPEND_BASES, SPEND_GROUPS, spend_report
from events.tenant import Tenant, tenant_id
from policies.catalogue import CATALOGUES, Candidate, Outcome, Plan, plan_import
from policies.cost import PRICE_EVENT_FIELDS, Price, field_text, price_fields
from policies.errors import InvalidRequest
from policies.periods import period_bounds
from policies.routing import RoutingIndex
from policies.tenant import POLICY_FIELDS, TenantPolicy, reference_problems
from policies.validation import parse_json
from runtime.auth import hash_key, new_key
from runtime.config import converter, format_problems
from runtime.errors import Conflict, NotFound
from runtime.gateway import Gateway
from runtime.http.responses import json_response as _json
from runtime.ledger.books import Books, TenantView
from runtime.ledger.reprice import Report, parse_request, run_in_gateway, steps_in_gateway

MAX_EVENTS_PAGE = 1000
MAX_GRACE_PERIOD_S = 366 * 86400  # an old key kept working longer than a year is not a rotation
SCAN_LIMIT = 20_000


def tenant_json(view: TenantView) -> dict[str, Any]:
    return {
        "id": view.id,
        "name": view.name,
        "enabled": view.enabled,
        "source": view.source,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
        **TenantPolicy.from_record(view.policy).to_record(),
    }


def check_references(policy: TenantPolicy, routes: RoutingIndex, fields: Iterable[str]) -> None:
    """400 naming every unknown provider or model among `fields` (the rule `check-config` applies)."""
    problems = reference_problems(policy, routes, fields)
    if problems:
        raise InvalidRequest(
            "; ".join(f"{field}: {problem}" for field, problem in problems) + ".",
            param=problems[0][0],
            code="invalid_value",
        )


def structure_policy(data: dict[str, Any]) -> TenantPolicy:
    try:
        return converter.structure(data, TenantPolicy)
    except (cattrs.BaseValidationError, ValueError, TypeError) as error:
        problems = format_problems(error) if isinstance(error, cattrs.BaseValidationError) else [f"<top>: {error}"]
        param = problems[0].partition(": ")[0]
        raise InvalidRequest(
            f"{'; '.join(problems)}.", param=None if param == "<top>" else param, code="invalid_value"
        ) from None


async def _body() -> dict[str, Any]:
    raw = await request.get_data(cache=False, as_text=False)
    if not raw.strip():
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    return body


def _day(value: str | None, param: str) -> str | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        raise InvalidRequest(
            f"'{param}' must be a date such as 2026-11-01.", param=param, code="invalid_value"
        ) from None


def _int(value: str | None, param: str, default: int, minimum: int = 0) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise InvalidRequest(f"'{param}' must be an integer ≥ {minimum}.", param=param, code="invalid_value")
    return number


def _uuid(value: str | None, param: str) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequest(f"'{param}' must be a UUID.", param=param, code="invalid_value") from None


def event_json(position: int, event: Any, owner: tuple[str, str] | None = None) -> dict[str, Any]:
    """One event; a request's events also say whose request it is (`tenant`, the client's
    `request_id`): `aggregate_id` is the request's unique ledger id, `request_id` need not be unique."""
    data = {
        k: v
        for k, v in event.__dict__.items()
        if k not in ("originator_id", "originator_version", "timestamp", "originator_topic")
    }
    found = {
        "position": position,
        "type": type(event).__qualname__,
        "aggregate_id": str(event.originator_id),
        "version": event.originator_version,
        "timestamp": event.timestamp.isoformat(),
        "data": json.loads(json.dumps(data, default=_plain)),
    }
    if owner is not None:
        found["tenant"], found["request_id"] = owner
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return usd_str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


GATEWAY = "tollgate.gateway"
admin = Blueprint("admin", __name__)


def register_admin(app: QuartTrio, gateway: Gateway) -> None:
    """Serve the admin API from `app`; its handlers find `gateway` as the app's extension."""
    app.extensions[GATEWAY] = gateway
    app.register_blueprint(admin)


def _gateway() -> Gateway:
    gateway: Gateway = current_app.extensions[GATEWAY]
    return gateway


def _check_admin() -> Gateway:
    """The gateway, once the caller has shown the admin key."""
    gateway = _gateway()
    gateway.admin.check(request.headers.get("Authorization"))
    return gateway


def _find(books: Books, tenant_ref: str) -> TenantView:
    view = books.tenant(tenant_ref) or next((t for t in books.tenants() if t.name == tenant_ref), None)
    if view is None:
        raise NotFound(f"No tenant with id or name {tenant_ref!r}.")
    return view


async def _change_tenant(gateway: Gateway, view: TenantView, fn: Callable[[Tenant], None]) -> TenantView:
    """Apply `fn` to the tenant through the aggregates' door; the view once it is committed."""

    def change(tenant: Tenant | None) -> Tenant:
        if tenant is None:
            raise NotFound(f"No tenant with id {view.id!r}.")
        fn(tenant)
        return tenant

    await gateway.aggregates.change(uuid.UUID(view.id), Tenant, change)
    return _find(gateway.books, view.id)


@admin.post("/admin/tenants")
async def create_tenant() -> Response:
    gateway = _check_admin()
    body = await _body()
    name = body.pop("name", None)
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("Missing required parameter: 'name'.", param="name", code="missing_required_parameter")
    enabled = body.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidRequest("'enabled' must be a boolean.", param="enabled", code="invalid_type")
    policy = structure_policy(body)
    check_references(policy, gateway.routes, body)
    key = new_key("tg-")

    def register(existing: Tenant | None) -> Tenant:
        if existing is not None:
            raise Conflict(f"A tenant named {name!r} exists already.")
        tenant = Tenant.register(name, hash_key(key), policy.to_record(), "api")
        if not enabled:
            tenant.disable()
        return tenant

    tenant = await gateway.aggregates.change(tenant_id(name), Tenant, register)
    view = gateway.books.tenant(str(tenant.id))
    assert view is not None
    return _json({**tenant_json(view), "api_key": key}, 201)


@admin.get("/admin/tenants")
async def list_tenants() -> Response:
    gateway = _check_admin()
    return _json({"object": "list", "data": [tenant_json(v) for v in gateway.books.tenants()]})


@admin.get("/admin/tenants/<tenant_ref>")
async def get_tenant(tenant_ref: str) -> Response:
    gateway = _check_admin()
    return _json(tenant_json(_find(gateway.books, tenant_ref)))


@admin.patch("/admin/tenants/<tenant_ref>")
async def patch_tenant(tenant_ref: str) -> Response:
    gateway = _check_admin()
    view = _find(gateway.books, tenant_ref)
    body = await _body()
    if "name" in body and body["name"] != view.name:
        raise InvalidRequest("A tenant's name cannot be changed.", param="name", code="invalid_value")
    body.pop("name", None)
    enabled = body.pop("enabled", None)
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidRequest("'enabled' must be a boolean.", param="enabled", code="invalid_type")
    current = TenantPolicy.from_record(view.policy).to_record()
    unknown = sorted(set(body) - set(POLICY_FIELDS))
    if unknown:
        raise InvalidRequest(f"Unknown tenant field(s): {', '.join(unknown)}.", param=unknown[0], code="invalid_value")
    # Only what this PATCH sets is checked: a stale name may stay.
    check_references(structure_policy({**current, **body}), gateway.routes, body)

    def patch(tenant: Tenant) -> None:
        committed = TenantPolicy.from_record(tenant.policy).to_record()  # a PATCH just before this one counts
        record = structure_policy({**committed, **body}).to_record()
        tenant.update({k: v for k, v in record.items() if committed.get(k) != v})
        if enabled is True:
            tenant.enable()
        elif enabled is False:
            tenant.disable()

    return _json(tenant_json(await _change_tenant(gateway, view, patch)))


@admin.post("/admin/tenants/<tenant_ref>/rotate-key")
async def rotate_key(tenant_ref: str) -> Response:
    gateway = _check_admin()
    view = _find(gateway.books, tenant_ref)
    body = await _body()
    grace = body.get("grace_period_s", 0)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= MAX_GRACE_PERIOD_S:
        raise InvalidRequest(
            f"'grace_period_s' must be a number from 0 to {MAX_GRACE_PERIOD_S} (a year).",
            param="grace_period_s",
            code="invalid_value",
        )
    key = new_key("tg-")
    valid_until = datetime.now(UTC) + timedelta(seconds=grace) if grace else None
    await _change_tenant(gateway, view, lambda tenant: tenant.issue_key(hash_key(key), valid_until))
    return _json(
        {
            "id": view.id,
            "api_key": key,
            "previous_key_valid_until": valid_until.isoformat() if valid_until else None,
        }
    )


@admin.post("/admin/tenants/<tenant_ref>/<action>")
async def toggle_tenant(tenant_ref: str, action: str) -> Response:
    gateway = _check_admin()
    if action not in ("disable", "enable"):
        raise NotFound(f"Unknown tenant action {action!r}: use disable, enable or rotate-key.")
    view = _find(gateway.books, tenant_ref)
    toggle = Tenant.disable if action == "disable" else Tenant.enable
    return _json(tenant_json(await _change_tenant(gateway, view, toggle)))


@admin.get("/admin/pricing")
async def get_pricing() -> Response:
    gateway = _check_admin()
    now = gateway.clock()
    prices = gateway.books.prices
    history = request.args.get("history") in ("1", "true", "yes")
    entries = prices.entries() if history else list(prices.current(now).values())
    return _json(
        {
            "object": "list",
            "data": [_price_json(e) for e in sorted(entries, key=lambda e: (e.key, e.effective_from))],
        }
    )


@admin.put("/admin/pricing")
async def put_pricing() -> Response:
    gateway = _check_admin()
    body = await _body()
    effective_from = _effective_from(body.get("effective_from")) or gateway.clock()
    prices = body.get("prices")
    if not isinstance(prices, dict) or not prices:
        raise InvalidRequest(
            "'prices' must be an object of \"PROVIDER/MODEL\": {input_per_mtok, output_per_mtok} (or null to remove).",
            param="prices",
            code="invalid_value",
        )
    parsed = _parse_prices(gateway, prices)  # every entry is checked before any is applied

    def set_prices(price_list: PriceList | None) -> PriceList:
        price_list = price_list or PriceList.open()
        for key, price in parsed.items():
            if price is None:
                price_list.remove_price(key, effective_from, "api")
            else:
                price_list.set_price(key, effective_from, "api", **price_fields(price))
        return price_list

    await gateway.aggregates.change(PRICE_LIST_ID, PriceList, set_prices)
    return _json(
        {
            "object": "list",
            "data": [
                _price_json(e)
                for e in gateway.books.prices.entries()
                if e.effective_from == effective_from and e.key in prices
            ],
        }
    )


@admin.post("/admin/pricing/import")
async def import_pricing() -> Response:
    """`{"source": "genai-prices", "catalogue": VERSION, "prices": [{"key", "effective_from", "price",
    "note"}], "overwrite": false, "dry_run": false}` → one row per outcome (`policies.catalogue`)."""
    gateway = _check_admin()
    body = await _body()
    source, version = body.get("source"), body.get("catalogue")
    if source not in CATALOGUES:
        raise InvalidRequest(f"'source' must be one of {', '.join(CATALOGUES)}.", param="source", code="invalid_value")
    if not isinstance(version, str) or not version:
        raise InvalidRequest("'catalogue' must be the catalogue's version.", param="catalogue", code="invalid_type")
    flags = {name: body.get(name, False) for name in ("overwrite", "dry_run")}
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise InvalidRequest(f"'{name}' must be a boolean.", param=name, code="invalid_type")
    items = body.get("prices")
    if not isinstance(items, list):
        raise InvalidRequest("'prices' must be a list of {key, effective_from, price}.", param="prices")
    candidates = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise InvalidRequest(f"prices[{index}]: expected {{key, effective_from, price}}.", param="prices")
        price = _parse_prices(gateway, {item["key"]: item.get("price")})[item["key"]]
        moment = _effective_from(item.get("effective_from"))
        note = item.get("note")
        if price is None or moment is None or not isinstance(note, str | None):
            raise InvalidRequest(f"prices[{index}]: a price, an effective_from and an optional note.", param="prices")
        candidates.append(Candidate(item["key"], moment, price, note))

    plans: list[Plan] = []

    def append(price_list: PriceList | None) -> PriceList:
        price_list = price_list or PriceList.open()
        plans.append(plan_import(candidates, gateway.books.prices.entries(), source, overwrite=flags["overwrite"]))
        for candidate in plans[-1].appends:
            price_list.set_price(
                candidate.key, candidate.effective_from, source, catalogue=version, **price_fields(candidate.price)
            )
        return price_list

    if flags["dry_run"]:
        plans.append(plan_import(candidates, gateway.books.prices.entries(), source, overwrite=flags["overwrite"]))
    else:
        await gateway.aggregates.change(PRICE_LIST_ID, PriceList, append)
    plan = plans[-1]
    return _json(
        {
            "object": "list",
            "source": source,
            "catalogue": version,
            "dry_run": flags["dry_run"],
            "data": [_outcome_json(outcome) for outcome in plan.outcomes],
        }
    )


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    held = outcome.held
    return {
        **_price_json(outcome),
        "status": outcome.status,
        "note": outcome.note,
        "held": None if held is None else {**_price_json(held), "source": held.source},
    }


def _parse_prices(gateway: Gateway, prices: dict[str, Any]) -> dict[str, Price | None]:
    parsed: dict[str, Price | None] = {}
    for key, value in prices.items():
        provider, slash, model = key.partition("/")
        if not slash or not model or provider not in gateway.providers:
            raise InvalidRequest(
                f'Price key {key!r} must be "PROVIDER/MODEL" with a configured provider.',
                param=f"prices.{key}",
                code="invalid_value",
            )
        if value is not None and not isinstance(value, dict):
            raise InvalidRequest(
                f"prices.{key}: expected an object such as"
                ' {"input_per_mtok": "0.50", "output_per_mtok": "1.50"} (or null to remove)',
                param=f"prices.{key}",
                code="invalid_type",
            )
        try:
            parsed[key] = None if value is None else converter.structure(value, Price)
        except (cattrs.BaseValidationError, ValueError, TypeError) as error:
            problems = format_problems(error) if isinstance(error, cattrs.BaseValidationError) else [str(error)]
            raise InvalidRequest(
                f"prices.{key}: {'; '.join(problems)}", param=f"prices.{key}", code="invalid_value"
            ) from None
    return parsed


@admin.get("/admin/spend")
async def get_spend() -> Response:
    gateway = _check_admin()
    args = request.args
    group_by = tuple(g for g in (args.get("group_by") or "tenant,model,provider").split(",") if g)
    bad = [g for g in group_by if g not in SPEND_GROUPS]
    if bad:
        raise InvalidRequest(
            f"'group_by' takes {', '.join(SPEND_GROUPS)}; not {', '.join(bad)}.",
            param="group_by",
            code="invalid_value",
        )
    tenant = args.get("tenant")
    if tenant is not None:
        tenant = _find(gateway.books, tenant).name
    day_from, day_to = _day(args.get("from"), "from"), _day(args.get("to"), "to")
    basis = args.get("basis") or "restated"
    if basis not in SPEND_BASES:
        raise InvalidRequest(f"'basis' is one of {', '.join(SPEND_BASES)}.", param="basis", code="invalid_value")
    rows = await gateway.projector.query(
        lambda p: spend_report(p, tenant=tenant, day_from=day_from, day_to=day_to, group_by=group_by, basis=basis)
    )
    return _json({"object": "list", "basis": basis, "data": rows, "totals": _totals(rows)})


@admin.post("/admin/reprice")
async def reprice() -> Response:
    gateway = _check_admin()
    body = await _body()
    commit = body.get("commit", False)
    if not isinstance(commit, bool):
        raise InvalidRequest("'commit' must be a boolean.", param="commit", code="invalid_type")
    by = body.get("by", "admin-api")
    if not isinstance(by, str) or not by:
        raise InvalidRequest("'by' must be a non-empty string.", param="by", code="invalid_type")
    if body.get("tenant") is not None:
        body["tenant"] = _find(gateway.books, str(body["tenant"])).name
    prices, filters = parse_request(body, gateway.books.prices)
    if "application/x-ndjson" not in request.headers.get("Accept", ""):
        report = await run_in_gateway(gateway, prices, filters, commit=commit, by=by)
        return _json(report.document())

    async def lines() -> AsyncIterator[bytes]:
        # aclosing: a client that hangs up ends the run (and releases the re-pricing lock) at once.
        async with aclosing(steps_in_gateway(gateway, prices, filters, commit=commit, by=by)) as steps:
            async for step in steps:
                if isinstance(step, Report):
                    line: dict[str, Any] = {"report": step.document()}
                else:
                    line = {"progress": {"done": step[0], "total": step[1]}}
                yield json.dumps(line, separators=(",", ":")).encode() + b"\n"

    return Response(lines(), 200, content_type="application/x-ndjson")


@admin.get("/admin/events")
async def get_events() -> Response:
    gateway = _check_admin()
    args = request.args
    after = _int(args.get("after"), "after", 0)
    limit = _int(args.get("limit"), "limit", 100, minimum=1)
    limit = min(limit, MAX_EVENTS_PAGE)
    tenant = args.get("tenant")
    if tenant is not None:
        tenant = _find(gateway.books, tenant).name
    request_id = args.get("request_id")
    ledger_id = _uuid(args.get("ledger_id"), "ledger_id")
    found, next_after = await gateway.events_page(after, limit, tenant, request_id, SCAN_LIMIT, ledger_id)
    data = [event_json(f.position, f.event, f.owner) for f in found]
    return _json({"object": "list", "data": data, "next_after": next_after})


@admin.get("/admin/ledger")
async def get_ledger() -> Response:
    gateway = _check_admin()
    stats = gateway.statistics()
    return _json({"journal": attrs.asdict(stats.journal), "projected_position": stats.projected_position})


@admin.get("/admin/statistics")
async def get_statistics() -> Response:
    gateway = _check_admin()
    return _json(attrs.asdict(gateway.statistics()))


@admin.get("/admin/instances")
async def get_instances() -> Response:
    """The gateway processes live on this ledger (heartbeat within the expiry), this one marked."""
    gateway = _check_admin()
    rows = await gateway.instances.live_rows(gateway.clock())
    return _json(
        {
            "instance": gateway.instances.instance,
            "instances": [
                {
                    "instance": row.instance,
                    "pid": row.pid,
                    "host": row.host,
                    "started_at": row.started_at.isoformat(),
                    "beat_at": row.beat_at.isoformat(),
                    "this": row.instance == gateway.instances.instance,
                }
                for row in rows
            ],
        }
    )


@admin.get("/admin/providers")
async def get_providers() -> Response:
    gateway = _check_admin()
    stats = gateway.statistics().providers
    served: dict[str, list[str]] = {p.name: list(p.models) for p in gateway.config.providers}
    for alias in gateway.config.models.values():
        for deployment in alias.deployments:
            if deployment.model not in served.setdefault(deployment.provider, []):
                served[deployment.provider].append(deployment.model)
    providers = [{**attrs.asdict(s), "models": served.get(s.name, [])} for s in stats]
    body = json.dumps({"providers": providers}, separators=(",", ":"), ensure_ascii=False)
    return Response(body, 200, content_type="application/json")  # as app.py's json_response writes it


@admin.get("/v1/usage")
async def usage() -> Response:
    gateway = _gateway()
    view = gateway.books.authenticate(request.headers.get("Authorization"))
    policy = TenantPolicy.from_record(view.policy)
    start, end = period_bounds(policy.budget_period, gateway.clock())
    last_day = (end - timedelta(microseconds=1)).date().isoformat()
    rows = await gateway.projector.query(
        lambda p: spend_report(
            p, tenant=view.name, day_from=start.date().isoformat(), day_to=last_day, group_by=("tenant",)
        )
    )
    spent = Decimal(rows[0]["cost_usd"]) if rows else ZERO
    reserved = gateway.reserved_usd(view.name)
    budget = policy.budget_usd
    return _json(
        {
            "tenant": view.name,
            "period": policy.budget_period,
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
            "spent_usd": usd_str(spent),
            "reserved_usd": usd_str(reserved),
            "budget_usd": None if budget is None else usd_str(budget),
            "remaining_usd": None if budget is None else usd_str(max(budget - spent - reserved, ZERO)),
            "requests": rows[0]["requests"] if rows else 0,
            "unpriced_requests": rows[0]["unpriced"] if rows else 0,
            "interrupted_unknown_usage": rows[0]["interrupted_unknown_usage"] if rows else 0,
            "cache_hits": rows[0]["cache_hits"] if rows else 0,
            "saved_usd": rows[0]["saved_usd"] if rows else usd_str(ZERO),
            "saved_unpriced": rows[0]["saved_unpriced"] if rows else 0,
        }
    )


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "unpriced": 0,
        "interrupted_unknown_usage": 0,
        "cache_hits": 0,
        "saved_unpriced": 0,
    }
    cost = saved = ZERO
    for row in rows:
        for field in totals:
            totals[field] += row[field]
        cost += Decimal(row["cost_usd"])
        saved += Decimal(row["saved_usd"])
    return {**totals, "cost_usd": usd_str(cost), "saved_usd": usd_str(saved)}


def _effective_from(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            moment = None
        if moment is not None:
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    raise InvalidRequest(
        "'effective_from' must be an ISO 8601 time such as 2026-11-01T00:00:00Z.",
        param="effective_from",
        code="invalid_value",
    )


def _price_json(entry: Any) -> dict[str, Any]:
    """A price entry as the admin API shows it: every rate as a decimal string (None: not set), the
    long-context tier as an object of its own (None: no tier)."""
    price = entry.price
    rates = dict.fromkeys(PRICE_EVENT_FIELDS[:6]) if price is None else price_fields(price)
    shown: dict[str, Any] = {name: field_text(rates[name]) for name in PRICE_EVENT_FIELDS[:6]}
    tier = None if price is None else price.long_context
    shown["long_context"] = None
    if tier is not None:
        shown["long_context"] = {
            name.removeprefix("long_context_"): field_text(rates[name]) for name in PRICE_EVENT_FIELDS[6:]
        }
    return {
        "key": entry.key,
        "effective_from": entry.effective_from.isoformat(),
        "removed": price is None,
        **shown,
        "ref": f"{entry.key}@{entry.effective_from.isoformat()}",
    }
