"""The `tollgate` command.

    tollgate serve [--config FILE] [--host H] [--port P]
    tollgate check-config [--config FILE]
    tollgate tenants list | show T | create NAME [policy] | update T [policy] | rotate-key T [--grace-period-s N]
                     | disable T | enable T
    tollgate pricing list [--history] | set PROVIDER/MODEL --input X --output Y [--cached-input Z]
                     [--cache-write W] [--cache-write-1h H] [--per-request F] [--long-context JSON]
                     [--effective-from TIME] | remove PROVIDER/MODEL [--effective-from TIME]
                     | import --from genai-prices [--provider P[=OURS]] [--models GLOB] [--dry-run] [--overwrite]
    tollgate spend [--tenant T] [--from DAY] [--to DAY] [--group-by model,provider,day] [--basis B]
    tollgate events [--after N] [--limit N] [--tenant T] [--request-id ID] [--ledger-id ID]
    tollgate providers
    tollgate replay --verify [--config FILE]
    tollgate reprice (--prices FILE | --as-of TIME | --ledger-prices) [--from T] [--to T] [--tenant T]
                     [--model M] [--provider P] [--commit] [--by NAME] [--offline [--config FILE]]

`tenants`, `pricing`, `spend`, `events` and `providers` talk to a running gateway's admin API (`--url`,
default http://127.0.0.1:8080; the admin key from `$TOLLGATE_ADMIN_KEY` or `--admin-key`) and print a
table, JSON or CSV (`--format`; `--json` is `--format json`, the API's whole document).
`replay --verify` works on the ledger files directly, and reads only the config's `[ledger]`.
`reprice` is a dry run unless `--commit`; it goes through the admin API (the gateway's Journal stays
the only writer), or with `--offline` reads the ledger file itself for a dry run without a gateway.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import trio

from events.projections import SPEND_BASES, SPEND_GROUPS
from events.store import LedgerError, LedgerStore, is_postgres, redact
from policies.tenant import POLICY_FIELDS
from runtime.cli.output import FORMATS, write_rows
from runtime.cli.progress import Progress
from runtime.config import Config, ConfigError, LedgerConfig, load_config, load_ledger_config

POLICY_OPTIONS = {
    "budget_usd": str,
    "budget_period": str,
    "budget_mode": str,
    "rpm": int,
    "tpm": int,
    "max_parallel": int,
    "default_provider": str,
}
LIST_OPTIONS = ("allowed_models", "fallback_providers")
T = TypeVar("T")


class CommandFailed(Exception):
    pass


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("TOLLGATE_URL", "http://127.0.0.1:8080"), help="the gateway")
    parser.add_argument("--admin-key", default=None, help="admin key (default: $TOLLGATE_ADMIN_KEY)")
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")


def _policy_options(parser: argparse.ArgumentParser) -> None:
    for name, kind in POLICY_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind)
    for name in LIST_OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help="comma-separated")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate", description="An OpenAI-compatible LLM gateway with a ledger.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $TOLLGATE_CONFIG or config.toml)")
    serve.add_argument("--host", help="override [server].host")
    serve.add_argument("--port", type=int, help="override [server].port (0 = any free port)")
    serve.add_argument("--workers", type=int, help="override [server].workers (worker processes on one port)")
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # a worker: serve this inherited socket
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", help="config file (default: $TOLLGATE_CONFIG or config.toml)")

    tenants = commands.add_parser("tenants", help="manage tenants through the admin API")
    tenant_actions = tenants.add_subparsers(dest="action", required=True)
    for action in ("list", "show", "create", "update", "rotate-key", "disable", "enable"):
        sub = tenant_actions.add_parser(action)
        _client_options(sub)
        if action == "create":
            sub.add_argument("name")
            sub.add_argument("--disabled", action="store_true")
            _policy_options(sub)
        elif action != "list":
            sub.add_argument("tenant", help="tenant id or name")
        if action == "update":
            _policy_options(sub)
        if action == "rotate-key":
            sub.add_argument("--grace-period-s", type=float, default=0.0)

    pricing = commands.add_parser("pricing", help="read and set prices through the admin API")
    price_actions = pricing.add_subparsers(dest="action", required=True)
    listing = price_actions.add_parser("list")
    _client_options(listing)
    listing.add_argument("--history", action="store_true", help="every entry, not only those in force")
    setting = price_actions.add_parser("set")
    _client_options(setting)
    setting.add_argument("key", help="PROVIDER/MODEL")
    setting.add_argument("--input", required=True, help="USD per million input tokens")
    setting.add_argument("--output", required=True, help="USD per million output tokens")
    setting.add_argument("--cached-input", help="USD per million cached input tokens")
    setting.add_argument("--cache-write", help="USD per million tokens written to the prompt cache (5-minute)")
    setting.add_argument("--cache-write-1h", help="USD per million tokens written to the prompt cache for 1 hour")
    setting.add_argument("--per-request", help="USD per request, on top of the tokens")
    setting.add_argument(
        "--long-context",
        metavar="JSON",
        help="the long-context tier as a JSON object: above_prompt_tokens, input_per_mtok, output_per_mtok, ...",
    )
    setting.add_argument("--effective-from", help="ISO time (default: now; past times allowed)")
    removing = price_actions.add_parser("remove")
    _client_options(removing)
    removing.add_argument("key")
    removing.add_argument("--effective-from")
    importing = price_actions.add_parser("import", help="append a price catalogue's prices (runtime/cli/catalogue.py)")
    _client_options(importing)
    importing.add_argument("--from", dest="catalogue", required=True, choices=("genai-prices",))
    importing.add_argument(
        "--provider",
        action="append",
        metavar="P[=OURS]",
        help="catalogue provider id, or ID=OURS to price configured provider OURS (repeatable; default: "
        "every configured provider named like a catalogue provider)",
    )
    importing.add_argument(
        "--models",
        action="append",
        metavar="GLOB",
        help="only models (our name or the catalogue's id) matching it (repeatable)",
    )
    importing.add_argument("--dry-run", action="store_true", help="print what would be appended, append nothing")
    importing.add_argument("--overwrite", action="store_true", help="replace conflicting prices set by hand")

    spend = commands.add_parser("spend", help="spend from the ledger's projections")
    _client_options(spend)
    spend.add_argument("--tenant")
    spend.add_argument("--from", dest="day_from")
    spend.add_argument("--to", dest="day_to")
    spend.add_argument(
        "--group-by",
        default="tenant,model,provider",
        help=f"comma-separated, of {', '.join(SPEND_GROUPS)} (operation: the API called, chat, messages, ...)",
    )
    spend.add_argument(
        "--basis", choices=SPEND_BASES, help="costs as recorded, or as restated by re-pricing (the API's default)"
    )

    events = commands.add_parser("events", help="the audit log")
    _client_options(events)
    events.add_argument("--after", type=int, default=0)
    events.add_argument("--limit", type=int, default=100)
    events.add_argument("--tenant")
    events.add_argument("--request-id", help="the client's X-Request-ID (several tenants may share one)")
    events.add_argument("--ledger-id", help="one request's ledger id (x_gateway.ledger_id, x-tollgate-ledger-id)")

    providers = commands.add_parser("providers", help="each provider's state, breaker and load")
    _client_options(providers)

    reprice = commands.add_parser("reprice", help="re-price history under a price set (a dry run unless --commit)")
    _client_options(reprice)
    source = reprice.add_mutually_exclusive_group(required=True)
    source.add_argument("--prices", metavar="FILE", help="a TOML file with a [pricing] table (config.toml's format)")
    source.add_argument("--as-of", metavar="TIME", help="the ledger's prices in force at this time, for every request")
    source.add_argument(
        "--ledger-prices", action="store_true", help="the ledger's price history, each request at its own time"
    )
    reprice.add_argument("--from", dest="start", metavar="DAY|TIME", help="received at or after (a date: its start)")
    reprice.add_argument("--to", dest="end", metavar="DAY|TIME", help="received before (a date: its end, inclusive)")
    reprice.add_argument("--tenant")
    reprice.add_argument("--model", help="requested or served model")
    reprice.add_argument("--provider")
    reprice.add_argument("--commit", action="store_true", help="append the restatements (default: a dry run)")
    reprice.add_argument("--by", default=os.environ.get("USER") or "cli", help="who re-prices (recorded)")
    reprice.add_argument("--offline", action="store_true", help="a dry run on the ledger file, without a gateway")
    reprice.add_argument("--config", help="with --offline: config file (default: $TOLLGATE_CONFIG or config.toml)")

    replay = commands.add_parser("replay", help="rebuild projections from the ledger")
    replay.add_argument("--config", help="config file (default: $TOLLGATE_CONFIG or config.toml)")
    replay.add_argument("--verify", action="store_true", help="diff a rebuild with the live projections")
    ledger = commands.add_parser("ledger", help="ledger maintenance")
    ledger_actions = ledger.add_subparsers(dest="action", required=True)
    copying = ledger_actions.add_parser("copy", help="copy a ledger into an empty one (another backend) and verify it")
    copying.add_argument(
        "--from", dest="source", required=True, help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
    )
    copying.add_argument(
        "--to", dest="target", required=True, help="an empty ledger: sqlite:///PATH or postgresql://..."
    )
    copying.add_argument("--from-password-env", help="environment variable holding the source's PostgreSQL password")
    copying.add_argument("--to-password-env", help="environment variable holding the target's PostgreSQL password")
    return parser


def load_config_or_exit(path: str | None) -> Config:
    return _or_exit(load_config, path)


def load_ledger_config_or_exit(path: str | None) -> LedgerConfig:
    """The offline commands read only `[ledger]` (no provider or tenant secret need be set)."""
    return _or_exit(load_ledger_config, path)


def _or_exit(load: Callable[[str | None], T], path: str | None) -> T:
    try:
        return load(path)
    except ConfigError as error:
        print("tollgate: the configuration has problems:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    key = args.admin_key or os.environ.get("TOLLGATE_ADMIN_KEY")
    if not key:
        raise CommandFailed("set TOLLGATE_ADMIN_KEY (or pass --admin-key) to the gateway's admin key")
    try:
        response = httpx.request(
            method, args.url.rstrip("/") + path, headers={"Authorization": f"Bearer {key}"}, timeout=60, **kwargs
        )
    except httpx.HTTPError as error:
        raise CommandFailed(f"cannot reach the gateway at {args.url}: {error}") from None
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code >= 400:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        raise CommandFailed(f"{response.status_code}: {message or response.text}")
    return body


def _policy_from(args: argparse.Namespace) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    for name in POLICY_FIELDS:
        value = getattr(args, name, None)
        if value is None:
            continue
        policy[name] = [v for v in value.split(",") if v] if name in LIST_OPTIONS else value
    return policy


def _tenants(args: argparse.Namespace) -> None:
    action = args.action
    if action == "list":
        body = _call(args, "GET", "/admin/tenants")
        write_rows(body["data"], args.format, document=body)
        return
    if action == "create":
        body = _call(
            args, "POST", "/admin/tenants", json={"name": args.name, "enabled": not args.disabled, **_policy_from(args)}
        )
        write_rows([body], args.format, document=body)
        print("the api_key is shown only once: store it now", file=sys.stderr)
        return
    path = f"/admin/tenants/{args.tenant}"
    if action == "show":
        body = _call(args, "GET", path)
    elif action == "update":
        body = _call(args, "PATCH", path, json=_policy_from(args))
    elif action == "rotate-key":
        body = _call(args, "POST", path + "/rotate-key", json={"grace_period_s": args.grace_period_s})
    else:
        body = _call(args, "POST", f"{path}/{action}")
    write_rows([body], args.format, document=body)


def _pricing(args: argparse.Namespace) -> int:
    if args.action == "import":
        return _pricing_import(args)
    if args.action == "list":
        body = _call(args, "GET", "/admin/pricing", params={"history": "true"} if args.history else None)
    else:
        value = None
        if args.action == "set":
            value = {"input_per_mtok": args.input, "output_per_mtok": args.output}
            optional = {
                "cached_input_per_mtok": args.cached_input,
                "cache_write_per_mtok": args.cache_write,
                "cache_write_1h_per_mtok": args.cache_write_1h,
                "per_request_usd": args.per_request,
            }
            value.update({name: given for name, given in optional.items() if given is not None})
            if args.long_context is not None:
                try:
                    value["long_context"] = json.loads(args.long_context)
                except ValueError:
                    raise SystemExit("--long-context: expected a JSON object") from None
        document: dict[str, Any] = {"prices": {args.key: value}}
        if args.effective_from:
            document["effective_from"] = args.effective_from
        body = _call(args, "PUT", "/admin/pricing", json=document)
    write_rows(body["data"], args.format, document=body)
    return 0


def _pricing_import(args: argparse.Namespace) -> int:
    """Exit 0, or 1 when a conflict with a price set by hand was refused (not with --overwrite)."""
    from runtime.cli import catalogue

    try:
        version, providers = catalogue.load()
    except catalogue.CatalogueMissing as error:
        raise CommandFailed(str(error)) from None
    configured = {p["name"]: p.get("models", []) for p in _call(args, "GET", "/admin/providers")["providers"]}
    try:
        mapping = catalogue.parse_mapping(args.provider, (p.id for p in providers), configured)
    except ValueError as error:
        raise CommandFailed(str(error)) from None
    selection = catalogue.select(version, providers, mapping, configured, args.models)
    body = {"data": [], "dry_run": args.dry_run}
    if selection.prices:
        body = _call(
            args,
            "POST",
            "/admin/pricing/import",
            json={
                "source": args.catalogue,
                "catalogue": version,
                "prices": selection.prices,
                "overwrite": args.overwrite,
                "dry_run": args.dry_run,
            },
        )
    outcomes = [*body["data"], *selection.skipped]
    document = {**body, "catalogue": version, "data": outcomes}
    rows = [_import_row(o) for o in outcomes] if args.format == "table" else outcomes
    write_rows(rows, args.format, document=document)
    counts = {s: sum(1 for o in outcomes if o["status"] == s) for s in IMPORT_STATUSES}
    refused = counts["conflict"]
    print(
        f"genai-prices {version}: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + (" (dry run: nothing was appended)" if args.dry_run else ""),
        file=sys.stderr,
    )
    if refused:
        print(f"{refused} conflict(s) with prices set by hand kept: --overwrite replaces them", file=sys.stderr)
    return 1 if refused else 0


IMPORT_STATUSES = ("imported", "unchanged", "overwritten", "conflict", "skipped")


def _import_row(outcome: dict[str, Any]) -> dict[str, Any]:
    note = outcome.get("note") or ""
    held = outcome.get("held")
    if held is not None:
        kept = "kept" if outcome["status"] == "conflict" else "replaced"
        note = f"{kept}: {held['source']}'s {_rates_text(held)} from {held['effective_from']}; " + note
    return {
        "key": outcome["key"],
        "effective_from": outcome["effective_from"],
        "status": outcome["status"],
        "price": _rates_text(outcome) if "input_per_mtok" in outcome else "",
        "note": note.strip("; "),
    }


def _rates_text(price: dict[str, Any]) -> str:
    if price.get("removed"):
        return "removal"
    names = {"input_per_mtok": "in", "output_per_mtok": "out", "cached_input_per_mtok": "cached"}
    shown = [f"{short} {price[name]}" for name, short in names.items() if price.get(name) is not None]
    if price.get("long_context"):
        shown.append(f"tier above {price['long_context']['above_prompt_tokens']}")
    return " ".join(shown)


def _spend(args: argparse.Namespace) -> None:
    params = {"group_by": args.group_by}
    for name, value in (("tenant", args.tenant), ("from", args.day_from), ("to", args.day_to), ("basis", args.basis)):
        if value:
            params[name] = value
    body = _call(args, "GET", "/admin/spend", params=params)
    rows = body["data"]
    if args.format == "table" and rows:
        rows = [*rows, {next(iter(rows[0])): "TOTAL", **{k: v for k, v in body["totals"].items()}}]
    write_rows(rows, args.format, document=body)
    if args.format == "table":
        print(f"basis: {body['basis']}", file=sys.stderr)


def _events(args: argparse.Namespace) -> None:
    params: dict[str, Any] = {"after": args.after, "limit": args.limit}
    if args.tenant:
        params["tenant"] = args.tenant
    if args.request_id:
        params["request_id"] = args.request_id
    if args.ledger_id:
        params["ledger_id"] = args.ledger_id
    body = _call(args, "GET", "/admin/events", params=params)
    write_rows(event_rows(body["data"]), args.format, document=body)
    if args.format == "table":
        print(f"next: --after {body['next_after']}", file=sys.stderr)


SUMMARY_CHARS = 120
# what a reader looks for first
SUMMARY_FIRST = ("outcome", "reason", "status", "error_kind", "cost_usd", "new_cost_usd", "usage_source")


def event_rows(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per event, the same columns for every type: position, time, type, tenant, request id
    and `key=value` pairs of the remaining fields, `SUMMARY_FIRST` first (cut at `SUMMARY_CHARS`;
    `--json` has them whole).
    Events that carry no tenant or request id (a request's terminal event, a tenant's update) are
    named from an earlier event of their aggregate on the same page."""
    names: dict[str, tuple[str | None, str | None]] = {}  # aggregate id → (tenant, request id)
    rows = []
    for event in events:
        data = dict(event["data"])
        tenant = data.pop("tenant", None)
        if event["type"].startswith("Tenant."):
            tenant = data.pop("name", tenant)
        request_id = data.pop("request_id", None)
        known = names.get(event["aggregate_id"], (None, None))
        tenant, request_id = tenant or known[0], request_id or known[1]
        names[event["aggregate_id"]] = (tenant, request_id)
        order = [key for key in SUMMARY_FIRST if key in data] + [key for key in data if key not in SUMMARY_FIRST]
        pairs = " ".join(f"{key}={_summary_value(key, data[key])}" for key in order)
        rows.append(
            {
                "position": event["position"],
                "time": _event_time(event["timestamp"]),
                "type": event["type"],
                "tenant": tenant,
                "request_id": request_id,
                "summary": pairs if len(pairs) <= SUMMARY_CHARS else pairs[: SUMMARY_CHARS - 1] + "…",
            }
        )
    return rows


