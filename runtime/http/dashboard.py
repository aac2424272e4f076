"""The dashboard: the ledger as pages in the browser, served by the same app (no JavaScript, no CDN).

    GET  /dashboard                  sign-in (or on to the overview when signed in)
    POST /dashboard/sign-in          the admin key, once → a session cookie; POST /dashboard/sign-out
    GET  /dashboard/overview         spend against budget per tenant, spend per day by model, requests, errors
    GET  /dashboard/tenants/<ref>    burn-down, spend by model and provider, rate limits, recent requests, keys
    GET  /dashboard/providers        breaker state over time, outcomes, error rates, failed attempts
    GET  /dashboard/audit            the event log, filtered by tenant, request id and type, paged
    GET  /dashboard/reprice          a price set → POST (dry run) → POST /dashboard/reprice/commit (confirmed)

The session cookie holds `expiry.csrf.mac`: mac = HMAC-SHA256 over "expiry.csrf" with a key derived from the
admin key (so every process with the same admin key accepts it, and a new admin key ends every session).
It is HttpOnly, SameSite=Strict, Secure over https (or X-Forwarded-Proto: https), path /dashboard, and lasts
`SESSION_S`. Every write (sign-out, re-pricing) also carries the session's CSRF token in its form, checked in
constant time.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
import tomllib
from collections.abc import Awaitable, Callable
from decimal import Decimal
from hashlib import sha256
from typing import Any

from markupsafe import Markup
from quart import Blueprint, Response, redirect, render_template, request

from events.money import ZERO, usd_str
from events.projections import spend_report, tenant_keys
from events.request import Request
from policies.cost import Price, field_text, price_fields
from policies.errors import InvalidRequest
from runtime.errors import NotFound, Unauthenticated
from runtime.gateway import Gateway
from runtime.http import charts
from runtime.http.admin_series import (
    breaker_history,
    burn_down,
    find_tenant,
    provider_health,
    spend_series,
    tenant_budget,
)
from runtime.ledger.reprice import parse_request, run_in_gateway

COOKIE = "tollgate_session"
SESSION_S = 8 * 3600
AUDIT_PAGE = 50
AUDIT_SCAN = 20_000
RECENT_REQUESTS = 20
CSP = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'"


class Sessions:
    """Signed session values: `expiry.csrf.mac`. Pure apart from the clock and the random token."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock

    def _mac(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), sha256).hexdigest()

    def issue(self) -> tuple[str, str]:
        """A new session: (cookie value, its CSRF token)."""
        csrf = secrets.token_urlsafe(24)
        payload = f"{int(self._clock()) + SESSION_S}.{csrf}"
        return f"{payload}.{self._mac(payload)}", csrf

    def csrf(self, value: str | None) -> str | None:
        """The session's CSRF token when `value` is a genuine, unexpired session; else None."""
        if not value or value.count(".") != 2:
            return None
        expiry, csrf, mac = value.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac(f"{expiry}.{csrf}").encode()):  # bytes: any input
            return None
        if not expiry.isdigit() or int(expiry) <= self._clock():
            return None
        return csrf


def money(value: Any) -> str:
    return "—" if value is None else "$" + usd_str(Decimal(value))


