"""Re-pricing in the shell: scan the ledger in pages, price with `policies.repricing`, commit restatements.

    tollgate reprice ...            → POST /admin/reprice (the gateway's Journal stays the only writer)
    tollgate reprice --offline ...  → a dry run on the ledger file itself (no gateway needed)

A run reads the log up to the position it started at, twice: once for the `CostRestated` events
already there (each request's current cost and restatement count, so the next restatement's
version is known without loading the request), then every `Admitted` and terminal event, in pages
of `PAGE` (SQLite: through its own read-only connection, never blocking the writer). A commit
appends each page's restatements through the Journal as it goes (bare `CostRestated` events on the
requests; at most one run at a time, under `Gateway.repricing`), then one `Repricing` record with
the totals. Requests settled after the run started are not re-priced; they were priced live. An
interrupted commit leaves whole pages restated and no record: re-running it finishes the rest
(requests already at the new cost are skipped).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Protocol

import attrs
import cattrs
import trio

from events.money import usd
from events.pricelist import PriceList
from events.repricing import Repricing
from events.request import Request, restate
from events.store import MEMORY, LedgerStore, Raw, topic_of
from events.usage import UNKNOWN_USAGE, Usage
from policies.cost import PRICE_EVENT_FIELDS, Price, PriceBook, PriceEntry, price_from_fields
from policies.errors import InvalidRequest
from policies.repricing import Filters, PriceSet, Repricer, Restatement, flat_prices, ledger_history, prices_as_of
from runtime.config import converter, format_problems
from runtime.ledger.journal import Journal


class Ledger(Protocol):
    """What a re-pricing run uses of the running gateway: the store, its Journal, the one-run lock."""

    @property
    def store(self) -> LedgerStore: ...

    @property
    def journal(self) -> Journal: ...

    @property
    def repricing(self) -> trio.Lock: ...


PAGE = 20_000
ADMITTED = topic_of(Request.Admitted)
SETTLED = tuple(topic_of(kind) for kind in (Request.Completed, Request.Failed, Request.Cancelled))
HIT = topic_of(Request.ServedFromCache)
RESTATED = topic_of(Request.CostRestated)
SAVING_RESTATED = topic_of(Request.SavingRestated)
PRICES = (topic_of(PriceList.PriceSet), topic_of(PriceList.PriceRemoved))
REQUEST_FIELDS: dict[str, type] = {
    "request_id": str,
    "tenant": str,
    "model": str,
    "received_at": datetime,
    "operation": str,
    "provider": str,
    "served_model": str,
    "prompt_tokens": int,
    "completion_tokens": int,
    "cached_tokens": int,
    "cache_write_tokens": int,
    "cache_write_1h_tokens": int,
    "cost_usd": Decimal,
    "saved_usd": Decimal,
    "usage_source": str,
}
PRICE_FIELDS: dict[str, type] = {
    "key": str,
    "effective_from": datetime,
    **{name: int if name == "long_context_above_prompt_tokens" else Decimal for name in PRICE_EVENT_FIELDS},
}


@attrs.frozen
class Report:
    fingerprint: str
    price_source: str
    filters: dict[str, Any]
    through_position: int
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    newly_priced_requests: list[str]
    committed: bool = False
    repricing_id: str | None = None

    def document(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "totals": self.totals,
            "newly_priced_requests": self.newly_priced_requests,
            "fingerprint": self.fingerprint,
            "price_source": self.price_source,
            "filters": self.filters,
            "through_position": self.through_position,
            "committed": self.committed,
            "repricing_id": self.repricing_id,
        }


def current_costs(store: LedgerStore, until: int) -> dict[str, tuple[Decimal | None, int]]:
    """Each restated request's latest cost (a cache hit's: its latest saving) and how many
    restatements it has, up to `until`."""
    current: dict[str, tuple[Decimal | None, int]] = {}
    fields = {"new_cost_usd": Decimal, "new_saved_usd": Decimal}
    for page in store.scan([RESTATED, SAVING_RESTATED], fields, 0, until, PAGE):
        for raw in page:
            amount = raw.state["new_saved_usd" if raw.topic == SAVING_RESTATED else "new_cost_usd"]
            current[raw.originator_id] = (amount, current.get(raw.originator_id, (None, 0))[1] + 1)
    return current


def usage_of(state: dict[str, Any]) -> Usage:
    """The billed usage a terminal event's `state` records (cache-write counts 0 before they existed)."""
    return Usage(
        state["prompt_tokens"],
        state["completion_tokens"],
        state["cached_tokens"],
        cache_write_tokens=state.get("cache_write_tokens") or 0,
        cache_write_1h_tokens=state.get("cache_write_1h_tokens") or 0,
    )