def _summary_value(key: str, value: Any) -> str:
    if key.endswith("_sha256") and isinstance(value, str):
        return value[:8] + "…"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _event_time(timestamp: str) -> str:
    """`2026-11-01T12:00:00.123Z` (UTC, milliseconds)."""
    moment = datetime.fromisoformat(timestamp).astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


PROVIDER_COLUMNS = (
    "kind",
    "state",
    "breaker",
    "half_open_in_s",
    "in_flight",
    "max_concurrency",
    "waiting",
    "requests",
    "failures",
    "last_error",
)


def _providers(args: argparse.Namespace) -> None:
    body = _call(args, "GET", "/admin/providers")
    rows = [{"provider": p["name"], **{c: p.get(c) for c in PROVIDER_COLUMNS}} for p in body["providers"]]
    write_rows(rows, args.format, document=body)


def _replay(args: argparse.Namespace) -> int:
    from runtime.ledger.replay import verify

    if not args.verify:
        print("tollgate replay: only --verify is available", file=sys.stderr)
        return 2
    ledger = load_ledger_config_or_exit(args.config)
    try:
        problems = verify(ledger.location, ledger.password())
    except LedgerError as error:
        print(f"tollgate replay: {error}", file=sys.stderr)
        return 2
    if problems:
        print("replay --verify: the live projections differ from a rebuild:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if is_postgres(ledger.location):
        print("replay --verify: every event decodes and the log folds the same paged and whole (PostgreSQL)")
    else:
        print("replay --verify: the live projections match a rebuild from the ledger")
    return 0


def _open_url(url: str, password_env: str | None, which: str) -> LedgerStore:
    from runtime.config import check_ledger

    config = LedgerConfig(url=url if "://" in url else f"sqlite:///{url}", password_env=password_env)
    problems = check_ledger(config, os.environ)
    if problems:
        raise CommandFailed(f"--{which}: " + "; ".join(p.removeprefix("ledger.") for p in problems))
    return LedgerStore(config.location, config.password())


def _ledger_copy(args: argparse.Namespace) -> int:
    from runtime.ledger.copy import copy_ledger

    try:
        source = _open_url(args.source, args.from_password_env, "from")
        try:
            if source.position() == 0:
                raise CommandFailed(f"the source ledger {redact(source.path)} holds no events")
            target = _open_url(args.target, args.to_password_env, "to")
            try:
                problems = copy_ledger(source, target)
                total = target.position()
            finally:
                target.close()
        finally:
            source.close()
    except LedgerError as error:
        raise CommandFailed(str(error)) from None
    if problems:
        print("ledger copy: the copy differs from the source:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"ledger copy: {total} events copied and verified (count, last position, SHA-256 of every event)")
    return 0


def _reprice_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"commit": args.commit, "by": args.by}
    if args.prices:
        try:
            with open(args.prices, "rb") as file:
                document = tomllib.load(file)
        except OSError as error:
            raise CommandFailed(f"cannot read {args.prices}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise CommandFailed(f"{args.prices}: not valid TOML ({error})") from None
        if not isinstance(document.get("pricing"), dict):
            raise CommandFailed(f'{args.prices}: no [pricing] table (write [pricing."PROVIDER/MODEL"] entries)')
        body["prices"] = document["pricing"]
    elif args.as_of:
        body["as_of"] = args.as_of
    else:
        body["ledger"] = True
    for name, value in (
        ("from", args.start),
        ("to", args.end),
        ("tenant", args.tenant),
        ("model", args.model),
        ("provider", args.provider),
    ):
        if value:
            body[name] = value
    return body


def _reprice_offline(args: argparse.Namespace, body: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from events.store import LedgerStore
    from policies.errors import InvalidRequest
    from runtime.ledger.reprice import dry_run, ledger_price_book, parse_request

    if args.commit:
        raise CommandFailed("--offline is a dry run; commit through the running gateway (drop --offline)")
    ledger = load_ledger_config_or_exit(args.config)
    store = LedgerStore(ledger.location, ledger.password())
    try:
        try:
            prices, filters = parse_request(body, ledger_price_book(store))
        except InvalidRequest as error:
            raise CommandFailed(str(error)) from None
        return dry_run(store, prices, filters, progress).document()
    finally:
        store.close()


def _reprice_online(args: argparse.Namespace, body: dict[str, Any], progress: Progress) -> dict[str, Any]:
    key = args.admin_key or os.environ.get("TOLLGATE_ADMIN_KEY")
    if not key:
        raise CommandFailed("set TOLLGATE_ADMIN_KEY (or pass --admin-key) to the gateway's admin key")
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/x-ndjson"}
    try:
        with httpx.stream(
            "POST", args.url.rstrip("/") + "/admin/reprice", json=body, headers=headers, timeout=None
        ) as response:
            if response.status_code >= 400:
                response.read()
                try:
                    message = response.json().get("error", {}).get("message")
                except ValueError:
                    message = None
                raise CommandFailed(f"{response.status_code}: {message or response.text}")
            for line in response.iter_lines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if "progress" in item:
                    progress(item["progress"]["done"], item["progress"]["total"])
                elif "report" in item:
                    return dict(item["report"])
    except httpx.HTTPError as error:
        raise CommandFailed(f"cannot reach the gateway at {args.url}: {error}") from None
    raise CommandFailed("the gateway ended the re-pricing run without a report")


def _reprice(args: argparse.Namespace) -> None:
    body = _reprice_body(args)
    progress = Progress("reprice")
    try:
        report = _reprice_offline(args, body, progress) if args.offline else _reprice_online(args, body, progress)
    finally:
        progress.close()
    rows = report["rows"]
    if args.format == "table" and rows:
        rows = [*rows, {"tenant": "TOTAL", **report["totals"]}]
    write_rows(rows, args.format, document=report)
    if args.format == "table":
        if report["newly_priced_requests"]:
            print(f"newly priced requests: {', '.join(report['newly_priced_requests'])}", file=sys.stderr)
        print(f"price set {report['fingerprint']} ({report['price_source']})", file=sys.stderr)
        if report["committed"]:
            print(f"committed as repricing {report['repricing_id']}", file=sys.stderr)
        elif args.commit:
            print("nothing to commit: every selected cost is already at these prices", file=sys.stderr)
        else:
            print("dry run: nothing was written (add --commit to append the restatements)", file=sys.stderr)


def _ledger_error(error: BaseException) -> LedgerError | None:
    if isinstance(error, LedgerError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _ledger_error(inner)
            if found is not None:
                return found
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for chatty in ("httpx", "httpcore"):  # one INFO line per HTTP call says nothing a command's output does not
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        if args.command == "check-config":
            config = load_config_or_exit(args.config)
            print(
                f"{config.source}: OK ({len(config.providers)} providers, "
                f"{len(config.models)} model aliases, {len(config.tenants)} tenants)"
            )
            passed = [provider.name for provider in config.providers if provider.responses]
            if passed:
                print(f"Responses API passed through to: {', '.join(passed)} (translated to chat for the others)")
            return 0
        if args.command == "serve":
            from runtime.http.server import CannotStart, run

            config = load_config_or_exit(args.config)
            try:
                trio.run(
                    lambda: run(
                        config,
                        host=args.host,
                        port=args.port,
                        workers=args.workers,
                        listen_fd=args.listen_fd,
                        config_path=args.config,
                    )
                )
            except CannotStart as error:
                print(f"tollgate: {error}", file=sys.stderr)
                return 2
            except (LedgerError, BaseExceptionGroup) as error:
                ledger_error = _ledger_error(error)
                if ledger_error is None:
                    raise
                print(f"tollgate serve: {ledger_error}", file=sys.stderr)
                return 2
            return 0
        if args.command == "replay":
            return _replay(args)
        if args.command == "ledger":
            return _ledger_copy(args)
        if args.command == "pricing":
            return _pricing(args)
        {
            "tenants": _tenants,
            "spend": _spend,
            "events": _events,
            "providers": _providers,
            "reprice": _reprice,
        }[args.command](args)
        return 0
    except CommandFailed as error:
        print(f"tollgate {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
