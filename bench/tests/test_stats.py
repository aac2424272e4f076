from __future__ import annotations

import math

from bench.report import clean, render
from bench.scenario import Table, fmt
from bench.stats import median, percentile, summary


def test_percentile_interpolates() -> None:
    samples = [float(x) for x in range(1, 101)]
    assert percentile(samples, 50) == 50.5
    assert percentile(samples, 99) == 99.01
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_median_skips_missing() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None]) is None


def test_summary_and_json_cleaning() -> None:
    assert summary([2.0, 1.0])["n"] == 2
    assert clean({"a": [float("nan"), 1.0]}) == {"a": [None, 1.0]}


def test_table_cells() -> None:
    assert fmt(18757.4, 0) == "18 757"
    assert fmt(-0.5, sign=True) == "-0.50"
    assert fmt(None) == "–"
    text = render(Table("T", ["a", "bb"], [["1", "2"]], ["a note"]))
    assert "| a | bb |" in text
    assert "- a note" in text
