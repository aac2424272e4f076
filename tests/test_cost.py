"""policies/cost.py: the seed cases, cached tokens, dated snapshots, effective dates, unpriced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from events.usage import Usage
from policies.cost import Price, PriceBook, PriceEntry, cost_of

PER_1K = Price(Decimal("10"), Decimal("20"))  # $0.01 / $0.02 per 1K tokens
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_seed_cases() -> None:
    assert cost_of(Usage(1000, 500), PER_1K) == Decimal("0.02")
    assert cost_of(Usage(250, 100), PER_1K) == Decimal("0.0045")
    assert cost_of(Usage(0, 0), PER_1K) == 0


def test_cached_tokens_are_charged_once_at_the_cached_rate() -> None:
    price = Price(Decimal("2"), Decimal("8"), Decimal("0.5"))
    assert cost_of(Usage(1_000_000, 0, cached_tokens=400_000), price) == Decimal("1.4")  # 600k × 2 + 400k × 0.5
    assert cost_of(Usage(1_000_000, 0, cached_tokens=400_000), Price(Decimal("2"), Decimal("8"))) == Decimal("2")


def test_cost_is_quantized_to_nano_dollars() -> None:
    assert cost_of(Usage(1, 0), Price(Decimal("0.0001"), Decimal(0))) == Decimal("0E-9")
    assert cost_of(Usage(3, 0), Price(Decimal("0.15"), Decimal(0))) == Decimal("4.5E-7")


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7))
def test_cost_is_exact_and_additive(prompt: int, completion: int, more: int) -> None:
    both = cost_of(Usage(prompt + more, completion), PER_1K)
    assert both == cost_of(Usage(prompt, completion), PER_1K) + cost_of(Usage(more, 0), PER_1K)


def test_lookup_by_effective_time_and_removal() -> None:
    book = PriceBook(
        [
            PriceEntry("p/m", T0, PER_1K),
            PriceEntry("p/m", T0 + timedelta(days=10), Price(Decimal(1), Decimal(1))),
            PriceEntry("p/m", T0 + timedelta(days=20), None),
        ]
    )
    assert book.lookup("p/m", "m", T0 - timedelta(seconds=1)) is None
    assert book.price("p", "m", Usage(1000, 500), T0 + timedelta(days=1)).cost_usd == Decimal("0.02")
    assert book.price("p", "m", Usage(1000, 0), T0 + timedelta(days=10)).cost_usd == Decimal("0.001")
    removed = book.price("p", "m", Usage(1000, 0), T0 + timedelta(days=30))
    assert removed.unpriced and removed.price_ref is None


def test_dated_snapshots_fall_back_to_their_base_entry() -> None:
    book = PriceBook([PriceEntry("openai/gpt-4o", T0, PER_1K), PriceEntry("anthropic/claude-3-5-haiku", T0, PER_1K)])
    later = T0 + timedelta(days=1)
    assert (
        book.price("openai", "gpt-4o-2024-08-06", Usage(1000, 500), later).price_ref
        == f"openai/gpt-4o@{T0.isoformat()}"
    )
    assert book.price("anthropic", "claude-3-5-haiku-20241022", Usage(1000, 500), later).cost_usd == Decimal("0.02")
    assert book.price("openai", "gpt-4o-mini", Usage(1, 1), later).unpriced
    exact = PriceBook([*book.entries(), PriceEntry("openai/gpt-4o-2024-08-06", T0, Price(Decimal(1), Decimal(1)))])
    assert exact.price("openai", "gpt-4o-2024-08-06", Usage(1000, 0), later).cost_usd == Decimal("0.001")
