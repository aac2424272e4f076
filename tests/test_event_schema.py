"""Events are a schema: every event class round-trips through the real SQLite store."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import tempfile
import types
import typing
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.utils import resolve_topic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.lease import BudgetSlices
from events.money import usd
from events.pricelist import V2_FIELDS, PriceList
from events.provider import Provider
from events.repricing import Repricing
from events.request import Request
from events.store import Aggregate, LedgerStore, Raw, topic_of
from events.tenant import Tenant
from events.usage import Usage
from policies.cost import LongContext, Price, price_fields, price_from_fields
from policies.repricing import Filters, flat_prices
from policies.usage import RECORD_ITEMS, reported_record
from runtime.ledger.reprice import ADMITTED, REQUEST_FIELDS, RESTATED, SETTLED, Scan, restatement_events
from tests import golden
from tests.golden import class_version, event_classes

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
money = st.decimals(min_value=0, max_value=10**6, places=9, allow_nan=False, allow_infinity=False).map(usd)
moments = st.datetimes(timezones=st.just(UTC), min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1))
counts = st.integers(0, 10**9)
policy = st.dictionaries(
    text,
    st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), text, st.lists(text, max_size=3)),
    max_size=4,
)


def settle_fields() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "provider": st.one_of(st.none(), text),
            "served_model": st.one_of(st.none(), text),
            "prompt_tokens": counts,
            "completion_tokens": counts,
            "cached_tokens": counts,
            "usage_source": st.sampled_from(["provider", "estimated"]),
            "cost_usd": st.one_of(st.none(), money),
            "price_ref": st.one_of(st.none(), text),
            "latency_us": counts,
            "overhead_us": counts,
            "outcome": text,
            "reported_usage": st.one_of(st.none(), claims.map(_recorded)),
        }
    )


def _recorded(claim: Any) -> dict[str, Any] | None:
    return reported_record(Usage(0, 0, 0, "provider_invalid", claim), Usage(0, 0, 0, "provider_invalid"))


# A provider's usage object, as hostile as JSON lets it be (including the store's own typed-value keys).
claims = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(text, st.sampled_from(["_type_", "_data_", "~x"])), inner, max_size=4),
    ),
    max_leaves=80,
)


@st.composite
def aggregates(draw: st.DrawFn) -> list[Any]:
    requests = []
    for kind in (Request.Completed, Request.Failed, Request.Cancelled):
        request = Request.admit(draw(text), draw(text), draw(text), draw(st.booleans()), draw(money), draw(moments))
        status = draw(st.one_of(st.none(), st.integers(100, 599)))
        request.attempt_failed(draw(text), draw(text), draw(text), status, draw(st.booleans()))
        if kind is Request.Completed:  # a stream's usage, reported before its end
            names = (
                "prompt_tokens",
                "completion_tokens",
                "cached_tokens",
                "cache_write_tokens",
                "cache_write_1h_tokens",
            )
            request.report_usage(draw(text), draw(text), draw(text), **{name: draw(counts) for name in names})
        request.settle(kind, **draw(settle_fields()))
        requests.append(request)
    hit = Request.admit(draw(text), draw(text), draw(text), draw(st.booleans()), draw(money), draw(moments))
    hit.settle(Request.ServedFromCache, **draw(settle_fields()), saved_usd=draw(st.one_of(st.none(), money)))
    hit.trigger_event(
        Request.SavingRestated,
        request_id=draw(text),
        tenant=draw(text),
        model=draw(text),
        received_at=draw(moments),
        provider=draw(text),
        served_model=draw(text),
        old_saved_usd=draw(st.one_of(st.none(), money)),
        new_saved_usd=draw(money),
        price_ref=draw(text),
        fingerprint=draw(text),
        repricing_id=draw(text),
    )
    requests.append(hit)
    requests[0].trigger_event(
        Request.CostRestated,
        request_id=draw(text),
        tenant=draw(text),
        model=draw(text),
        received_at=draw(moments),
        provider=draw(text),
        served_model=draw(text),
        old_cost_usd=draw(st.one_of(st.none(), money)),
        new_cost_usd=draw(money),
        price_ref=draw(text),
        fingerprint=draw(text),
        repricing_id=draw(text),
    )
    totals = {name: draw(counts) for name in ("through_position", "requests", "restated", "newly_priced")}
    repricing = Repricing.record(
        uuid.uuid4(),
        by=draw(text),
        fingerprint=draw(text),
        price_source=draw(text),
        filters={"tenant": draw(st.one_of(st.none(), text)), "from": None},
        old_usd=draw(money),
        new_usd=draw(money),
        delta_usd=draw(money),
        **totals,
    )
    rejected = Request.reject(
        draw(text),
        draw(text),
        draw(st.one_of(st.none(), text)),
        draw(st.booleans()),
        draw(text),
        draw(st.integers(400, 599)),
        draw(moments),
    )
    tenant = Tenant.register(draw(text), draw(text), draw(policy), draw(text))
    tenant.update(draw(policy.filter(bool)))
    tenant.issue_key(draw(text), draw(st.one_of(st.none(), moments)))
    tenant.threshold_crossed(draw(moments), draw(st.sampled_from([50, 80, 100])), draw(money), draw(money))
    tenant.alert_delivered(draw(moments), draw(st.sampled_from([50, 80, 100])), draw(counts))
    tenant.alert_delivery_failed(draw(moments), draw(st.sampled_from([50, 80, 100])), draw(counts), draw(text))
    tenant.disable()
    tenant.enable()
    prices = PriceList.open()
    maybe = st.one_of(st.none(), money)
    tier = st.one_of(st.none(), st.builds(LongContext, counts, money, money, maybe, maybe, maybe))
    price = st.builds(Price, money, money, maybe, maybe, maybe, maybe, tier)
    catalogue = draw(st.one_of(st.none(), text))
    prices.set_price(draw(text), draw(moments), draw(text), catalogue, **price_fields(draw(price)))
    prices.remove_price(draw(text), draw(moments), draw(text))
    provider = Provider.register(draw(text))
    provider.transition("closed", "open", draw(text))
    slices = BudgetSlices.open_period(draw(text), draw(moments), draw(money))
    amount = draw(money.filter(lambda m: m > 0))
    slices.lease("a", amount, draw(text), draw(moments), amount + slices.committed_usd)
    slices.lease("b", amount, draw(text), draw(moments), amount * 2 + slices.committed_usd)
    slices.give_back("a", draw(money))
    slices.expire("b", draw(money), draw(text))
    return [*requests, rejected, tenant, prices, provider, repricing, slices]


STORED = {
    topic
    for topic, kind in event_classes().items()
    if kind is not Request.Settled and kind.__qualname__.rpartition(".")[2] not in ("Event", "Created")
}
"""The event classes the code stores: all but the shapes never stored themselves (`Request.Settled`,
and the `Event` and `Created` bases eventsourcing gives each aggregate)."""


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(aggregates())
def test_every_event_class_round_trips_through_the_sqlite_store(items: list[Any]) -> None:
    pending = [event for item in items for event in item.pending_events]
    assert {topic_of(type(e)) for e in pending} == STORED, "the strategy builds every stored class"
    with tempfile.TemporaryDirectory() as folder:
        store = LedgerStore(str(Path(folder) / "ledger.sqlite3"))
        try:
            recorded = store.append(items)
            assert [r.position for r in recorded] == list(range(1, len(pending) + 1))
            back = [r.event for r in store.read(0, 100)]
            # The fast path re-pricing reads with gives the same values as the mapper.
            fields = {**REQUEST_FIELDS, "new_cost_usd": Decimal, "old_cost_usd": Decimal}
            topics = [ADMITTED, *SETTLED, RESTATED]
            scanned = [raw for page in store.scan(topics, fields) for raw in page]
        finally:
            store.close()
    assert back == pending
    mapped = [e for e in back if topic_of(type(e)) in topics]
    assert [(r.originator_id, r.version, r.topic) for r in scanned] == [
        (e.originator_id.hex, e.originator_version, topic_of(type(e))) for e in mapped
    ]
    for raw, event in zip(scanned, mapped, strict=True):
        assert raw.state == {name: getattr(event, name, None) for name in fields}
    for event in back:
        for value in event.__dict__.values():
            assert not isinstance(value, float), "money and counts never travel as floats"
            if isinstance(value, Decimal):
                assert value == usd(value)


def test_aggregate_ids_are_stable_by_name() -> None:
    assert Tenant.register("acme", "k", {}, "api").id == Tenant.register("acme", "x", {}, "config").id
    assert Provider.register("sim").id == Provider.register("sim").id
    assert isinstance(Request.admit("r", "t", "m", False, Decimal(0), datetime.now(UTC)).id, uuid.UUID)


def test_a_reported_claim_is_recorded_json_safe_and_bounded() -> None:
    hostile = {
        "prompt_tokens": 1.5,
        "completion_tokens": float("nan"),
        "total_tokens": 10**40,
        "details": {"_type_": "decimal_str", "_data_": "1"},
        "note": "\ud800" + "x" * 1000,
        "deep": [[[[[1]]]]],
        "many": list(range(1000)),
    }
    recorded = reported_record(Usage(0, 0, 0, "provider_invalid", hostile), Usage(0, 0, 0, "provider_invalid"))
    assert recorded is not None
    assert recorded["prompt_tokens"] == "1.5" and recorded["completion_tokens"] == "nan"
    assert isinstance(recorded["total_tokens"], str)
    assert recorded["details"] == {"~_type_": "decimal_str", "~_data_": "1"}
    assert len(recorded["note"]) <= 65
    assert len(json.dumps(recorded)) < 4000 and str(RECORD_ITEMS) and len(recorded["many"]) <= RECORD_ITEMS + 1
    billed = Usage(3, 4, 0, "provider")
    assert reported_record(Usage(3, 4, 0, "provider", {"prompt_tokens": 3}), billed) is None


# The golden fixture: every event class's stored form, as written, must keep loading (tests/golden).


def _conforms(value: Any, annotation: Any) -> bool:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_conforms(value, member) for member in typing.get_args(annotation))
    if annotation is Any:
        return True
    if isinstance(annotation, typing.TypeVar):  # the aggregate id
        return isinstance(value, uuid.UUID)
    if annotation is type(None):
        return value is None
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(annotation) or annotation)


def _write_rows(path: str, rows: list[dict[str, Any]]) -> None:
    """Rows into a real ledger's `stored_events`, as they were written."""
    LedgerStore(path).close()
    connection = sqlite3.connect(path)
    with connection:
        connection.executemany(
            "insert into stored_events values (?, ?, ?, ?)",
            [(r["originator_id"], r["originator_version"], r["topic"], r["state"].encode()) for r in rows],
        )
    connection.close()


