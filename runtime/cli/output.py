"""Print rows as an aligned table, JSON or CSV (the CLI's `--format`)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

FORMATS = ("table", "json", "csv")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def write_rows(rows: Sequence[dict[str, Any]], fmt: str, out: TextIO = sys.stdout, document: Any = None) -> None:
    """`document` is what JSON prints (default: the rows)."""
    if fmt == "json":
        json.dump(rows if document is None else document, out, indent=2)
        out.write("\n")
        return
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
        return
    if not rows:
        out.write("(no rows)\n")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(_looks_numeric(r[i]) for r in cells) for i in range(len(columns))]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for line in cells:
        parts = [v.rjust(w) if n else v.ljust(w) for v, w, n in zip(line, widths, numeric, strict=True)]
        out.write("  ".join(parts).rstrip() + "\n")


def _looks_numeric(text: str) -> bool:
    return bool(text) and text.replace(".", "", 1).replace("-", "", 1).isdigit()
