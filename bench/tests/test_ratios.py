"""Table 1d: Tollgate's CPU per request over the floors' and the peers', built from scenario 1's rows."""

from __future__ import annotations

import pytest

from bench.ratios import cpu_ratios, one_line, ratio_table


def row(target: str, concurrency: int, cpu: float | None) -> dict[str, object]:
    return {"target": target, "concurrency": concurrency, "cpu_ms_per_request": cpu}


FIGURES = [
    row("direct", 1, 0.1),
    row("tollgate", 1, 6.0),
    row("floor-a", 1, 1.5),
    row("floor-b", 1, 3.0),
    row("portkey", 1, 2.0),
    row("direct", 16, 0.08),
    row("tollgate", 16, 5.0),
    row("tollgate-memory", 16, 4.0),  # a twin: not a reference
    row("floor-a", 16, 0.5),
    row("floor-b", 16, 2.5),
    row("portkey", 16, None),  # measured but no figure: left out, not a ratio of zero
    row("litellm", 16, 20.0),
]


def test_ratios_per_concurrency_against_each_reference_measured() -> None:
    ratios = cpu_ratios(list(reversed(FIGURES)))
    assert [r["concurrency"] for r in ratios] == [1, 16]
    low, high = ratios
    assert low["cpu_ms_per_request"] == 6.0
    assert low["rps_per_core"] == pytest.approx(1000 / 6.0)
    assert low["versus"] == {
        "floor-a": {"cpu_ms_per_request": 1.5, "ratio": 4.0},
        "floor-b": {"cpu_ms_per_request": 3.0, "ratio": 2.0},
        "portkey": {"cpu_ms_per_request": 2.0, "ratio": 3.0},
    }
    assert high["versus"] == {
        "floor-a": {"cpu_ms_per_request": 0.5, "ratio": 10.0},
        "floor-b": {"cpu_ms_per_request": 2.5, "ratio": 2.0},
        "litellm": {"cpu_ms_per_request": 20.0, "ratio": 0.25},
    }


def test_no_tollgate_no_ratios_and_no_table() -> None:
    ratios = cpu_ratios([row("direct", 1, 0.1), row("floor-a", 1, 1.0)])
    assert ratios == []
    assert ratio_table(ratios, "Tollgate") is None


def test_tollgate_without_a_figure_keeps_the_references_without_ratios() -> None:
    (only,) = cpu_ratios([row("tollgate", 1, None), row("floor-a", 1, 1.0)])
    assert only["rps_per_core"] is None
    assert only["versus"] == {"floor-a": {"cpu_ms_per_request": 1.0, "ratio": None}}


def test_table_has_a_column_pair_per_reference_present_and_dashes_for_gaps() -> None:
    table = ratio_table(cpu_ratios(FIGURES), "Tollgate")
    assert table is not None
    assert table.columns == [
        "conc",
        "Tollgate CPU ms/req",
        "req/s/core",
        "floor A CPU ms/req",
        "× floor A",
        "floor B CPU ms/req",
        "× floor B",
        "Portkey CPU ms/req",
        "× Portkey",
        "LiteLLM CPU ms/req",
        "× LiteLLM",
    ]
    assert table.rows == [
        ["1", "6.000", "167", "1.500", "4.00×", "3.000", "2.00×", "2.000", "3.00×", "–", "–"],
        ["16", "5.000", "200", "0.500", "10.00×", "2.500", "2.00×", "–", "–", "20.000", "0.25×"],
    ]


def test_table_without_peers_shows_the_floors_only() -> None:
    figures = [f for f in FIGURES if f["target"] not in ("portkey", "litellm")]
    table = ratio_table(cpu_ratios(figures), "Tollgate")
    assert table is not None
    assert not any("Portkey" in c or "LiteLLM" in c for c in table.columns)


def test_log_lines() -> None:
    assert one_line(cpu_ratios(FIGURES)) == [
        "c=1: 6.000 ms/req = 4.00× floor A, 2.00× floor B, 3.00× Portkey",
        "c=16: 5.000 ms/req = 10.00× floor A, 2.00× floor B, 0.25× LiteLLM",
    ]
