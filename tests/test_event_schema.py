"""Events are a schema: every event class round-trips through the real SQLite store."""

from __future__ import annotations

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
from runtime.reprice import ADMITTED, REQUEST_FIELDS, RESTATED, SETTLED

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
        }
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
