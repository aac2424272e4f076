"""Charts drawn on the server as SVG strings: stacked bars, horizontal bars, a line with threshold lines,
a state strip. Pure functions of their data (no I/O, no clock); every mark carries its exact number as a
`data-*` attribute (a Decimal string), so a reader or a test takes totals from the DOM, not from pixels.

Lighter than vendoring a chart library: no JavaScript, no licence to track, and the picture is the data."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from html import escape

from events.money import usd_str

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 16, 40
PALETTE = ("#2f6fbf", "#e08a1e", "#3a9d5d", "#c23b3b", "#7a52b3", "#1c9aa8", "#b5651d", "#6b7280")
STATE_COLOURS = {"closed": "#3a9d5d", "half_open": "#e08a1e", "open": "#c23b3b"}


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _money(value: Decimal) -> str:
    return usd_str(value)


def _scale(top: Decimal) -> Decimal:
    return top if top > 0 else Decimal(1)


def _svg(kind: str, body: list[str], label: str, extra: str = "") -> str:
    return (
        f'<svg class="chart {kind}" role="img" aria-label="{_attr(label)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg" data-chart="{kind}"{extra}>' + "".join(body) + "</svg>"
    )


def _axis(top: Decimal, unit: str) -> list[str]:
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}"/>']
    for step in (Decimal(0), top / 2, top):
        y = TOP + plot_h - float(step / _scale(top)) * plot_h
        text = _money(step) if unit == "usd" else str(int(step))
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(text)}</text>')
    return parts


def stacked_bars(
    categories: Sequence[str], series: Sequence[tuple[str, Sequence[Decimal]]], *, label: str, unit: str = "usd"
) -> str:
    """One bar per category (a day), stacked by series (a model); `data-total` on the root and on each bar."""
    totals = [sum((values[i] for _, values in series), Decimal(0)) for i in range(len(categories))]
    top = _scale(max(totals, default=Decimal(0)))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(categories), 1)
    body = _axis(top if max(totals, default=Decimal(0)) > 0 else Decimal(0), unit)
    for i, category in enumerate(categories):
        x = LEFT + i * slot + slot * 0.1
        y: float = TOP + plot_h
        bar = [f'<g class="bar" data-category="{_attr(category)}" data-total="{_attr(_fmt(totals[i], unit))}">']
        for j, (name, values) in enumerate(series):
            value = values[i]
            if value <= 0:
                continue
            h = float(value / top) * plot_h
            y -= h
            bar.append(
                f'<rect class="segment" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" '
                f'fill="{colour(j)}" data-series="{_attr(name)}" data-category="{_attr(category)}" '
                f'data-value="{_attr(_fmt(value, unit))}"><title>{escape(category)} · {escape(name)}: '
                f"{escape(_fmt(value, unit))}</title></rect>"
            )
        bar.append("</g>")
        body.extend(bar)
        if len(categories) <= 12 or i % max(len(categories) // 6, 1) == 0:
            body.append(
                f'<text class="tick" x="{x + slot * 0.4:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="middle">{escape(category[5:] if len(category) == 10 else category)}</text>'
            )
    total = sum(totals, Decimal(0))
    return _svg("stacked-bars", body, label, f' data-total="{_attr(_fmt(total, unit))}"')


def hbars(rows: Sequence[tuple[str, Decimal, Decimal | None]], *, label: str) -> str:
    """Spend against budget, one row each: (name, spent, budget or None); a budget is drawn as a tick."""
    top = _scale(max([max(s, b or Decimal(0)) for _, s, b in rows], default=Decimal(0)))
    row_h = 28
    height = TOP + row_h * max(len(rows), 1) + 8
    plot_w = WIDTH - 160 - RIGHT - 120
    body = []
    for i, (name, spent, budget) in enumerate(rows):
        y = TOP + i * row_h
        w = float(spent / top) * plot_w
        used = "" if not budget else f' data-used="{_attr(f"{spent / budget:.4f}")}"'
        body.append(
            f'<g class="row" data-name="{_attr(name)}" data-spent="{_attr(_money(spent))}" '
            f'data-budget="{_attr("" if budget is None else _money(budget))}"{used}>'
            f'<text x="150" y="{y + 17}" text-anchor="end">{escape(name)}</text>'
            f'<rect x="160" y="{y + 4}" width="{w:.1f}" height="{row_h - 10}" fill="{colour(0)}"/>'
        )
        if budget is not None:
            bx = 160 + float(budget / top) * plot_w
            body.append(f'<line class="budget" x1="{bx:.1f}" y1="{y + 1}" x2="{bx:.1f}" y2="{y + row_h - 3}"/>')
        body.append(
            f'<text class="value" x="{160 + plot_w + 8}" y="{y + 17}">${escape(_money(spent))}'
            f"{'' if budget is None else ' / $' + escape(_money(budget))}</text></g>"
        )
    svg = _svg("hbars", body, label)
    return svg.replace(f"0 0 {WIDTH} {HEIGHT}", f"0 0 {WIDTH} {height}", 1)


def delta_bars(rows: Sequence[tuple[str, Decimal]], *, label: str) -> str:
    """Signed horizontal bars around a zero line: a re-pricing's delta per row; `data-total` is their sum."""
    top = _scale(max([abs(v) for _, v in rows], default=Decimal(0)))
    row_h = 26
    height = TOP + row_h * max(len(rows), 1) + 8
    half = (WIDTH - 220 - RIGHT - 110) / 2
    zero = 220 + half
    body = [f'<line class="axis" x1="{zero:.1f}" y1="{TOP - 4}" x2="{zero:.1f}" y2="{height - 4}"/>']
    for i, (name, value) in enumerate(rows):
        y = TOP + i * row_h
        w = float(abs(value) / top) * half
        x = zero if value >= 0 else zero - w
        fill = PALETTE[3] if value > 0 else PALETTE[2]
        body.append(
            f'<g class="row" data-name="{_attr(name)}" data-value="{_attr(_money(value))}">'
            f'<text x="210" y="{y + 16}" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{x:.1f}" y="{y + 4}" width="{max(w, 0.5):.1f}" height="{row_h - 10}" fill="{fill}"/>'
            f'<text class="value" x="{zero + half + 8:.1f}" y="{y + 16}">{"+" if value > 0 else ""}'
            f"${escape(_money(value))}</text></g>"
        )
    total = sum((v for _, v in rows), Decimal(0))
    svg = _svg("delta-bars", body, label, f' data-total="{_attr(_money(total))}"')
    return svg.replace(f"0 0 {WIDTH} {HEIGHT}", f"0 0 {WIDTH} {height}", 1)