def dashboard(gateway: Gateway) -> Blueprint:
    page = Blueprint(
        "dashboard",
        __name__,
        template_folder="assets/templates",
        static_folder="assets/static",
        static_url_path="/dashboard/static",
    )
    sessions = Sessions(gateway.admin.derive("tollgate-dashboard-session"))

    def session_csrf() -> str | None:
        return sessions.csrf(request.cookies.get(COOKIE))

    async def render(template: str, status: int = 200, **context: Any) -> Response:
        body = await render_template(template, csrf=session_csrf(), money=money, **context)
        response = Response(body, status, content_type="text/html; charset=utf-8")
        return response

    def check_csrf(form: Any) -> None:
        wanted = session_csrf()
        given = form.get("csrf", "")
        if wanted is None or not hmac.compare_digest(str(given).encode(), wanted.encode()):
            raise Forbidden()

    @page.after_request
    async def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if "static" not in request.path:
            response.headers["Cache-Control"] = "no-store"
        return response

    def signed_in(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def checked(*args: Any, **kwargs: Any) -> Any:
            if session_csrf() is None:
                return redirect("/dashboard", 303)
            try:
                return await handler(*args, **kwargs)
            except Forbidden:
                return await render("error.html", 403, message="This form has expired: reload the page and retry.")
            except NotFound as error:
                return await render("error.html", 404, message=str(error))

        checked.__name__ = handler.__name__
        return checked

    @page.get("/dashboard")
    async def sign_in_page() -> Any:
        if session_csrf() is not None:
            return redirect("/dashboard/overview", 303)
        return await render("signin.html")

    @page.post("/dashboard/sign-in")
    async def sign_in() -> Any:
        form = await request.form
        key = str(form.get("admin_key", "")).strip()
        try:
            gateway.admin.check(f"Bearer {key}")
        except Unauthenticated:
            return await render("signin.html", 401, error="That is not the admin key. Nothing was signed in.")
        value, _ = sessions.issue()
        response = redirect("/dashboard/overview", 303)
        response.set_cookie(
            COOKIE,
            value,
            max_age=SESSION_S,
            path="/dashboard",
            # Behind a TLS proxy the scheme is http: its X-Forwarded-Proto only ever makes the cookie stricter.
            secure=request.scheme == "https" or request.headers.get("X-Forwarded-Proto") == "https",
            httponly=True,
            samesite="Strict",
        )
        return response

    @page.post("/dashboard/sign-out")
    @signed_in
    async def sign_out() -> Any:
        check_csrf(await request.form)
        response = redirect("/dashboard", 303)
        response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="Strict")
        return response

    @page.get("/dashboard/overview")
    @signed_in
    async def overview() -> Any:
        days = 90 if request.args.get("days") == "90" else 30
        budgets = [await tenant_budget(gateway, view) for view in gateway.books.tenants()]
        spend = await spend_series(gateway, days=days)
        health = await provider_health(gateway)
        cached = await gateway.projector.query(lambda p: spend_report(p, group_by=()))
        budget_chart = charts.hbars(
            [
                (b["tenant"], Decimal(b["spent_usd"]), None if b["budget_usd"] is None else Decimal(b["budget_usd"]))
                for b in budgets
            ],
            label="Spend this period against budget, per tenant",
        )
        spend_chart = charts.stacked_bars(
            spend["days"],
            [(s["name"], [Decimal(v) for v in s["cost_usd"]]) for s in spend["series"]],
            label=f"Spend per day for {days} days, by model",
        )
        requests_chart = charts.stacked_bars(
            spend["days"],
            [(s["name"], [Decimal(v) for v in s["requests"]]) for s in spend["series"]],
            label=f"Requests per day for {days} days, by model",
            unit="count",
        )
        return await render(
            "overview.html",
            days=days,
            budgets=budgets,
            spend=spend,
            health=health,
            cached_tokens=cached[0]["cached_tokens"] if cached else 0,
            budget_chart=Markup(budget_chart),
            spend_chart=Markup(spend_chart),
            requests_chart=Markup(requests_chart),
            legend=[(s["name"], i % len(charts.PALETTE)) for i, s in enumerate(spend["series"])],
        )

    @page.get("/dashboard/tenants/<ref>")
    @signed_in
    async def tenant(ref: str) -> Any:
        view = find_tenant(gateway, ref)
        budget = await tenant_budget(gateway, view)
        burn = await burn_down(gateway, view)
        day_from = burn["days"][0] if burn["days"] else None
        by_model = await gateway.projector.query(
            lambda p: spend_report(p, tenant=view.name, day_from=day_from, group_by=("model", "provider"))
        )
        keys = await gateway.projector.query(lambda p: tenant_keys(p, view.id))
        live = next((t for t in gateway.statistics().tenants if t.tenant == view.name), None)
        recent = await recent_requests(view.name)
        chart = charts.line(
            [(p["day"], Decimal(p["spent_usd"])) for p in burn["points"]],
            [(t["label"], Decimal(t["usd"])) for t in burn["thresholds"]],
            label=f"Budget burn-down of {view.name}",
            categories=burn["days"],
        )
        return await render(
            "tenant.html",
            view=view,
            budget=budget,
            burn=burn,
            by_model=by_model,
            keys=keys,
            live=live,
            policy=view.policy,
            recent=recent,
            chart=Markup(chart),
        )

    async def recent_requests(tenant: str) -> list[dict[str, Any]]:
        """The tenant's last settled requests among the log's last `AUDIT_SCAN` events, newest first."""
        settled: list[dict[str, Any]] = []
        admitted: dict[Any, Request.Admitted] = {}
        start = max(gateway.journal.statistics().position - AUDIT_SCAN, 0)
        found, _ = await gateway.events_page(start, AUDIT_SCAN, tenant, None, AUDIT_SCAN)
        for item in found:
            event = item.event
            if isinstance(event, Request.Admitted):
                admitted[event.originator_id] = event
            elif isinstance(event, Request.Settled):
                asked = admitted.get(event.originator_id)
                settled.append(
                    {
                        "request_id": item.owner[1] if item.owner else "",
                        "at": (asked.received_at if asked else event.timestamp).isoformat(timespec="seconds"),
                        "model": asked.model if asked else event.served_model,
                        "outcome": event.outcome,
                        "provider": event.provider,
                        "prompt_tokens": event.prompt_tokens,
                        "completion_tokens": event.completion_tokens,
                        "cost_usd": event.cost_usd,
                    }
                )
        return settled[-RECENT_REQUESTS:][::-1]

    @page.get("/dashboard/providers")
    @signed_in
    async def providers() -> Any:
        days = 90 if request.args.get("days") == "90" else 30
        history = await breaker_history(gateway, days)
        lanes = [
            (lane["provider"], [(s["from"], s["to"], s["state"]) for s in lane["segments"]])
            for lane in history["lanes"]
        ]
        return await render(
            "providers.html",
            days=days,
            history=history,
            health=await provider_health(gateway),
            stats=gateway.statistics().providers,
            chart=Markup(charts.state_strip(lanes, label=f"Breaker state over {days} days")),
        )

    @page.get("/dashboard/audit")
    @signed_in
    async def audit() -> Any:
        args = request.args
        tenant = args.get("tenant") or None
        request_id = args.get("request_id") or None
        kind = args.get("type") or None
        try:
            after = max(int(args.get("after") or 0), 0)
        except ValueError:
            after = 0
        if tenant is not None:
            tenant = find_tenant(gateway, tenant).name
        rows: list[dict[str, Any]] = []
        position, end = after, gateway.journal.statistics().position
        while len(rows) < AUDIT_PAGE and position < end and position - after < AUDIT_SCAN:
            found, next_after = await gateway.events_page(position, AUDIT_PAGE, tenant, request_id, AUDIT_SCAN)
            for item in found:
                name = type(item.event).__qualname__
                if kind is None or kind.lower() in name.lower():
                    rows.append(event_row(item.position, item.event, item.owner))
                    if len(rows) >= AUDIT_PAGE:
                        next_after = item.position
                        break
            if next_after <= position:
                break
            position = next_after
        more = position < end
        return await render(
            "audit.html",
            rows=rows,
            tenant=tenant or "",
            request_id=request_id or "",
            kind=kind or "",
            after=after,
            next_after=position if more else None,
            tenants=[v.name for v in gateway.books.tenants()],
        )

    @page.get("/dashboard/reprice")
    @signed_in
    async def reprice_form() -> Any:
        return await render("reprice.html", prices_text=example_prices(gateway))

    @page.post("/dashboard/reprice")
    @signed_in
    async def reprice_dry_run() -> Any:
        form = await request.form
        check_csrf(form)
        files = await request.files
        upload = files.get("prices_file")
        text = str(form.get("prices", ""))
        if upload is not None and upload.filename:
            text = upload.read().decode("utf-8", "replace")
        filters = {name: str(form.get(name, "")).strip() or None for name in ("tenant", "from", "to")}
        try:
            body = reprice_body(text, filters)
            prices, found_filters = parse_request(dict(body), gateway.books.prices)
        except InvalidRequest as error:
            return await render("reprice.html", 400, prices_text=text, error=error.message, filters=filters)
        report = (await run_in_gateway(gateway, prices, found_filters, commit=False, by="dashboard")).document()
        return await render(
            "reprice.html",
            prices_text=text,
            filters=filters,
            report=report,
            body_json=json.dumps(body, sort_keys=True),
            chart=Markup(delta_chart(report)),
        )

    @page.post("/dashboard/reprice/commit")
    @signed_in
    async def reprice_commit() -> Any:
        form = await request.form
        check_csrf(form)
        if form.get("confirm") != "yes":
            return await render("error.html", 400, message="Tick the confirmation to commit a re-pricing.")
        try:
            body = json.loads(str(form.get("body", "")))
            prices, filters = parse_request(dict(body), gateway.books.prices)
        except (ValueError, InvalidRequest, TypeError):
            return await render("error.html", 400, message="The re-pricing form was changed: start again.")
        if prices.fingerprint != form.get("fingerprint"):
            return await render("error.html", 409, message="The price set differs from the dry run: start again.")
        report = (await run_in_gateway(gateway, prices, filters, commit=True, by="dashboard")).document()
        restated = await gateway.projector.query(lambda p: spend_report(p, group_by=("tenant", "model")))
        recorded = await gateway.projector.query(
            lambda p: spend_report(p, group_by=("tenant", "model"), basis="as_recorded")
        )
        as_recorded = {(r["tenant"], r["model"]): r["cost_usd"] for r in recorded}
        return await render(
            "reprice.html",
            committed=report,
            restated=[{**r, "as_recorded_usd": as_recorded.get((r["tenant"], r["model"]))} for r in restated],
            total_restated=usd_str(sum((Decimal(r["cost_usd"]) for r in restated), ZERO)),
        )

    return page


