"""Tollgate's CPU per request as a ratio to its own stack's floors and to its peers (scenario 1).

Pure functions over scenario 1's summary rows (bench/scenarios/chat.py ``_figures``): one row per
concurrency, Tollgate's CPU ms/request and req/s per core, and for each reference measured in the same
rounds its CPU ms/request and the ratio Tollgate / reference (> 1: Tollgate spends more CPU per request).
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.scenario import Table, fmt

BASE = "tollgate"
# (target name, short label): the two floors of Tollgate's own stack (bench/floors.py), then the peers.
REFERENCES: tuple[tuple[str, str], ...] = (
    ("floor-a", "floor A"),
    ("floor-b", "floor B"),
    ("portkey", "Portkey"),
    ("litellm", "LiteLLM"),
)


def _cpu(row: dict[str, object] | None) -> float | None:
    value = None if row is None else row.get("cpu_ms_per_request")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def cpu_ratios(
    figures: Sequence[dict[str, object]],
    base: str = BASE,
    references: Sequence[tuple[str, str]] = REFERENCES,
) -> list[dict[str, object]]:
    """Per concurrency where ``base`` was measured: its CPU ms/request, req/s per core, and per reference
    that was measured at that concurrency ``{"cpu_ms_per_request": x, "ratio": base / x}``."""
    by_key = {(str(f["target"]), int(str(f["concurrency"]))): f for f in figures}
    out: list[dict[str, object]] = []
    for concurrency in sorted({c for t, c in by_key if t == base}):
        mine = _cpu(by_key.get((base, concurrency)))
        versus: dict[str, dict[str, float | None]] = {}
        for name, _label in references:
            theirs = _cpu(by_key.get((name, concurrency)))
            if theirs is not None:
                versus[name] = {"cpu_ms_per_request": theirs, "ratio": mine / theirs if mine is not None else None}
        out.append(
            {
                "concurrency": concurrency,
                "target": base,
                "cpu_ms_per_request": mine,
                "rps_per_core": 1000 / mine if mine else None,
                "versus": versus,
            }
        )
    return out


def ratio_table(
    ratios: Sequence[dict[str, object]], label: str, references: Sequence[tuple[str, str]] = REFERENCES
) -> Table | None:
    """The ratios as a table: one column pair (CPU ms/req, ×) per reference measured at any concurrency."""
    if not ratios:
        return None
    present = [(n, lab) for n, lab in references if any(n in _versus(r) for r in ratios)]
    columns = ["conc", f"{label} CPU ms/req", "req/s/core"]
    for _name, short in present:
        columns += [f"{short} CPU ms/req", f"× {short}"]
    rows: list[list[str]] = []
    for r in ratios:
        cpu, per_core = r.get("cpu_ms_per_request"), r.get("rps_per_core")
        row = [
            str(r["concurrency"]),
            fmt(cpu if isinstance(cpu, float) else None, 3),
            fmt(per_core if isinstance(per_core, float) else None, 0),
        ]
        for name, _short in present:
            ref = _versus(r).get(name, {})
            row += [fmt(ref.get("cpu_ms_per_request"), 3), fmt(ref.get("ratio"), 2) + ("×" if ref.get("ratio") else "")]
        rows.append(row)
    return Table(
        f"1d. {label}'s CPU per request against its stack's floors and its peers (same rounds)",
        columns,
        rows,
        [
            "× = Tollgate's CPU ms/request ÷ the reference's, medians over the same rounds (> 1: Tollgate spends "
            "more). floor A = hypercorn's trio worker + a raw ASGI app answering a fixed chat.completion (no "
            "upstream call): the cost of Tollgate's HTTP server alone. floor B = floor A + one shared "
            "httpx.AsyncClient on httpx's default transport (httpcore) forwarding the body to the fake upstream: "
            "the HTTP server and an HTTP client with nothing of Tollgate's between them (bench/floors.py). "
            "Tollgate calls its own TrioTransport (providers/transport.py) directly with httpx's Request and "
            "Response (no AsyncClient), cheaper than AsyncClient on httpcore's pool, so Tollgate ÷ floor B "
            "understates what Tollgate's own code costs.",
        ],
    )


def _versus(row: dict[str, object]) -> dict[str, dict[str, float | None]]:
    versus = row.get("versus")
    return versus if isinstance(versus, dict) else {}


def one_line(ratios: Sequence[dict[str, object]], references: Sequence[tuple[str, str]] = REFERENCES) -> list[str]:
    """A line per concurrency for the run's log: ``c=16: 5.98 ms/req = 11.9× floor A, 2.5× floor B, ...``."""
    lines = []
    short = dict(references)
    for r in ratios:
        cpu = r.get("cpu_ms_per_request")
        parts = [f"{fmt(ref.get('ratio'), 2)}× {short[name]}" for name, ref in _versus(r).items() if ref.get("ratio")]
        lines.append(
            f"c={r['concurrency']}: {fmt(cpu if isinstance(cpu, float) else None, 3)} ms/req"
            + (" = " + ", ".join(parts) if parts else "")
        )
    return lines
