from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from bench.scenarios.repricing import generate, reprice_dry_run
from events.request import Request
from events.store import LedgerStore


def test_the_bulk_ledger_reads_back_as_real_events_and_reprices(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite3")
    generate(path, 50)
    store = LedgerStore(path)
    try:
        events = [record.event for record in store.read_all()]
    finally:
        store.close()
    assert [type(e) for e in events[:2]] == [Request.Admitted, Request.Completed] and len(events) == 100
    admitted, completed = events[0], events[1]
    assert admitted.originator_id == completed.originator_id and admitted.tenant == "tenant-0"
    expected = (Decimal(completed.prompt_tokens) + 2 * completed.completion_tokens) / 1_000_000
    assert completed.cost_usd == expected and completed.provider == "sim"
    dry = reprice_dry_run(path)
    assert dry["events"] == 100 and dry["restated"] == 50
