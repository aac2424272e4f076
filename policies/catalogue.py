"""What a price catalogue import appends: a pure decision over the price book and the catalogue's prices.

A catalogue gives, per key ("PROVIDER/MODEL"), a timeline of prices (`Candidate`s, each from its
`effective_from`; the first from `CATALOGUE_EPOCH`). Against the entries the ledger holds for the key
(at each effective time the later entry wins, as in the price book):

- a candidate whose time already holds an equal price is **unchanged**;
- an entry set by someone else (source other than the catalogue's: `config`, `api`) whose price
  differs from the catalogue's price at that time is a **conflict**: nothing of the key is appended,
  unless `overwrite`, where the catalogue's price is appended at that entry's time too (the later
  entry at one time wins), reported **overwritten**;
- every other candidate is **imported** (appended).

An earlier import by the same catalogue (another version) is never a conflict: it is updated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import attrs

from policies.cost import Price, PriceEntry

CATALOGUE_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The effective time of a catalogue price without a start date (it applies whenever no later one does)."""
STATUSES = ("imported", "unchanged", "overwritten", "conflict")
CATALOGUES = ("genai-prices",)
"""The catalogues an import may name as its source (never "config" or "api": those are set by hand)."""


@attrs.frozen
class Candidate:
    key: str
    effective_from: datetime
    price: Price
    note: str | None = None


@attrs.frozen
class Outcome:
    """One row of an import's report. `held` is the ledger's entry in the way (a conflict's, an
    overwritten one's), None otherwise."""

    key: str
    effective_from: datetime
    status: str
    price: Price
    note: str | None = None
    held: PriceEntry | None = None


@attrs.frozen
class Plan:
    outcomes: list[Outcome]
    appends: list[Candidate]

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)


def plan_import(candidates: Iterable[Candidate], held: Iterable[PriceEntry], source: str, *, overwrite: bool) -> Plan:
    """The outcome of importing `candidates` (from catalogue `source`) over the ledger's `held` entries
    (in the order they were committed)."""
    by_key: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_key.setdefault(candidate.key, []).append(candidate)
    winners: dict[str, dict[datetime, PriceEntry]] = {}
    for entry in held:
        winners.setdefault(entry.key, {})[entry.effective_from] = entry  # the later of two at one time wins
    outcomes: list[Outcome] = []
    appends: list[Candidate] = []
    for key in sorted(by_key):
        timeline = sorted(by_key[key], key=lambda c: c.effective_from)
        ours = winners.get(key, {})
        conflicts = [
            entry
            for at, entry in sorted(ours.items())
            if entry.source != source and entry.price != _at(timeline, at).price
        ]
        if conflicts and not overwrite:
            outcomes.extend(
                Outcome(key, entry.effective_from, "conflict", _at(timeline, entry.effective_from).price, held=entry)
                for entry in conflicts
            )
            continue
        replaced = {entry.effective_from: entry for entry in conflicts}
        for candidate in timeline:
            if candidate.effective_from in replaced:
                continue  # appended below, as an overwrite
            there = ours.get(candidate.effective_from)
            if there is not None and there.price == candidate.price:
                outcomes.append(Outcome(key, candidate.effective_from, "unchanged", candidate.price, candidate.note))
            else:
                outcomes.append(Outcome(key, candidate.effective_from, "imported", candidate.price, candidate.note))
                appends.append(candidate)
        for at, entry in sorted(replaced.items()):
            candidate = attrs.evolve(_at(timeline, at), effective_from=at)
            outcomes.append(Outcome(key, at, "overwritten", candidate.price, candidate.note, held=entry))
            appends.append(candidate)
    return Plan(outcomes, appends)


def _at(timeline: Sequence[Candidate], at: datetime) -> Candidate:
    """The catalogue's price in force at `at` (its first before every start date, as catalogues apply it)."""
    found = timeline[0]
    for candidate in timeline:
        if candidate.effective_from <= at:
            found = candidate
    return found