def test_every_event_class_has_a_golden_entry_at_its_class_version() -> None:
    have = {(entry["topic"], entry["class_version"]) for entry in golden.load()}
    missing = [f"{t} v{class_version(k)}" for t, k in event_classes().items() if (t, class_version(k)) not in have]
    assert not missing, f"no golden entry (run `python -m tests.golden.make`): {missing}"
    assert {"events.request:Request.Completed", "events.tenant:Tenant.Registered"} <= set(event_classes())
    assert set(event_classes()) > STORED, "the discovery finds every stored class, and the bases"


def test_every_golden_event_loads_whole_and_typed_through_every_read_path(tmp_path: Path) -> None:
    """A class changed without a `class_version` and an upcaster fails here: a field added or removed
    leaves a loaded event with the wrong fields, a type changed leaves a value of the old type, a
    class moved or renamed cannot be resolved, and today's store must write an entry back unchanged."""
    entries = golden.load()
    classes = event_classes()
    path = str(tmp_path / "golden.sqlite3")
    _write_rows(path, entries)
    store = LedgerStore(path)
    try:
        loaded = [record.event for record in store.read(0, 1000)]
        scanned: dict[int, Raw] = {}
        for topic in {entry["topic"] for entry in entries}:
            hints = typing.get_type_hints(resolve_topic(topic))
            kinds = {
                name: _scan_kind(hint)
                for name, hint in hints.items()
                if name not in ("originator_id", "originator_version")
            }
            fields = {name: kind for name, kind in kinds.items() if kind is not None}
            scanned.update((raw.position, raw) for page in store.scan([topic], fields) for raw in page)
    finally:
        store.close()
    assert len(loaded) == len(entries) == len(scanned)
    current = []
    for position, (entry, event) in enumerate(zip(entries, loaded, strict=True), start=1):
        kind = type(event)
        assert topic_of(kind) == entry["topic"] and kind is classes[entry["topic"]], entry["topic"]
        names = {field.name for field in dataclasses.fields(kind)}
        assert set(vars(event)) == names, f"{entry['topic']} v{entry['class_version']}: fields differ"
        hints = typing.get_type_hints(kind)
        for name in names:
            assert _conforms(getattr(event, name), hints[name]), f"{entry['topic']}.{name}: {getattr(event, name)!r}"
        raw = scanned[position]
        assert (raw.originator_id, raw.version, raw.topic) == (
            event.originator_id.hex,
            event.originator_version,
            entry["topic"],
        )
        assert raw.state == {name: getattr(event, name) for name in raw.state}, "the scan reads what the mapper does"
        if entry["class_version"] == class_version(kind):
            current.append(event)
    # Today's store writes a current-version entry back byte for byte.
    again = str(tmp_path / "again.sqlite3")
    store = LedgerStore(again)
    try:
        store.append(current)
    finally:
        store.close()
    connection = sqlite3.connect(again)
    written = connection.execute("select originator_id, originator_version, topic, state from stored_events").fetchall()
    connection.close()
    assert sorted((o, v, t, s.decode()) for o, v, t, s in written) == sorted(
        (e["originator_id"], e["originator_version"], e["topic"], e["state"])
        for e in entries
        if e["class_version"] == class_version(classes[e["topic"]])
    )


