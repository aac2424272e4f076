"""The three outputs of a run: tables on stdout, a JSON file under bench/results/, bench/RESULTS.md."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from bench.scenario import Outcome, Table, fmt

BENCH = Path(__file__).resolve().parent
RESULTS_DIR = BENCH / "results"
RESULTS_MD = BENCH / "RESULTS.md"
RUN_LINK = re.compile(r"Every figure of this run is in \[`results/([0-9TZ]+\.json)`\]")

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
                "–"
                if value is None
                else f"{fmt(value, 0 if unit in ('req/s', 'MB') else 2)}{'' if unit == '×' else ' '}{unit}",
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
    cpu = highest.get("cpu_ms_per_request")
    cpu_ms = float(cpu) if isinstance(cpu, int | float) else None
    row(
        f"#14: CPU per request, SQLite ledger on, c={highest['concurrency']}",
        "≤ 1.75 ms",
        cpu_ms,
        "ms",
        None if cpu_ms is None else cpu_ms <= 1.75,
    )
    ratios = chat.figures.get("ratios") if chat else None
    floor_a = next(
        (
            r["versus"]["floor-a"].get("ratio")
            for r in ratios or []
            if isinstance(r, dict) and r["concurrency"] == highest["concurrency"] and "floor-a" in r["versus"]
        ),
        None,
    )
    row(
        f"#14: CPU per request ÷ floor A (hypercorn + raw ASGI), c={highest['concurrency']}",
        "≤ 3.5×",
        floor_a,
        "×",
        None if floor_a is None else floor_a <= 3.5,
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


def choose_kept(previous: dict[str, object], previous_json: str, measured: set[str]) -> dict[str, str]:
    """Which earlier run's results RESULTS.md keeps for the scenarios this run did not measure:
    {scenario: results/*.json name}. The run being replaced gives its own measured scenarios and those it
    kept itself (its ``kept_from``), so a section stays until a run measures that scenario again."""
    kept: dict[str, str] = {}
    scenarios = previous.get("scenarios")
    for name, data in (scenarios if isinstance(scenarios, dict) else {}).items():
        if name not in measured and isinstance(data, dict) and not data.get("skipped"):
            kept[name] = previous_json
    earlier = previous.get("kept_from")
    for name, json_name in (earlier if isinstance(earlier, dict) else {}).items():
        if name not in measured and name not in kept:
            kept[name] = str(json_name)
    return kept


def kept_from_results_md(measured: set[str]) -> dict[str, str]:
    """``choose_kept`` for the run RESULTS.md shows now (nothing when there is none or its JSON is gone)."""
    try:
        match = RUN_LINK.search(RESULTS_MD.read_text())
        if not match:
            return {}
        previous = json.loads((RESULTS_DIR / match.group(1)).read_text())
    except (OSError, ValueError):
        return {}
    return choose_kept(previous, match.group(1), measured) if isinstance(previous, dict) else {}


def _kept_sections(kept: dict[str, str]) -> str:
    """The tables of each kept scenario, from its run's JSON, under a heading naming that run."""
    parts: list[str] = []
    for json_name in dict.fromkeys(kept.values()):
        try:
            doc = json.loads((RESULTS_DIR / json_name).read_text())
        except (OSError, ValueError):
            continue
        git = doc.get("machine", {}).get("git", {})
        names = [n for n, j in kept.items() if j == json_name]
        parts.append(
            f"## Kept from the run of {doc.get('date', '?')} (git {str(git.get('sha', '?'))[:12]}, "
            f"[`results/{json_name}`](results/{json_name})): scenarios the run above did not measure\n"
        )
        for name in names:
            for table in doc.get("scenarios", {}).get(name, {}).get("tables", []):
                parts.append(render(Table(**table)))
    return "\n".join(parts)


def write_results_md(doc: dict[str, object], outcomes: list[Outcome], json_path: Path) -> Path:
    body = text(doc, outcomes)
    kept = doc.get("kept_from")
    if isinstance(kept, dict) and kept:
        body += "\n" + _kept_sections({str(k): str(v) for k, v in kept.items()})
    RESULTS_MD.write_text(
        "# Tollgate benchmark results\n\n"
        f"_Regenerated by `python -m bench` on {doc['date']}; do not edit by hand. Every figure of this run "
        f"is in [`results/{json_path.name}`](results/{json_path.name})._\n\n"
        f"**Noise.** {NOISE}\n\n"
        f"{body}\n"
        "## How to reproduce\n\n"
        "```sh\n"
        "make bench          # or: .venv/bin/python -m bench   (installs wrk with apt-get if missing)\n"
        "make bench-peers    # adds Portkey's and LiteLLM's rows; installs both into bench/.peers/ once\n"
        ".venv/bin/python -m bench --quick        # 2 s, 1 round smoke test (does not rewrite this file)\n"
        ".venv/bin/python -m bench --help         # every knob\n"
        "```\n\n"
        f"This run: `{doc['command']}`.\n"
    )
    return RESULTS_MD