class Forbidden(Exception):
    """A write without this session's CSRF token."""


def event_row(position: int, event: Any, owner: tuple[str, str] | None) -> dict[str, Any]:
    skip = ("originator_id", "originator_version", "timestamp", "originator_topic")
    data = {k: v for k, v in event.__dict__.items() if k not in skip}
    return {
        "position": position,
        "type": type(event).__qualname__,
        "aggregate_id": str(event.originator_id),
        "at": event.timestamp.isoformat(timespec="seconds"),
        "tenant": owner[0] if owner else "",
        "request_id": owner[1] if owner else "",
        "data": json.dumps(data, default=str, sort_keys=True)[:400],
    }


def reprice_body(text: str, filters: dict[str, str | None]) -> dict[str, Any]:
    """The `POST /admin/reprice` body for a price set typed or uploaded as TOML (a `[pricing]` file or
    bare `"PROVIDER/MODEL" = {...}` lines) or JSON."""
    text = text.strip()
    if not text:
        raise InvalidRequest("Enter or upload a price set.", param="prices", code="invalid_value")
    try:
        data = json.loads(text) if text.startswith("{") else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise InvalidRequest(f"The price set is not valid TOML or JSON: {error}", param="prices") from None
    if isinstance(data, dict) and isinstance(data.get("pricing"), dict):
        data = data["pricing"]
    if isinstance(data, dict) and isinstance(data.get("prices"), dict):
        data = data["prices"]
    body: dict[str, Any] = {"prices": json.loads(json.dumps(data, default=str))}
    body.update({k: v for k, v in filters.items() if v is not None})
    return body


def example_prices(gateway: Gateway) -> str:
    """The prices in force, as TOML lines to edit."""
    current = gateway.books.prices.current(gateway.clock())
    lines = []
    for key, entry in sorted(current.items()):
        price = entry.price
        if price is None:
            continue
        lines.append(price_toml(key, price))
    return "\n".join(lines)


def price_toml(key: str, price: Price) -> str:
    """One price as a TOML line with every field it sets (the long-context tier as an inline table)."""
    fields = {name: field_text(value) for name, value in price_fields(price).items() if value is not None}
    tier = {name.removeprefix("long_context_"): fields.pop(name) for name in list(fields) if name.startswith("long_")}

    def table(values: dict[str, Any]) -> str:
        return ", ".join(f"{name} = {json.dumps(value)}" for name, value in values.items())

    more = f", long_context = {{ {table(tier)} }}" if tier else ""
    return f'"{key}" = {{ {table(fields)}{more} }}'


def delta_chart(report: dict[str, Any]) -> str:
    rows = [(f"{r['tenant']} · {r['model']}", Decimal(r["delta_usd"])) for r in report["rows"]]
    return charts.delta_bars(rows, label="Re-pricing delta by tenant and model")
