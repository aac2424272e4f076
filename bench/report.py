"""The three outputs of a run: tables on stdout, a JSON file under bench/results/, bench/RESULTS.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.scenario import Outcome, Table, fmt

BENCH = Path(__file__).resolve().parent
RESULTS_DIR = BENCH / "results"
RESULTS_MD = BENCH / "RESULTS.md"

NOISE = (
    "These numbers are noisy. They come from a small virtual machine whose neighbours' load we "
    "cannot see or control; the load generator, the fake upstream and the server under test share "
    "its cores. Each figure is a median of rounds taken in the same run, alternating the targets, so "
    "ratios within one run (gateway vs direct, Tollgate vs LiteLLM) are more trustworthy than "
    "absolute numbers, which can move 10-20 % between runs."
)


def render(table: Table) -> str:
    """A Markdown table, aligned so it also reads well on a terminal."""
    widths = [max(len(str(c)) for c in col) for col in zip(table.columns, *table.rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [f"### {table.title}", "", line(table.columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in table.rows]
    out += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(out) + "\n"


def clean(value: object) -> object:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def _find(outcomes: list[Outcome], name: str) -> Outcome | None:
    return next((o for o in outcomes if o.name == name and not o.skipped), None)


def goals(outcomes: list[Outcome]) -> Table | None:
    """The issue's targets (goals, not assertions) against Tollgate's figures, when it was measured."""
    rows: list[list[str]] = []

    def row(goal: str, limit: str, value: float | None, unit: str, met: bool | None) -> None:
        rows.append(
            [
                goal,
                limit,
                "–" if value is None else f"{fmt(value, 0 if unit in ('req/s', 'MB') else 2)} {unit}",
                "–" if met is None else ("yes" if met else "no"),
            ]
        )

    chat = _find(outcomes, "chat")
    summary = chat.figures.get("summary") if chat else None
    if not isinstance(summary, list) or not any(f["target"] == "tollgate" for f in summary):
        return None
    mine = [f for f in summary if f["target"] == "tollgate"]
    lowest = min(mine, key=lambda f: f["concurrency"])
    highest = max(mine, key=lambda f: f["concurrency"])
    p50, p99 = lowest.get("added_p50_ms"), lowest.get("added_p99_ms")
    row(f"added latency p50 at c={lowest['concurrency']}", "≤ 1 ms", p50, "ms", None if p50 is None else p50 <= 1)
    row(f"added latency p99 at c={lowest['concurrency']}", "≤ 3 ms", p99, "ms", None if p99 is None else p99 <= 3)
    per_core = highest.get("rps_per_core")
    row(
        f"req/s per core (1000 / CPU ms per request, c={highest['concurrency']})",
        "≥ 450",
        per_core,
        "req/s",
        None if per_core is None else per_core >= 450,
    )
    stream = _find(outcomes, "stream")
    added_first: float | None = None
    peak_rss_mib = max(float(f["peak_rss_mib"] or 0) for f in mine)
    if stream:
        seq = stream.figures.get("sequential")
        if isinstance(seq, dict):
            added_first = next(
                (f.get("added_first_chunk_ms_p50") for f in seq["summary"] if f["target"] == "tollgate"), None
            )
        capacity = stream.figures.get("capacity")
        if isinstance(capacity, dict) and capacity.get("peak_rss_mib"):
            peak_rss_mib = max(peak_rss_mib, float(capacity["peak_rss_mib"]))
    row(
        "streaming first-chunk overhead p50",
        "≤ 2 ms",
        added_first,
        "ms",
        None if added_first is None else added_first <= 2,
    )
    peak_mb = peak_rss_mib * 1.048576
    row("peak RSS under load (VmHWM, all scenarios)", "≤ 100 MB", peak_mb, "MB", peak_mb <= 100)
    return Table("Goals (from the issue; goals, not assertions)", ["goal", "target", "measured", "met"], rows)


def tables(outcomes: list[Outcome]) -> list[Table]:
    found = [t for o in outcomes for t in o.tables]
    goal_table = goals(outcomes)
    return found + ([goal_table] if goal_table else [])


def text(doc: dict[str, object], outcomes: list[Outcome]) -> str:
    """The whole report as Markdown: header, tables, skipped scenarios."""
    header = doc["header"]
    assert isinstance(header, list)
    parts = ["\n".join(str(h) for h in header) + "\n"]
    parts += [render(t) for t in tables(outcomes)]
    skipped = [f"- {o.title}: skipped: {o.skipped}" for o in outcomes if o.skipped]
    if skipped:
        parts.append("### Skipped\n\n" + "\n".join(skipped) + "\n")
    return "\n".join(parts)


def write_json(doc: dict[str, object], stamp: str, quick: bool) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{stamp}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps(clean(doc), indent=1, sort_keys=False) + "\n")
    return path


def write_results_md(doc: dict[str, object], outcomes: list[Outcome], json_path: Path) -> Path:
    body = text(doc, outcomes)
    RESULTS_MD.write_text(
        "# Tollgate benchmark results\n\n"
        f"_Regenerated by `python -m bench` on {doc['date']}; do not edit by hand. Every figure of this run "
        f"is in [`results/{json_path.name}`](results/{json_path.name})._\n\n"
        f"**Noise.** {NOISE}\n\n"
        f"{body}\n"
        "## How to reproduce\n\n"
        "```sh\n"
        "make bench          # or: .venv/bin/python -m bench   (installs wrk with apt-get if missing)\n"
        "make bench-peers    # adds LiteLLM's rows; installs litellm[proxy] into bench/.peers/ once\n"
        ".venv/bin/python -m bench --quick        # 2 s, 1 round smoke test (does not rewrite this file)\n"
        ".venv/bin/python -m bench --help         # every knob\n"
        "```\n\n"
        f"This run: `{doc['command']}`.\n"
    )
    return RESULTS_MD
