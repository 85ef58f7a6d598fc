"""Small line charts for the web gallery's pages, drawn on the server as inline SVG.

Pure functions, standard library only. line_chart() returns a markupsafe.Markup, which a
Jinja2 template puts in the page as it is ({{ chart }}); every text in it that comes from data
(title, series names, axis labels, the empty text) is escaped here, since series names can come
from users. Each series' line carries data-series and data-points, for browser tests.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# Readable on white, and told apart from each other (Tableau's, the light ones darkened).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#d9650b", "#13808f")
# Steps of a time axis, in seconds: round minutes and hours of the local clock.
_TIME_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
               2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # no XML may hold these
_CHAR = 6.5  # px a character takes at font-size 11, to size margins and the legend
_LEGEND_CHARS = 32  # longer names are cut in the legend (not in data-series)


@dataclass(frozen=True)
class Series:
    """One line of a chart: its name (shown in the legend) and (x, y) points, in any order."""

    name: str
    points: Sequence[tuple[float, float]]


def compact(value: float, step: float | None = None) -> str:
    """A number written short: 12000 -> "12k", 0.0123 -> "0.012" (two significant digits),
    or, given the step between ticks, with just the digits that tell ticks apart."""
    if value == 0 or (step and abs(value) < step / 2):
        return "0"
    div, suffix = next(((d, s) for d, s in ((1e9, "G"), (1e6, "M"), (1e3, "k"))
                        if abs(value) >= d), (1.0, ""))
    ref = (step if step else abs(value)) / div
    decimals = max(0, -math.floor(math.log10(ref) + 1e-9) + (0 if step else 1))
    text = f"{value / div:.{decimals}f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + suffix


def line_chart(series: Sequence[Series], *, title: str, x_label: str = "", y_label: str = "",
               width: int = 640, height: int = 240, x_is_time: bool = False,
               empty: str = "No data yet.") -> Markup:
    """An SVG line chart of the series, one colour each; with x_is_time, x values are Unix
    timestamps labelled with the local clock's HH:MM. NaN and infinite values are skipped;
    with no point left, the chart shows the `empty` text instead."""
    width, height = int(width), int(height)  # written into the SVG as they are
    drawn = [_finite(s.points) for s in series]
    every = [p for points in drawn for p in points]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img"'
             f' aria-label="{_text(title)}" viewBox="0 0 {width} {height}" width="{width}"'
             f' height="{height}" font-family="sans-serif" font-size="11" fill="#333">'
             f'<title>{_text(title)}</title>'
             f'<text class="chart-title" x="{width / 2:g}" y="16" text-anchor="middle"'
             f' font-size="13" font-weight="bold">{_text(title)}</text>']
    if not every:
        parts.append(f'<text class="chart-empty" x="{width / 2:g}" y="{height / 2:g}"'
                     f' text-anchor="middle" dy="0.32em" fill="#777">{_text(empty)}</text>')
        return Markup("".join(parts) + "</svg>")

    ys = [y for _, y in every]
    zero_based = min(ys) >= 0
    y_lo, y_hi = _widen(0.0 if zero_based else min(ys), max(ys), keep_lo=zero_based)
    y_step, y_ticks = _ticks(y_lo, y_hi, _decimal_steps(y_lo, y_hi), extend=True)
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    x_lo, x_hi = min(x for x, _ in every), max(x for x, _ in every)
    if x_is_time:  # at least five minutes, so that ticks of round minutes fall inside
        middle, half = (x_lo + x_hi) / 2, max((x_hi - x_lo) / 2, 150.0)
        x_lo, x_hi = middle - half, middle + half
        steps = [*_TIME_STEPS, *(s for s in _decimal_steps(x_lo, x_hi) if s > _TIME_STEPS[-1])]
        offset = time.localtime(x_lo).tm_gmtoff  # ticks on the local clock's round minutes
    else:
        x_lo, x_hi = _widen(x_lo, x_hi)
        steps, offset = _decimal_steps(x_lo, x_hi), 0
    x_step, x_ticks = _ticks(x_lo, x_hi, steps, extend=False, offset=offset)
    if not 4 <= len(x_ticks) <= 6:  # no step fits within the data: the axis spans the ticks
        x_step, x_ticks = _ticks(x_lo, x_hi, steps, extend=True, offset=offset)
        x_lo, x_hi = x_ticks[0], x_ticks[-1]

    y_labels = [compact(y, y_step) for y in y_ticks]
    left = 10 + max(len(label) for label in y_labels) * _CHAR + (16 if y_label else 0)
    top = 28 + (18 if len(series) > 1 else 0)
    x0, x1 = left, max(left + 1.0, width - 20.0)
    y0, y1 = top, max(top + 1.0, height - 22.0 - (16 if x_label else 0))

    def px(x: float) -> float:
        return x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (y - y_lo) / (y_hi - y_lo) * (y1 - y0)

    parts.append('<g class="y-axis" text-anchor="end">')
    for y, label in zip(y_ticks, y_labels, strict=True):
        parts.append(f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{py(y):.1f}" y2="{py(y):.1f}"'
                     f' stroke="#e4e4e4"/><text x="{x0 - 6:.1f}" y="{py(y):.1f}"'
                     f' dy="0.32em">{label}</text>')
    parts.append('</g><g class="x-axis" text-anchor="middle">')
    for x in x_ticks:
        label = _clock(x, x_step) if x_is_time else compact(x, x_step)
        parts.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{y1:.1f}" y2="{y1 + 4:.1f}"'
                     f' stroke="#888"/><text x="{px(x):.1f}" y="{y1 + 15:.1f}">{label}</text>')
    parts.append(f'</g><path d="M{x0:.1f},{y0:.1f}V{y1:.1f}H{x1:.1f}" fill="none"'
                 f' stroke="#888"/>')
    if x_label:
        parts.append(f'<text class="x-label" x="{(x0 + x1) / 2:.1f}" y="{height - 6}"'
                     f' text-anchor="middle">{_text(x_label)}</text>')
    if y_label:
        parts.append(f'<text class="y-label" transform="rotate(-90)" x="{-(y0 + y1) / 2:.1f}"'
                     f' y="12" text-anchor="middle">{_text(y_label)}</text>')

    parts.append('<g class="series">')
    for i, (one, points) in enumerate(zip(series, drawn, strict=True)):
        colour = PALETTE[i % len(PALETTE)]
        attributes = f'data-series="{_text(one.name)}" data-points="{len(points)}"'
        tip = f"<title>{_text(one.name)}</title>"
        if len(points) == 1:
            (x, y), = points
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"'
                         f' {attributes}>{tip}</circle>')
        else:  # no point at all: an empty line, so that each series still has its element
            coordinates = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
            parts.append(f'<polyline points="{coordinates}" fill="none" stroke="{colour}"'
                         f' stroke-width="1.5" stroke-linejoin="round" {attributes}>'
                         f'{tip}</polyline>')
    parts.append("</g>")

    if len(series) > 1:
        parts.append('<g class="legend">')
        x = x0
        for i, one in enumerate(series):
            name = str(one.name)
            name = name if len(name) <= _LEGEND_CHARS else name[:_LEGEND_CHARS - 1] + "…"
            parts.append(f'<rect x="{x:.1f}" y="{top - 19}" width="10" height="10"'
                         f' fill="{PALETTE[i % len(PALETTE)]}"/>'
                         f'<text x="{x + 14:.1f}" y="{top - 10}">{_text(name)}</text>')
            x += 30 + len(name) * _CHAR
        parts.append("</g>")
    return Markup("".join(parts) + "</svg>")


def _text(value: str) -> Markup:
    """Text from data, escaped for SVG text and attributes, less what XML cannot hold."""
    return escape(_NOT_XML.sub("", str(value)))


def _finite(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points whose x and y are both finite numbers, sorted by x."""
    pairs = ((float(x), float(y)) for x, y in points)
    return sorted(((x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)),
                  key=lambda point: point[0])


