"""Read models of the ledger: SQLite tables written with sqlite-utils, folded from committed events.

    spend          tenant × UTC day × model × provider × operation (the API: chat, messages, responses,
                   embeddings, from `Admitted.operation`): requests, tokens, cost (integer nano-dollars), unpriced;
                   cost_nanousd is the cost as restated (as recorded + every `CostRestated` delta),
                   restated_nanousd the sum of those deltas, newly_priced the requests a restatement
                   priced (they are no longer counted in unpriced); as recorded = cost − restated;
                   interrupted_unknown_usage the requests crash recovery settled as `interrupted`
                   (their usage is unknown: their recorded 0 tokens and $0 are not true);
                   cache_hits the requests the response cache answered (billed $0, their tokens the
                   original answer's), saved_nanousd what they would have cost at the price in force
                   (as restated by `SavingRestated`), saved_unpriced the hits whose saving is unknown
    outcomes       provider × outcome: count (terminal outcomes, failed attempts, rejections)
    prices         every price entry (the price book)
    tenants        tenant id → name, enabled, policy, source; tenant_keys: key hash → tenant, valid_until
    open_requests  admitted but not yet settled (their reservations; settled or recovered later)
    leases         every budget lease (`BudgetSlices`): tenant, period, instance, amount, expires_at,
                   closed (0/1), used_usd once closed — a survivor finds a gone instance's open ones here
    instance_spend tenant × UTC day × instance: settled cost (integer nano-dollars) of the requests
                   each instance admitted — an `interrupted` one of unknown usage counts its reservation
                   (what an expired lease counts as used, `LeaseExpired`: unknown is not $0)
    tracking       the ledger position the tables reflect, written in the same transaction

`fold` is pure: records in, row changes out. `Projections.apply` writes one batch atomically.
Rebuilding from an empty database must give the same tables (`tollgate replay --verify`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import attrs
import sqlite_utils

from events.lease import BudgetSlices
from events.money import usd, usd_str
from events.pricelist import V2_FIELDS, PriceList
from events.request import Request
from events.store import Recorded
from events.tenant import Tenant

T = TypeVar("T")
TRACKING = "projections"
SCHEMA_VERSION = 10  # bump when a table changes: projections are rebuilt from the ledger
LOCK_TIMEOUT_S = 30.0  # several processes share one projection database: wait for another's write
SPEND_KEY = ("tenant", "day", "model", "provider", "operation")
INTERRUPTED = "interrupted"  # the outcome crash recovery records (runtime.gateway)
TABLES = (
    "spend",
    "outcomes",
    "prices",
    "tenants",
    "tenant_keys",
    "open_requests",
    "leases",
    "instance_spend",
    "tracking",
)


@attrs.define
class Changes:
    """Row changes from one batch of records, keyed so that applying them is idempotent per batch."""

    spend: dict[tuple[str, str, str, str, str], dict[str, Any]] = attrs.field(factory=dict)
    outcomes: dict[tuple[str, str], int] = attrs.field(factory=dict)
    prices: list[dict[str, Any]] = attrs.field(factory=list)
    tenants: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    keys: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    opened: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    closed: set[str] = attrs.field(factory=set)
    leased: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    lease_closed: dict[str, Decimal] = attrs.field(factory=dict)
    instance_spend: dict[tuple[str, str, str], Decimal] = attrs.field(factory=dict)
    position: int = 0


NANO = Decimal("1e9")


def nano(amount: Decimal) -> int:
    """USD (quantized to 1e-9) as an integer count of nano-dollars, for exact sums in SQL."""
    return int(usd(amount) * NANO)


def from_nano(count: int) -> Decimal:
    return usd(Decimal(count) / NANO)


def _insert(db: sqlite_utils.Database, table: str, rows: list[dict[str, Any]], *, replace: bool) -> None:
    if not rows:
        return
    columns = list(rows[0])
    verb = "insert or replace" if replace else "insert"
    db.conn.executemany(
        f"{verb} into {table} ({', '.join(columns)}) values ({', '.join('?' * len(columns))})",
        [tuple(row[c] for c in columns) for row in rows],
    )


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


def _spend_row(changes: Changes, key: tuple[str, str, str, str, str]) -> dict[str, Any]:
    return changes.spend.setdefault(
        key,
        {
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_tokens": 0,
            "cost": Decimal(0),
            "unpriced": 0,
            "restated": Decimal(0),
            "newly_priced": 0,
            "interrupted_unknown_usage": 0,
            "cache_hits": 0,
            "saved": Decimal(0),
            "saved_unpriced": 0,
        },
    )


def _count(changes: Changes, provider: str, outcome: str) -> None:
    key = (provider, outcome)
    changes.outcomes[key] = changes.outcomes.get(key, 0) + 1


@attrs.define
class FoldState:
    """The rows a fold must read: kept in memory, loaded from the tables, updated by `fold`."""

    open_requests: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    tenants: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    keys: dict[str, dict[str, Any]] = attrs.field(factory=dict)


def fold(records: Sequence[Recorded], state: FoldState) -> Changes:
    """Fold records into row changes, updating `state` in place (so a request admitted and
    settled in the same batch folds correctly)."""
    changes = Changes()
    open_requests, tenants, keys = state.open_requests, state.tenants, state.keys
    for record in records:
        event = record.event
        changes.position = record.position
        request_id = str(event.originator_id)
        if isinstance(event, Request.Admitted):
            row: dict[str, Any] = {
                "id": request_id,
                "request_id": event.request_id,
                "tenant": event.tenant,
                "model": event.model,
                "day": _day(event.received_at),
                "received_at": event.received_at.isoformat(),
                "reserved_usd": usd_str(event.reserved_usd),
                "instance": event.instance,
                "operation": event.operation,
            }
            open_requests[request_id] = row
            changes.opened[request_id] = row
            changes.closed.discard(request_id)
        elif isinstance(event, Request.Settled):
            admitted = open_requests.pop(request_id, None)
            changes.opened.pop(request_id, None)
            changes.closed.add(request_id)
            if admitted is None:
                continue  # settled without admission cannot happen; ignore rather than invent a tenant
            key = (admitted["tenant"], admitted["day"], admitted["model"], event.provider or "-", admitted["operation"])
            totals = _spend_row(changes, key)
            totals["requests"] += 1
            totals["prompt_tokens"] += event.prompt_tokens
            totals["completion_tokens"] += event.completion_tokens
            totals["cached_tokens"] += event.cached_tokens
            # usage unknown (before v3 of the events: recorded as $0, "estimated"), unless the provider had
            # reported it before the stop (`Request.UsageReported`): then it was recovered with that usage
            unknown = event.outcome == INTERRUPTED and event.usage_source in ("unknown", "estimated")
            totals["interrupted_unknown_usage"] += unknown
            if event.cost_usd is not None:
                totals["cost"] += event.cost_usd
            elif not unknown:
                totals["unpriced"] += 1
            if isinstance(event, Request.ServedFromCache):
                totals["cache_hits"] += 1
                if event.saved_usd is None:
                    totals["saved_unpriced"] += 1
                else:
                    totals["saved"] += event.saved_usd
            _count(changes, event.provider or "-", event.outcome)
            # what an expired lease counts as used: the cost, or, usage unknown, the reservation (its worst
            # case: it may have been spent upstream; unknown is not $0)
            used = Decimal(admitted["reserved_usd"]) if unknown else event.cost_usd
            if admitted.get("instance") is not None and used:
                spent_key = (admitted["tenant"], admitted["day"], admitted["instance"])
                changes.instance_spend[spent_key] = changes.instance_spend.get(spent_key, Decimal(0)) + used
        elif isinstance(event, BudgetSlices.BudgetLeased):
            changes.leased[event.lease] = {
                "lease": event.lease,
                "tenant": event.tenant,
                "period": event.period.isoformat(),
                "instance": event.instance,
                "amount_usd": usd_str(event.amount_usd),
                "expires_at": event.expires_at.isoformat(),
                "position": record.position,
                "closed": 0,
                "used_usd": None,
            }
        elif isinstance(event, BudgetSlices.LeaseReturned | BudgetSlices.LeaseExpired):
            changes.lease_closed[event.lease] = event.used_usd
        elif isinstance(event, Request.SavingRestated):
            totals = _spend_row(
                changes, (event.tenant, _day(event.received_at), event.model, event.provider, event.operation)
            )
            totals["saved"] += event.new_saved_usd - (event.old_saved_usd or 0)
            if event.old_saved_usd is None:
                totals["saved_unpriced"] -= 1
        elif isinstance(event, Request.CostRestated):
            # The row of the original request; its fields are repeated in the event for this.
            totals = _spend_row(
                changes, (event.tenant, _day(event.received_at), event.model, event.provider, event.operation)
            )
            delta = event.new_cost_usd - (event.old_cost_usd or 0)
            totals["cost"] += delta
            totals["restated"] += delta
            if event.old_cost_usd is None:
                totals["unpriced"] -= 1
                totals["newly_priced"] += 1
        elif isinstance(event, Request.AttemptFailed):
            _count(changes, event.provider, f"attempt_failed:{event.error_kind}")
        elif isinstance(event, Request.Rejected):
            _count(changes, "-", f"rejected:{event.reason}")
        elif isinstance(event, PriceList.PriceSet | PriceList.PriceRemoved):
            price_row: dict[str, Any] = {
                "key": event.key,
                "effective_from": event.effective_from.isoformat(),
                "position": record.position,
                "input_per_mtok": None,
                "output_per_mtok": None,
                "cached_input_per_mtok": None,
                "rates": None,
                "catalogue": None,
                "removed": 1,
                "source": event.source,
                "recorded_at": event.timestamp.isoformat(),
            }
            if isinstance(event, PriceList.PriceSet):
                cached = event.cached_input_per_mtok
                price_row["input_per_mtok"] = usd_str(event.input_per_mtok)
                price_row["output_per_mtok"] = usd_str(event.output_per_mtok)
                price_row["cached_input_per_mtok"] = None if cached is None else usd_str(cached)
                price_row["rates"] = _more_rates(event)
                price_row["catalogue"] = event.catalogue
                price_row["removed"] = 0
            changes.prices.append(price_row)
        elif isinstance(event, Tenant.Registered):
            tenant = {
                "id": request_id,
                "name": event.name,
                "enabled": 1,
                "policy": json.dumps(event.policy, sort_keys=True),
                "source": event.source,
                "created_at": event.timestamp.isoformat(),
                "updated_at": event.timestamp.isoformat(),
            }
            tenants[request_id] = changes.tenants[request_id] = tenant
            key_row = {"key_sha256": event.key_sha256, "tenant_id": request_id, "valid_until": None}
            keys[event.key_sha256] = changes.keys[event.key_sha256] = key_row
        elif isinstance(event, Tenant.Event):
            tenant = dict(tenants[request_id])
            tenant["updated_at"] = event.timestamp.isoformat()
            if isinstance(event, Tenant.Updated):
                tenant["policy"] = json.dumps({**json.loads(str(tenant["policy"])), **event.changes}, sort_keys=True)
            elif isinstance(event, Tenant.Disabled):
                tenant["enabled"] = 0
            elif isinstance(event, Tenant.Enabled):
                tenant["enabled"] = 1
            elif isinstance(event, Tenant.KeyIssued):
                # Every older key stays valid until the grace period ends (or ends now), never longer.
                until = (event.previous_valid_until or event.timestamp).isoformat()
                for old in [row for row in keys.values() if row["tenant_id"] == request_id]:
                    if old["valid_until"] is None or old["valid_until"] > until:
                        keys[old["key_sha256"]] = changes.keys[old["key_sha256"]] = {**old, "valid_until": until}
                key_row = {"key_sha256": event.key_sha256, "tenant_id": request_id, "valid_until": None}
                keys[event.key_sha256] = changes.keys[event.key_sha256] = key_row
            tenants[request_id] = changes.tenants[request_id] = tenant
    return changes


def _read_between(read: Callable[[int, int], Sequence[Recorded]], after: int, before: int) -> list[Recorded]:
    found: list[Recorded] = []
    while after < before - 1:
        page = [r for r in read(after, min(5000, before - 1 - after)) if r.position < before]
        if not page:
            break
        found.extend(page)
        after = page[-1].position
    return found


class Projections:
    """The projection database: `apply(records)` folds and writes one batch in one transaction."""

    def __init__(self, path: str) -> None:
        self.path = path
        # One connection, used from whichever worker thread holds the runtime's limiter of one.
        connection = sqlite3.connect(path, check_same_thread=False, timeout=LOCK_TIMEOUT_S)
        self.db = sqlite_utils.Database(connection)
        if path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._drop_if_outdated()
        self._create()
        with self.db.conn:
            self.db.conn.execute(
                "insert or replace into tracking (name, position) values (?, ?)", ("schema", SCHEMA_VERSION)
            )
        self.state = FoldState()
        self._folded = -1  # the position `state` reflects (-1: load it from the tables before folding)
        self._load_state()

    def _load_state(self) -> None:
        self.state = FoldState(
            open_requests={row["id"]: row for row in self.db.table("open_requests").rows},
            tenants={row["id"]: row for row in self.db.table("tenants").rows},
            keys={row["key_sha256"]: row for row in self.db.table("tenant_keys").rows},
        )
        self._folded = self.position

    def _drop_if_outdated(self) -> None:
        """Read models are disposable: tables of another layout are dropped and rebuilt from the log."""
        existing = set(self.db.table_names()) & set(TABLES)
        if not existing:
            return
        version = None
        if "tracking" in existing:
            row = self.db.execute("select position from tracking where name = 'schema'").fetchone()
            version = row[0] if row else None
        if version != SCHEMA_VERSION:
            with self.db.conn:
                for table in TABLES:
                    self.db.conn.execute(f"drop table if exists {table}")

    def _create(self) -> None:
        db = self.db
        db.table("spend").create(
            {
                "tenant": str,
                "day": str,
                "model": str,
                "provider": str,
                "operation": str,
                "requests": int,
                "prompt_tokens": int,
                "completion_tokens": int,
                "cached_tokens": int,
                "cost_nanousd": int,
                "unpriced": int,
                "restated_nanousd": int,
                "newly_priced": int,
                "interrupted_unknown_usage": int,
                "cache_hits": int,
                "saved_nanousd": int,
                "saved_unpriced": int,
            },
            pk=SPEND_KEY,
            if_not_exists=True,
        )
        db.table("outcomes").create(
            {"provider": str, "outcome": str, "count": int}, pk=("provider", "outcome"), if_not_exists=True
        )
        db.table("prices").create(
            {
                "key": str,
                "effective_from": str,
                "position": int,
                "input_per_mtok": str,
                "output_per_mtok": str,
                "cached_input_per_mtok": str,
                "rates": str,
                "catalogue": str,
                "removed": int,
                "source": str,
                "recorded_at": str,
            },
            pk=("key", "effective_from", "position"),
            if_not_exists=True,
        )
        db.table("tenants").create(
            {
                "id": str,
                "name": str,
                "enabled": int,
                "policy": str,
                "source": str,
                "created_at": str,
                "updated_at": str,
            },
            pk="id",
            if_not_exists=True,
        )
        db.table("tenant_keys").create(
            {"key_sha256": str, "tenant_id": str, "valid_until": str}, pk="key_sha256", if_not_exists=True
        )
        db.table("open_requests").create(
            {
                "id": str,
                "request_id": str,
                "tenant": str,
                "model": str,
                "day": str,
                "received_at": str,
                "reserved_usd": str,
                "instance": str,
                "operation": str,
            },
            pk="id",
            if_not_exists=True,
        )
        db.table("leases").create(
            {
                "lease": str,
                "tenant": str,
                "period": str,
                "instance": str,
                "amount_usd": str,
                "expires_at": str,
                "position": int,
                "closed": int,
                "used_usd": str,
            },
            pk="lease",
            if_not_exists=True,
        )
        db.table("instance_spend").create(
            {"tenant": str, "day": str, "instance": str, "cost_nanousd": int},
            pk=("tenant", "day", "instance"),
            if_not_exists=True,
        )
        db.table("tracking").create({"name": str, "position": int}, pk="name", if_not_exists=True)

    @property
    def position(self) -> int:
        # plain SQL: sqlite-utils' `rows_where` asks the schema whether the table exists on every call
        row = self.db.conn.execute("select position from tracking where name = ?", (TRACKING,)).fetchone()
        return int(row[0]) if row else 0

    def read_at(self, read: Callable[[Projections], T]) -> tuple[T, int]:
        """`read`, and the position the tables it read reflect, in one read transaction (another
        process projecting into the same database cannot commit between the two)."""
        self.db.conn.execute("begin")
        try:
            return read(self), self.position
        finally:
            self.db.conn.execute("commit")

    def apply(self, records: Sequence[Recorded], read: Callable[[int, int], Sequence[Recorded]] | None = None) -> int:
        """Fold and write `records` (those at or before the tracked position are skipped).

        Several processes may project into one database (each follows the whole log): the tracked
        position is read inside the write transaction (`begin immediate`), so a batch another
        process already wrote is skipped and a position is never folded twice. When another process
        moved the position, the fold state is reloaded from the tables first. `read(after, limit)`
        fetches the events between the tracked position and the first of `records` (written by
        others and not projected yet), so nothing is skipped either."""
        conn = self.db.conn
        try:
            with conn:
                conn.execute("begin immediate")
                done = self.position
                if done != self._folded:
                    self._load_state()
                fresh = [r for r in records if r.position > done]
                if read is not None and fresh and fresh[0].position > done + 1:
                    fresh = [*_read_between(read, done, fresh[0].position), *fresh]
                if not fresh:
                    return done
                changes = fold(fresh, self.state)
                self._write(changes)
        except BaseException:
            self._folded = -1  # the fold state may hold what was rolled back
            raise
        self._folded = changes.position
        return changes.position

    def _write(self, changes: Changes) -> None:
        """Plain SQL upserts (sqlite-utils' `upsert` re-reads the schema on every call): sums are added
        by SQLite itself, exactly, since money is stored as integer nano-dollars."""
        db = self.db
        if changes.spend:
            db.conn.executemany(
                """insert into spend (tenant, day, model, provider, operation, requests, prompt_tokens,
                       completion_tokens, cached_tokens, cost_nanousd, unpriced, restated_nanousd, newly_priced,
                       interrupted_unknown_usage, cache_hits, saved_nanousd, saved_unpriced)
                   values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   on conflict (tenant, day, model, provider, operation) do update set
                       requests = requests + excluded.requests,
                       prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                       completion_tokens = completion_tokens + excluded.completion_tokens,
                       cached_tokens = cached_tokens + excluded.cached_tokens,
                       cost_nanousd = cost_nanousd + excluded.cost_nanousd,
                       unpriced = unpriced + excluded.unpriced,
                       restated_nanousd = restated_nanousd + excluded.restated_nanousd,
                       newly_priced = newly_priced + excluded.newly_priced,
                       interrupted_unknown_usage = interrupted_unknown_usage + excluded.interrupted_unknown_usage,
                       cache_hits = cache_hits + excluded.cache_hits,
                       saved_nanousd = saved_nanousd + excluded.saved_nanousd,
                       saved_unpriced = saved_unpriced + excluded.saved_unpriced""",
                [
                    (
                        *key,
                        d["requests"],
                        d["prompt_tokens"],
                        d["completion_tokens"],
                        d["cached_tokens"],
                        nano(d["cost"]),
                        d["unpriced"],
                        nano(d["restated"]),
                        d["newly_priced"],
                        d["interrupted_unknown_usage"],
                        d["cache_hits"],
                        nano(d["saved"]),
                        d["saved_unpriced"],
                    )
                    for key, d in changes.spend.items()
                ],
            )
        if changes.outcomes:
            db.conn.executemany(
                """insert into outcomes (provider, outcome, count) values (?, ?, ?)
                   on conflict (provider, outcome) do update set count = count + excluded.count""",
                [(*key, count) for key, count in changes.outcomes.items()],
            )
        _insert(db, "prices", changes.prices, replace=False)
        _insert(db, "tenants", list(changes.tenants.values()), replace=True)
        _insert(db, "tenant_keys", list(changes.keys.values()), replace=True)
        if changes.closed:
            db.conn.executemany("delete from open_requests where id = ?", [(i,) for i in changes.closed])
        _insert(db, "open_requests", list(changes.opened.values()), replace=True)
        _insert(db, "leases", list(changes.leased.values()), replace=True)
        if changes.lease_closed:
            db.conn.executemany(
                "update leases set closed = 1, used_usd = ? where lease = ?",
                [(usd_str(used), lease) for lease, used in changes.lease_closed.items()],
            )
        if changes.instance_spend:
            db.conn.executemany(
                """insert into instance_spend (tenant, day, instance, cost_nanousd) values (?, ?, ?, ?)
                   on conflict (tenant, day, instance) do update set
                       cost_nanousd = cost_nanousd + excluded.cost_nanousd""",
                [(*key, nano(cost)) for key, cost in changes.instance_spend.items()],
            )
        db.conn.execute("insert or replace into tracking (name, position) values (?, ?)", (TRACKING, changes.position))

    def rows(self, table: str) -> list[dict[str, Any]]:
        return sorted((dict(row) for row in self.db.table(table).rows), key=lambda row: json.dumps(row, sort_keys=True))

    def close(self) -> None:
        self.db.close()


def diff(live: Projections, rebuilt: Projections, tables: Iterable[str] = TABLES) -> list[str]:
    """Describe every difference between two projection databases (empty when identical)."""
    problems = []
    for table in tables:
        left, right = live.rows(table), rebuilt.rows(table)
        if left != right:
            missing = [row for row in right if row not in left]
            extra = [row for row in left if row not in right]
            problems.append(
                f"{table}: {len(extra)} rows only in the live projection, {len(missing)} only in the rebuild"
            )
            problems.extend(f"  live only: {row}" for row in extra[:5])
            problems.extend(f"  rebuild only: {row}" for row in missing[:5])
    return problems


SPEND_GROUPS = ("tenant", "model", "provider", "day", "operation")
SPEND_BASES = ("restated", "as_recorded")


def spend_report(
    projections: Projections,
    *,
    tenant: str | None = None,
    day_from: str | None = None,
    day_to: str | None = None,
    group_by: Sequence[str] = ("tenant", "model", "provider"),
    basis: str = "restated",
) -> list[dict[str, Any]]:
    """Spend rows summed over `group_by` (a subset of SPEND_GROUPS; `operation` is the API the
    requests were made with, restatements counted under their request's), days inclusive, money exact.

    `basis` "restated" (the default, what budgets use) folds re-pricings in; "as_recorded" gives the
    costs as first recorded (and counts newly priced requests as unpriced again).
    `interrupted_unknown_usage` counts requests whose usage is unknown (their $0 is not true);
    `cache_hits` the requests the response cache answered, `saved_usd` what they would have cost
    (restated with prices; `saved_unpriced` hits whose saving is unknown)."""
    as_recorded = basis == "as_recorded"
    where, args = [], []
    if tenant is not None:
        where.append("tenant = ?")
        args.append(tenant)
    if day_from is not None:
        where.append("day >= ?")
        args.append(day_from)
    if day_to is not None:
        where.append("day <= ?")
        args.append(day_to)
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in projections.db.table("spend").rows_where(
        " and ".join(where) or None, args, order_by="day, tenant, model, provider, operation"
    ):
        key = tuple(row[name] for name in group_by)
        total = groups.setdefault(
            key,
            {
                **dict(zip(group_by, key, strict=True)),
                "requests": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cached_tokens": 0,
                "cost": Decimal(0),
                "unpriced": 0,
                "interrupted_unknown_usage": 0,
                "cache_hits": 0,
                "saved_unpriced": 0,
                "saved": Decimal(0),
            },
        )
        for field in (
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "unpriced",
            "interrupted_unknown_usage",
            "cache_hits",
            "saved_unpriced",
        ):
            total[field] += row[field]
        total["saved"] += from_nano(row["saved_nanousd"])
        if as_recorded:
            total["unpriced"] += row["newly_priced"]
        total["cost"] += from_nano(row["cost_nanousd"] - (row["restated_nanousd"] if as_recorded else 0))
    rows = []
    for total in groups.values():
        cost, saved = total.pop("cost"), total.pop("saved")
        rows.append({**total, "cost_usd": usd_str(cost), "saved_usd": usd_str(saved)})
    return rows


def open_leases(projections: Projections) -> list[dict[str, Any]]:
    """Budget leases not returned nor expired, oldest first."""
    return [dict(row) for row in projections.db.table("leases").rows_where("closed = 0", order_by="position")]


def instance_used(
    projections: Projections, tenant: str, instance: str, period: str, day_from: str, day_to: str
) -> Decimal:
    """What `instance` settled for `tenant` on the days given (inclusive: the budget period starting
    at `period`, an isoformat), less what the leases it closed in that period counted as used: what
    its open leases there hold spent."""
    settled = projections.db.execute(
        "select coalesce(sum(cost_nanousd), 0) from instance_spend"
        " where tenant = ? and instance = ? and day >= ? and day <= ?",
        (tenant, instance, day_from, day_to),
    ).fetchone()[0]
    closed = [
        Decimal(row["used_usd"])
        for row in projections.db.table("leases").rows_where(
            "tenant = ? and instance = ? and closed = 1 and period = ?", [tenant, instance, period]
        )
    ]
    return max(from_nano(int(settled)) - sum(closed, Decimal(0)), Decimal(0))


def outcome_counts(projections: Projections) -> list[dict[str, Any]]:
    """The `outcomes` table: provider × outcome → count (terminal outcomes, failed attempts, rejections)."""
    return [
        {"provider": row["provider"], "outcome": row["outcome"], "count": row["count"]}
        for row in projections.db.table("outcomes").rows_where(order_by="provider, outcome")
    ]


def tenant_keys(projections: Projections, tenant_id: str) -> list[dict[str, Any]]:
    """A tenant's key hashes (never keys) and until when each is valid (None: the current key)."""
    return [
        {"key_sha256": row["key_sha256"], "valid_until": row["valid_until"]}
        for row in projections.db.table("tenant_keys").rows_where(
            "tenant_id = ?", [tenant_id], order_by="valid_until is null, valid_until"
        )
    ]


def _more_rates(event: PriceList.PriceSet) -> str | None:
    """The price's rates beyond the three with columns, as JSON of decimal strings (None: none set)."""
    rates: dict[str, Any] = {}
    for name in V2_FIELDS:
        value = getattr(event, name)
        if value is not None and name != "catalogue":
            rates[name] = usd_str(value) if isinstance(value, Decimal) else value
    return json.dumps(rates, sort_keys=True) if rates else None
