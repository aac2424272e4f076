from __future__ import annotations

import pytest

from bench.scenarios import SCENARIOS, by_name


def test_registry_order_and_names() -> None:
    assert [s.name for s in SCENARIOS] == ["chat", "stream", "disconnect", "ledger", "repricing", "cache"]
    assert [s.name for s in by_name(["stream", "chat"])] == ["chat", "stream"]


def test_unknown_scenario_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown scenario"):
        by_name(["nope"])


def test_the_ledger_scenario_is_available() -> None:
    (scenario,) = by_name(["ledger"])
    assert scenario.unavailable(None) is None