def _scan_kind(annotation: Any) -> type | None:
    """The type `LedgerStore.scan` reads a field as (None: a field it does not serve, a dict)."""
    members = [m for m in typing.get_args(annotation) if m is not type(None)] or [annotation]
    return members[0] if len(members) == 1 and members[0] in (str, int, bool, Decimal, datetime) else None


def _v1_terminal_ledger(path: str) -> list[Request]:
    """Three requests admitted today and settled by version 1 of the terminal events (the golden
    v1 rows: no `class_version`, no `reported_usage`), one of each kind."""
    store = LedgerStore(path)
    kinds = (Request.Completed, Request.Failed, Request.Cancelled)
    requests = [
        Request.admit(f"r{i}", "t", "sim-1", False, Decimal("0.01"), datetime(2026, 10, 1, tzinfo=UTC))
        for i in range(3)
    ]
    store.append(requests)
    store.close()
    v1 = {entry["topic"]: entry for entry in golden.load() if entry["class_version"] == 1}
    rows = [
        {**v1[topic_of(kind)], "originator_id": r.id.hex, "originator_version": 2}
        for r, kind in zip(requests, kinds, strict=True)
    ]
    connection = sqlite3.connect(path)
    with connection:
        connection.executemany(
            "insert into stored_events values (?, ?, ?, ?)",
            [(r["originator_id"], r["originator_version"], r["topic"], r["state"].encode()) for r in rows],
        )
    connection.close()
    return requests


