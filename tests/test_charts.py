"""runtime.http.charts: the numbers on the marks are the data's, exactly; names are escaped."""

from __future__ import annotations

import re
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from runtime.http import charts

AMOUNT = st.decimals(min_value=0, max_value=1000, places=9, allow_nan=False, allow_infinity=False)


def values(svg: str, name: str) -> list[Decimal]:
    return [Decimal(v) for v in re.findall(rf'{name}="([^"]*)"', svg)]


@given(st.lists(st.lists(AMOUNT, min_size=5, max_size=5), min_size=1, max_size=4))
def test_stacked_bars_carry_every_amount_and_their_exact_total(rows: list[list[Decimal]]) -> None:
    days = [f"2026-11-0{i + 1}" for i in range(5)]
    svg = charts.stacked_bars(days, [(f"m{i}", row) for i, row in enumerate(rows)], label="spend")
    total = sum((v for row in rows for v in row), Decimal(0))
    (root,) = re.findall(r'<svg [^>]*data-total="([^"]*)"', svg)
    assert Decimal(root) == total == sum(values(svg, "data-value"), Decimal(0))
    bars = [Decimal(v) for v in re.findall(r'<g class="bar"[^>]*data-total="([^"]*)"', svg)]
    assert bars == [sum((row[i] for row in rows), Decimal(0)) for i in range(5)]


def test_names_are_escaped_everywhere() -> None:
    evil = '<script>alert("x")</script>'
    drawn = [
        charts.stacked_bars(["2026-11-01"], [(evil, [Decimal(1)])], label=evil),
        charts.hbars([(evil, Decimal(1), Decimal(2))], label=evil),
        charts.delta_bars([(evil, Decimal(-1))], label=evil),
        charts.line([("2026-11-01", Decimal(1))], [(evil, Decimal(2))], label=evil),
        charts.state_strip([(evil, [(0.0, 1.0, evil)])], label=evil),
    ]
    for svg in drawn:
        assert "<script>" not in svg and "&lt;script&gt;" in svg


def test_a_line_keeps_its_thresholds_and_last_value() -> None:
    svg = charts.line(
        [("2026-11-01", Decimal("1.5")), ("2026-11-02", Decimal("4"))],
        [("50 %", Decimal(5)), ("100 %", Decimal(10))],
        label="burn",
        categories=["2026-11-01", "2026-11-02", "2026-11-03"],
    )
    assert re.findall(r'class="threshold" data-label="([^"]*)" data-value="([^"]*)"', svg) == [
        ("50 %", "5"),
        ("100 %", "10"),
    ]
    assert 'data-last="4"' in svg and len(re.findall(r'class="point"', svg)) == 2


def test_delta_bars_sum_signed_deltas() -> None:
    svg = charts.delta_bars([("a", Decimal("0.5")), ("b", Decimal("-0.25"))], label="delta")
    assert 'data-total="0.25"' in svg
    assert values(svg, "data-value") == [Decimal("0.5"), Decimal("-0.25")]