def _widen(lo: float, hi: float, *, keep_lo: bool = False) -> tuple[float, float]:
    """A range that is not empty: a single value becomes a span around it (or from it)."""
    if hi > lo:
        return lo, hi
    pad = abs(hi) * 0.1 or 1.0
    return (lo if keep_lo else lo - pad), hi + pad


def _decimal_steps(lo: float, hi: float) -> list[float]:
    """The steps of 1, 2 and 5 x 10^k near a fifth of the range."""
    k = math.floor(math.log10((hi - lo) / 5))
    return [m * 10.0**e for e in (k - 1, k, k + 1) for m in (1, 2, 5)]


def _ticks(lo: float, hi: float, steps: Sequence[float], *, extend: bool,
           offset: float = 0.0) -> tuple[float, list[float]]:
    """The step that gives 4 to 6 ticks (else the closest to that) and its ticks: multiples of
    it (shifted by offset) inside [lo, hi], or, with extend, covering it (at least 4)."""
    best: tuple[tuple[int, int], float, int, int] | None = None
    for step in steps:
        a, b = (lo + offset) / step, (hi + offset) / step
        if extend:
            first, last = math.floor(a + 1e-9), math.ceil(b - 1e-9)
            last = max(last, first + 3)  # too few: more above, so that a zero base stays
        else:
            first, last = math.ceil(a - 1e-9), math.floor(b + 1e-9)
        count = last - first + 1
        score = (max(4 - count, count - 6, 0), abs(count - 5))
        if best is None or score < best[0]:
            best = (score, step, first, last)
    assert best is not None
    _, step, first, last = best
    return step, [i * step - offset for i in range(first, last + 1)]


def _clock(timestamp: float, step: float) -> str:
    """A time axis' label: the local clock's HH:MM, with the weekday or only the date when the
    ticks are a quarter day or days apart."""
    shape = "%H:%M" if step < 21600 else "%a %H:%M" if step < 86400 else "%b %d"
    return time.strftime(shape, time.localtime(timestamp))