def test_stored_v1_terminal_events_still_load(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite3")
    requests = _v1_terminal_ledger(path)
    kinds = (Request.Completed, Request.Failed, Request.Cancelled)
    store = LedgerStore(path)
    try:
        loaded = [r.event for r in store.read(0, 100)][3:]
        aggregate = store.get(requests[0].id, Request)
    finally:
        store.close()
    assert [type(e) for e in loaded] == list(kinds)
    for event in loaded:
        assert event.reported_usage is None and "reported_usage" in event.__dict__
        assert (event.cache_write_tokens, event.cache_write_1h_tokens) == (0, 0)
        assert (event.prompt_tokens, event.cost_usd, event.outcome) == (12, Decimal("0.000018000"), "ok")
    assert aggregate is not None and aggregate.outcome == "ok"
    assert Request.Completed.class_version == 3


def test_stored_v1_price_events_load_without_the_new_rates(tmp_path: Path) -> None:
    """A price set before v2 (no cache-write rates, tier, fee, catalogue) loads as a price without
    them, and prices like it did (the golden v1 row)."""
    path = str(tmp_path / "ledger.sqlite3")
    v1 = next(e for e in golden.load() if e["topic"] == topic_of(PriceList.PriceSet) and e["class_version"] == 1)
    connection = sqlite3.connect(path)
    LedgerStore(path).close()
    with connection:
        connection.execute(
            "insert into stored_events values (?, ?, ?, ?)",
            (v1["originator_id"], v1["originator_version"], v1["topic"], v1["state"].encode()),
        )
    connection.close()
    store = LedgerStore(path)
    try:
        [event] = [r.event for r in store.read(0, 10)]
    finally:
        store.close()
    assert isinstance(event, PriceList.PriceSet)
    assert all(getattr(event, name) is None for name in V2_FIELDS)
    price = price_from_fields(event.__dict__)
    assert price == Price(event.input_per_mtok, event.output_per_mtok, event.cached_input_per_mtok)


def test_a_stored_v1_terminal_event_is_repriced_through_the_scan(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite3")
    requests = _v1_terminal_ledger(path)
    store = LedgerStore(path)
    try:
        prices = flat_prices({"sim/sim-1": Price(Decimal("10"), Decimal("20"))})
        scan = Scan(store, prices, Filters(), store.position())
        found = []
        while (page := scan.step()) is not None:
            found.extend(page)
        store.append(restatement_events(found, prices, uuid.uuid4()))
        restated = [r.event for r in store.read(6, 100)]
        aggregate = store.get(requests[0].id, Request)
    finally:
        store.close()
    totals = scan.report().totals
    assert (totals["requests"], totals["restated"], totals["old_usd"], totals["new_usd"]) == (
        3,
        3,
        "0.000054",
        "0.00054",
    )
    assert [(e.originator_id, e.originator_version) for e in restated] == [(r.id, 3) for r in requests]
    assert {(e.old_cost_usd, e.new_cost_usd) for e in restated} == {(Decimal("0.000018"), Decimal("0.00018"))}
    assert aggregate is not None and aggregate.restatements == 1


class Ticket(Aggregate):
    """A test-only aggregate whose event renamed a field in version 2 (`price` → `cost_usd`)."""

    class Priced(Aggregate.Event):
        class_version = 2
        cost_usd: Decimal
        note: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["cost_usd"] = state.pop("price")


def test_the_fast_scan_goes_through_the_upcasters(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite3")
    moment = {"_type_": "datetime_iso", "_data_": "2026-10-01T12:00:00+00:00"}
    v1 = {"timestamp": moment, "price": {"_type_": "decimal_str", "_data_": "0.500000000"}, "note": "v1"}
    _write_rows(
        path,
        [
            {
                "originator_id": uuid.uuid4().hex,
                "originator_version": 1,
                "topic": topic_of(Ticket.Priced),
                "state": json.dumps(v1),
            }
        ],
    )
    store = LedgerStore(path)
    try:
        now = Ticket.Priced(
            originator_id=uuid.uuid4(), originator_version=1, timestamp=datetime.now(UTC), cost_usd=usd(2), note="v2"
        )
        store.append([now])
        scanned = [
            raw.state
            for page in store.scan([topic_of(Ticket.Priced)], {"cost_usd": Decimal, "note": str})
            for raw in page
        ]
        mapped = [(r.event.cost_usd, r.event.note) for r in store.read()]
    finally:
        store.close()
    assert scanned == [{"cost_usd": Decimal("0.5"), "note": "v1"}, {"cost_usd": Decimal(2), "note": "v2"}]
    assert mapped == [(Decimal("0.5"), "v1"), (Decimal(2), "v2")]


@pytest.mark.parametrize(
    "kinds",
    [
        # `operation` came to Admitted and Rejected with v2: every request before it was a chat completion
        (Request.Admitted, Request.Rejected),
        # and to CostRestated and SavingRestated with v2 (the spend projection groups by it)
        (Request.CostRestated, Request.SavingRestated),
    ],
    ids=["requests", "restatements"],
)
def test_stored_v1_events_without_an_operation_load_as_chat(tmp_path: Path, kinds: tuple[type, ...]) -> None:
    topics = {topic_of(kind) for kind in kinds}
    entries = [e for e in golden.load() if e["topic"] in topics and e["class_version"] == 1]
    assert len(entries) == 2
    path = str(tmp_path / "v1.sqlite3")
    _write_rows(path, entries)
    store = LedgerStore(path)
    try:
        loaded = [record.event for record in store.read(0, 10)]
    finally:
        store.close()
    assert sorted(type(e).__name__ for e in loaded) == sorted(kind.__name__ for kind in kinds)
    assert [e.operation for e in loaded] == ["chat", "chat"]
