"""Scenario 3 (registered, not written yet): events per second the ledger's Journal commits.

It waits for the ledger (DESIGN.md §4: a single-writer Journal with group commit). When it exists,
measure the Journal alone, without HTTP: push N request-sized event batches through it from many tasks
and report committed events/s and commit latency p50/p99.
"""

from __future__ import annotations

from pathlib import Path

from bench.scenario import Context, Outcome

REPO = Path(__file__).resolve().parent.parent.parent


class LedgerScenario:
    name = "ledger"
    title = "3. The ledger alone: events/s the Journal commits"

    def unavailable(self, ctx: Context | None) -> str | None:
        if not (REPO / "runtime" / "journal.py").exists():
            return "the ledger does not exist yet (no runtime/journal.py)"
        return "not written yet: the ledger exists, this scenario (bench/scenarios/ledger.py) is still a stub"

    def run(self, ctx: Context) -> Outcome:
        raise NotImplementedError("see the module docstring")
