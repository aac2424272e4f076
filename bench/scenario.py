"""What a scenario is: its settings, the context it runs in, and the outcome it hands to the report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from bench.load import LoadGenerator
from bench.target import Target


@dataclass(frozen=True)
class Settings:
    """Every knob of a run (from the command line), recorded in the JSON."""

    duration_s: float = 10.0
    rounds: int = 3
    concurrency: tuple[int, ...] = (1, 16, 64)
    warmup_s: float = 1.0
    overhead_requests: int = 500
    stream_requests: int = 200
    stream_chunks: int = 20
    capacity_levels: tuple[int, ...] = (10, 25, 50, 100, 150, 200, 300, 400, 600, 800)
    capacity_seconds: float = 3.0
    chunk_rate: float = 50.0  # chunks per second per stream in the relay-capacity ramp
    max_chunk_delay_ms: float = 50.0
    quick: bool = False


@dataclass
class Context:
    """What the scenarios share: the load generator, the direct upstream and the gateways under test."""

    settings: Settings
    load: LoadGenerator
    upstream: Target
    gateways: list[Target]  # Tollgate first, then peers
    floors: list[Target] = field(default_factory=list)  # bench/floors.py: scenario 1 only, non-stream only
    started: float = field(default_factory=time.monotonic)

    @property
    def targets(self) -> list[Target]:
        """Direct first, then each gateway: the order of a round."""
        return [self.upstream, *self.gateways]

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)


@dataclass
class Table:
    """A titled table of already-formatted cells, with notes printed under it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """What a scenario produced: tables for people, figures (JSON-ready) for machines."""

    name: str
    title: str
    skipped: str | None = None
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)


class Scenario(Protocol):
    name: str
    title: str

    def unavailable(self, ctx: Context | None) -> str | None:
        """Why this scenario cannot run now (it is then reported as skipped), or None."""

    def run(self, ctx: Context) -> Outcome: ...


def fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    """A table cell: fixed decimals, thousands separated by a space, '–' when absent."""
    if value is None or value != value:  # None or NaN
        return "–"
    text = f"{value:+,.{digits}f}" if sign else f"{value:,.{digits}f}"
    return text.replace(",", " ")
