"""The scenario registry, in report order. Add a scenario by appending an instance here.

A scenario has a ``name`` (used by ``--scenarios``), a ``title``, ``unavailable(ctx)`` returning why it
cannot run now (reported as "skipped: <why>") or None, and ``run(ctx)`` returning an Outcome.
"""

from __future__ import annotations

from bench.scenario import Scenario
from bench.scenarios.cache import CacheScenario
from bench.scenarios.chat import ChatScenario
from bench.scenarios.disconnect import DisconnectScenario
from bench.scenarios.ledger import LedgerScenario
from bench.scenarios.repricing import RepricingScenario
from bench.scenarios.stream import StreamScenario

SCENARIOS: list[Scenario] = [
    ChatScenario(),
    StreamScenario(),
    DisconnectScenario(),
    LedgerScenario(),
    RepricingScenario(),
    CacheScenario(),
]


def by_name(names: list[str]) -> list[Scenario]:
    known = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"bench: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [s for s in SCENARIOS if s.name in names]