def ledger_price_book(store: LedgerStore, until: int | None = None) -> PriceBook:
    """The ledger's price list, folded from its events (for offline runs)."""
    book = PriceBook()
    for page in store.scan(PRICES, PRICE_FIELDS, 0, until, PAGE):
        for raw in page:
            state = raw.state
            price = None
            if raw.topic == PRICES[0]:
                price = price_from_fields(state)
            book.add(PriceEntry(state["key"], state["effective_from"], price))
    return book


class Scan:
    """One run over the log, a page per `step()` (each returns that page's restatements)."""

    def __init__(self, store: LedgerStore, prices: PriceSet, filters: Filters, until: int) -> None:
        self.store = store
        self.until = until
        self.position = 0
        self.prices = prices
        self.filters = filters
        self.repricer: Repricer | None = None
        self._pages: Iterator[list[Raw]] | None = None

    def step(self) -> list[Restatement] | None:
        """The next page's restatements, or None when the scan is done."""
        if self.repricer is None:
            self.repricer = Repricer(self.prices, self.filters, current_costs(self.store, self.until))
            self._pages = self.store.scan([ADMITTED, *SETTLED, HIT], REQUEST_FIELDS, 0, self.until, PAGE)
        assert self._pages is not None
        page = next(self._pages, None)
        if page is None:
            self.position = self.until
            return None
        repricer = self.repricer
        found = []
        for raw in page:
            state = raw.state
            if raw.topic == ADMITTED:
                repricer.admitted(
                    raw.originator_id,
                    state["request_id"],
                    state["tenant"],
                    state["model"],
                    state["received_at"],
                    state["operation"] or "chat",
                )
                continue
            if state["usage_source"] == UNKNOWN_USAGE:
                continue  # no usage to price: re-pricing never turns an unknown into a $0
            price = repricer.served_from_cache if raw.topic == HIT else repricer.settled
            recorded = state["saved_usd"] if raw.topic == HIT else state["cost_usd"]
            restatement = price(
                raw.originator_id, raw.version, state["provider"], state["served_model"], usage_of(state), recorded
            )
            if restatement is not None:
                found.append(restatement)
        self.position = page[-1].position
        return found

    def report(self) -> Report:
        assert self.repricer is not None
        return Report(
            self.prices.fingerprint,
            self.prices.source,
            self.filters.record(),
            self.until,
            self.repricer.rows(),
            self.repricer.totals(),
            list(self.repricer.newly_priced_requests),
        )


def restatement_events(found: list[Restatement], prices: PriceSet, repricing_id: uuid.UUID) -> list[Any]:
    """A `CostRestated` per restatement; a cache hit's is a `SavingRestated` (its cost stays $0)."""
    now = datetime.now(UTC)
    events: list[Any] = []
    for r in found:
        fields = attrs.asdict(r, recurse=False, filter=lambda field, _: field.name not in ("aggregate_id", "version"))
        if fields.pop("saving"):
            fields["old_saved_usd"], fields["new_saved_usd"] = fields.pop("old_cost_usd"), fields.pop("new_cost_usd")
            kind: type[Any] = Request.SavingRestated
        else:
            kind = Request.CostRestated
        events.append(
            restate(
                r.aggregate_id,
                r.version,
                now,
                kind,
                **fields,
                fingerprint=prices.fingerprint,
                repricing_id=str(repricing_id),
            )
        )
    return events


def dry_run(
    store: LedgerStore, prices: PriceSet, filters: Filters, progress: Callable[[int, int], None] | None = None
) -> Report:
    """Price the whole log (up to now) without writing anything."""
    scan = Scan(store, prices, filters, store.position())
    while scan.step() is not None:
        if progress is not None:
            progress(scan.position, scan.until)
    if progress is not None:
        progress(scan.until, scan.until)
    return scan.report()


async def run_in_gateway(gateway: Ledger, prices: PriceSet, filters: Filters, *, commit: bool, by: str) -> Report:
    """A dry run or a commit against the running gateway's ledger (commits through its Journal)."""
    report = None
    async with aclosing(steps_in_gateway(gateway, prices, filters, commit=commit, by=by)) as steps:
        async for step in steps:
            if isinstance(step, Report):
                report = step
    assert report is not None, "a re-pricing run always ends with its report"
    return report