def line(
    points: Sequence[tuple[str, Decimal]],
    thresholds: Sequence[tuple[str, Decimal]],
    *,
    label: str,
    categories: Sequence[str] = (),
) -> str:
    """A cumulative line over `categories` (points may stop early), with labelled horizontal thresholds."""
    days = list(categories) or [p[0] for p in points]
    values = [v for _, v in points]
    top = _scale(max([*values, *(t for _, t in thresholds)], default=Decimal(0)))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(days) - 1, 1)
    index = {day: i for i, day in enumerate(days)}
    body = _axis(top, "usd")
    for name, value in thresholds:
        y = TOP + plot_h - float(value / top) * plot_h
        body.append(
            f'<g class="threshold" data-label="{_attr(name)}" data-value="{_attr(_money(value))}">'
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke-dasharray="4 3"/>'
            f'<text x="{WIDTH - RIGHT - 2}" y="{y - 3:.1f}" text-anchor="end">{escape(name)}</text></g>'
        )
    coords = []
    for day, value in points:
        x = LEFT + index.get(day, 0) * step
        y = TOP + plot_h - float(value / top) * plot_h
        coords.append((x, y, day, value))
    if coords:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in coords)
        body.append(f'<polyline class="series" fill="none" stroke="{colour(0)}" stroke-width="2" points="{path}"/>')
    for x, y, day, value in coords:
        body.append(
            f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour(0)}" '
            f'data-category="{_attr(day)}" data-value="{_attr(_money(value))}"><title>{escape(day)}: '
            f"${escape(_money(value))}</title></circle>"
        )
    for i, day in enumerate(days):
        if i % max(len(days) // 6, 1) == 0:
            body.append(
                f'<text class="tick" x="{LEFT + i * step:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="middle">{escape(day[5:])}</text>'
            )
    last = values[-1] if values else Decimal(0)
    return _svg("line", body, label, f' data-last="{_attr(_money(last))}"')


def state_strip(lanes: Sequence[tuple[str, Sequence[tuple[float, float, str]]]], *, label: str) -> str:
    """One lane per provider: segments (start, end as fractions of the window, state) coloured by state."""
    lane_h = 26
    height = TOP + lane_h * max(len(lanes), 1) + 8
    plot_w = WIDTH - 160 - RIGHT
    body = []
    for i, (name, segments) in enumerate(lanes):
        y = TOP + i * lane_h
        body.append(f'<g class="lane" data-name="{_attr(name)}"><text x="150" y="{y + 16}" text-anchor="end">')
        body.append(f"{escape(name)}</text>")
        for start, end, state in segments:
            x = 160 + start * plot_w
            w = max((end - start) * plot_w, 1.0)
            body.append(
                f'<rect class="state" x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{lane_h - 8}" '
                f'fill="{STATE_COLOURS.get(state, "#6b7280")}" data-state="{_attr(state)}"><title>{escape(state)}'
                "</title></rect>"
            )
        body.append("</g>")
    svg = _svg("state-strip", body, label)
    return svg.replace(f"0 0 {WIDTH} {HEIGHT}", f"0 0 {WIDTH} {height}", 1)


def _fmt(value: Decimal, unit: str) -> str:
    return _money(value) if unit == "usd" else str(int(value))
