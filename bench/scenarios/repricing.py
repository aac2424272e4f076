"""Scenario 4 (registered, not written yet): re-pricing throughput and start-up time, large ledger.

It waits for re-pricing (``CostRestated`` events, DESIGN.md §4) and projection catch-up at start. When
they exist: build a ledger of, say, 1 M completed requests, then time (a) re-pricing all of them
(restated requests/s) and (b) gateway start-up until ``/readyz`` on that ledger.
"""

from __future__ import annotations

from pathlib import Path

from bench.scenario import Context, Outcome

REPO = Path(__file__).resolve().parent.parent.parent


class RepricingScenario:
    name = "repricing"
    title = "4. Re-pricing throughput and start-up time with a large ledger"

    def unavailable(self, ctx: Context | None) -> str | None:
        if not (REPO / "runtime" / "journal.py").exists():
            return "re-pricing and the ledger do not exist yet (no runtime/journal.py)"
        return "not written yet: this scenario (bench/scenarios/repricing.py) is still a stub"

    def run(self, ctx: Context) -> Outcome:
        raise NotImplementedError("see the module docstring")