async def steps_in_gateway(
    gateway: Ledger, prices: PriceSet, filters: Filters, *, commit: bool, by: str
) -> AsyncGenerator[tuple[int, int] | Report, None]:
    """The run, as progress after each page — (position, end) — then its `Report`."""
    store = gateway.store
    # The in-memory store is read through the mapper, so it takes the writer's door; SQLite has its own reader.
    limiter = gateway.journal.limiter if store.path == MEMORY else trio.CapacityLimiter(1)
    repricing_id = uuid.uuid4()
    async with gateway.repricing:
        scan = Scan(store, prices, filters, gateway.journal.position)
        while (found := await trio.to_thread.run_sync(scan.step, limiter=limiter)) is not None:
            if commit and found:
                await gateway.journal.commit(restatement_events(found, prices, repricing_id))
            yield scan.position, scan.until
        report = scan.report()
        if not commit or not (report.totals["restated"] or report.totals["savings_restated"]):
            yield report
            return
        totals = report.totals
        record = Repricing.record(
            repricing_id,
            by=by,
            fingerprint=prices.fingerprint,
            price_source=prices.source,
            filters=report.filters,
            through_position=report.through_position,
            requests=totals["requests"],
            restated=totals["restated"],
            newly_priced=totals["newly_priced"],
            old_usd=usd(totals["old_usd"]),
            new_usd=usd(totals["new_usd"]),
            delta_usd=usd(totals["delta_usd"]),
        )
        await gateway.journal.commit(record.collect_events())
    yield attrs.evolve(report, committed=True, repricing_id=str(repricing_id))


def parse_prices(data: Any, where: str = "prices") -> dict[str, Price]:
    """A `[pricing]` table ("PROVIDER/MODEL" → prices as decimal strings); every problem by path."""
    if not isinstance(data, dict) or not data:
        raise InvalidRequest(
            f"'{where}' must be a non-empty table of \"PROVIDER/MODEL\" = {{input_per_mtok, output_per_mtok}}.",
            param=where,
            code="invalid_value",
        )
    problems = [
        f'{where}."{key}": expected a key of the form "PROVIDER/MODEL"'
        for key in data
        if not isinstance(key, str) or key.count("/") < 1 or not all(key.partition("/")[::2])
    ]
    prices: dict[str, Price] = {}
    for key, value in data.items():
        if not isinstance(value, dict):  # cattrs would raise AttributeError on a list or a string
            problems.append(f'{where}."{key}": expected a table of input_per_mtok, output_per_mtok')
            continue
        try:
            prices[key] = converter.structure(value, Price)
        except (cattrs.BaseValidationError, ValueError, TypeError) as error:
            found = format_problems(error) if isinstance(error, cattrs.BaseValidationError) else [f"<top>: {error}"]
            for problem in found:
                path, _, message = problem.partition(": ")
                path = path.removeprefix("$").removeprefix(".")
                suffix = "" if path in ("<top>", "") else f".{path}"
                problems.append(f'{where}."{key}"{suffix}: {message}')
    if problems:
        param = problems[0].partition(": ")[0]
        raise InvalidRequest("; ".join(problems) + ".", param=param, code="invalid_value")
    return prices


def parse_moment(value: Any, param: str, *, end: bool = False) -> datetime | None:
    """An ISO date (midnight UTC; with `end`, the midnight after it, so the day is included) or time."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            if len(value) == 10:
                day = date.fromisoformat(value)
                return datetime.combine(day + timedelta(days=1) if end else day, time(), tzinfo=UTC)
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        except ValueError:
            pass
    raise InvalidRequest(
        f"'{param}' must be a date (2026-11-01) or an ISO 8601 time (2026-11-01T12:00:00Z).",
        param=param,
        code="invalid_value",
    )


def parse_request(body: dict[str, Any], book: PriceBook) -> tuple[PriceSet, Filters]:
    """The price set and filters of a `POST /admin/reprice` body (also used by the offline CLI)."""
    sources = [name for name in ("prices", "as_of", "ledger") if body.get(name) not in (None, False)]
    if len(sources) != 1:
        raise InvalidRequest(
            "Give exactly one price set: 'prices' (a [pricing] table), 'as_of' (the ledger's prices in force "
            "at a time) or 'ledger': true (the ledger's price history, each request at its own time).",
            param="prices",
            code="invalid_value",
        )
    if sources == ["prices"]:
        prices = flat_prices(parse_prices(body["prices"]))
    elif sources == ["as_of"]:
        at = parse_moment(body["as_of"], "as_of")
        assert at is not None
        prices = prices_as_of(book, at)
    else:
        if body["ledger"] is not True:
            raise InvalidRequest("'ledger' must be true.", param="ledger", code="invalid_value")
        prices = ledger_history(book)
    for name in ("tenant", "model", "provider"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InvalidRequest(f"'{name}' must be a string.", param=name, code="invalid_type")
    filters = Filters(
        parse_moment(body.get("from"), "from"),
        parse_moment(body.get("to"), "to", end=True),
        body.get("tenant"),
        body.get("model"),
        body.get("provider"),
    )
    return prices, filters
