"""Events are a schema: every event class round-trips through the real SQLite store."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.money import usd
from events.pricelist import PriceList
from events.provider import Provider
from events.repricing import Repricing
from events.request import Request
from events.store import LedgerStore, topic_of
from events.tenant import Tenant
from events.usage import Usage
from policies.usage import RECORD_ITEMS, reported_record
from runtime.ledger.reprice import ADMITTED, REQUEST_FIELDS, RESTATED, SETTLED

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
        request.settle(kind, **draw(settle_fields()))
        requests.append(request)
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
    prices.set_price(draw(text), draw(money), draw(money), draw(st.one_of(st.none(), money)), draw(moments), draw(text))
    prices.remove_price(draw(text), draw(moments), draw(text))
    provider = Provider.register(draw(text))
    provider.transition("closed", "open", draw(text))
    return [*requests, rejected, tenant, prices, provider, repricing]


EVENT_CLASSES = {
    Request.Admitted,
    Request.AttemptFailed,
    Request.Completed,
    Request.Failed,
    Request.Cancelled,
    Request.Rejected,
    Tenant.Registered,
    Tenant.Updated,
    Tenant.KeyIssued,
    Tenant.Disabled,
    Tenant.Enabled,
    Tenant.BudgetThresholdCrossed,
    Tenant.AlertDelivered,
    Tenant.AlertDeliveryFailed,
    PriceList.Opened,
    PriceList.PriceSet,
    PriceList.PriceRemoved,
    Provider.Registered,
    Provider.BreakerTransitioned,
    Request.CostRestated,
    Repricing.Committed,
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(aggregates())
def test_every_event_class_round_trips_through_the_sqlite_store(items: list[Any]) -> None:
    pending = [event for item in items for event in item.pending_events]
    assert {type(e) for e in pending} == EVENT_CLASSES
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


def _v1_settled_state(kind: type[Request.Settled]) -> bytes:
    """A terminal event's stored state as version 1 wrote it: no `class_version`, no `reported_usage`."""
    state = {
        "timestamp": {"_type_": "datetime_iso", "_data_": "2026-10-01T12:00:00+00:00"},
        "provider": "sim",
        "served_model": "sim-1",
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "cached_tokens": 0,
        "usage_source": "provider",
        "cost_usd": {"_type_": "decimal_str", "_data_": "0.000018000"},
        "price_ref": "sim/sim-1@2026-10-01T00:00:00+00:00",
        "latency_us": 1000,
        "overhead_us": 300,
        "outcome": "ok",
    }
    return json.dumps(state, separators=(",", ":")).encode()


def test_stored_v1_terminal_events_still_load(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite3")
    store = LedgerStore(path)
    kinds = (Request.Completed, Request.Failed, Request.Cancelled)
    requests = [
        Request.admit(f"r{i}", "t", "sim-1", False, Decimal("0.01"), datetime(2026, 10, 1, tzinfo=UTC))
        for i in range(3)
    ]
    store.append(requests)
    store.close()
    connection = sqlite3.connect(path)
    with connection:
        connection.executemany(
            "insert into stored_events values (?, ?, ?, ?)",
            [(r.id.hex, 2, topic_of(kind), _v1_settled_state(kind)) for r, kind in zip(requests, kinds, strict=True)],
        )
    connection.close()
    store = LedgerStore(path)
    try:
        loaded = [r.event for r in store.read(0, 100)][3:]
        aggregate = store.get(requests[0].id, Request)
    finally:
        store.close()
    assert [type(e) for e in loaded] == list(kinds)
    for event in loaded:
        assert event.reported_usage is None and "reported_usage" in event.__dict__
        assert (event.prompt_tokens, event.cost_usd, event.outcome) == (12, Decimal("0.000018000"), "ok")
    assert aggregate is not None and aggregate.outcome == "ok"
    assert Request.Completed.class_version == 2


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
