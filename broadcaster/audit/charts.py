"""Charts as inline SVG, drawn on the server: no JavaScript, no CDN, the same code for the console
and the standalone HTML report (which must open offline, years later)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from zoneinfo import ZoneInfo

STEPS = [
    timedelta(seconds=s)
    for s in (1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
]
MAX_BUCKETS = 48
PALETTE = {
    "sent": "#2b6cb0",
    "delivered": "#2f855a",
    "undelivered": "#c05621",
    "failed": "#c53030",
    "suppressed": "#6b46c1",
    "cancelled": "#718096",
    "queued": "#a0aec0",
    "sending": "#d69e2e",
    "unknown": "#b7791f",
}


@dataclass(frozen=True)
class Series:
    label: str
    times: list[datetime]
    color: str


def _step_for(span: timedelta) -> timedelta:
    for step in STEPS:
        if span / step <= MAX_BUCKETS:
            return step
    return STEPS[-1] * max(1, int(span / (STEPS[-1] * MAX_BUCKETS)) + 1)


def _floor(moment: datetime, step: timedelta, zone: ZoneInfo) -> datetime:
    local = moment.astimezone(zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if step >= timedelta(days=1):
        return midnight
    return midnight + step * ((local - midnight) // step)


def _label(moment: datetime, step: timedelta, zone: ZoneInfo) -> str:
    local = moment.astimezone(zone)
    if step >= timedelta(days=1):
        return local.strftime("%m-%d")
    if step < timedelta(minutes=1):
        return local.strftime("%H:%M:%S")
    return local.strftime("%H:%M")


def _empty(title: str, width: int, height: int) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height // 3}" '
        f'viewBox="0 0 {width} {height // 3}"><title>{escape(title)}</title>'
        f'<text x="10" y="30" font-size="13" fill="#4a5568">{escape(title)}: nothing yet</text></svg>'
    )


def timeline_svg(
    title: str,
    series: list[Series],
    zone: ZoneInfo,
    *,
    cumulative: bool = False,
    width: int = 760,
    height: int = 260,
) -> str:
    """Counts per time bucket (or running totals) of each series, as lines with dots."""
    times = [t for s in series for t in s.times]
    if not times:
        return _empty(title, width, height)
    start, end = min(times), max(times)
    step = _step_for(end - start)
    first = _floor(start, step, zone)
    buckets = int((end - first) // step) + 1
    values: list[list[int]] = []
    for s in series:
        counts = [0] * buckets
        for t in s.times:
            counts[min(buckets - 1, int((t - first) // step))] += 1
        if cumulative:
            running = 0
            for i, c in enumerate(counts):
                running += c
                counts[i] = running
        values.append(counts)
    top = max(1, max(max(v) for v in values))
    left, right, upper, lower = 56, 32, 48, 46
    plot_w, plot_h = width - left - right, height - upper - lower
    dx = plot_w / max(1, buckets - 1) if buckets > 1 else 0

    def x(i: int) -> float:
        return left + (i * dx if buckets > 1 else plot_w / 2)

    def y(v: int) -> float:
        return upper + plot_h - v / top * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for frac in (0, 0.25, 0.5, 0.75, 1):
        value = round(top * frac)
        yy = y(value)
        parts.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{width - right}" y2="{yy:.1f}" stroke="#e2e8f0"/>')
        parts.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#4a5568">{value}</text>')
    every = max(1, buckets // 8)
    for i in range(0, buckets, every):
        parts.append(
            f'<text x="{x(i):.1f}" y="{height - lower + 16}" text-anchor="middle" fill="#4a5568">'
            f"{escape(_label(first + step * i, step, zone))}</text>"
        )
    zone_note = f"{zone.key}, per {_duration(step)}" + (" (running total)" if cumulative else "")
    parts.append(
        f'<text x="{width - right}" y="{height - 8}" text-anchor="end" fill="#718096">'
        f"{escape(zone_note)}</text>"
    )
    for s, counts in zip(series, values, strict=True):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(counts))
        parts.append(f'<polyline fill="none" stroke="{s.color}" stroke-width="2" points="{points}"/>')
        for i, v in enumerate(counts):
            if v:
                label = f"{s.label} {_label(first + step * i, step, zone)}: {v}"
                parts.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{s.color}">'
                    f"<title>{escape(label)}</title></circle>"
                )
    lx = left
    for s, counts in zip(series, values, strict=True):
        total = counts[-1] if cumulative else sum(counts)
        parts.append(f'<rect x="{lx}" y="26" width="10" height="10" fill="{s.color}"/>')
        parts.append(f'<text x="{lx + 14}" y="35">{escape(s.label)} ({total})</text>')
        lx += 30 + 8 * len(s.label) + 8 * len(str(total))
    parts.append("</svg>")
    return "".join(parts)


def _duration(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}" if unit != "day" else f"{n} day" + ("s" if n > 1 else "")
    return f"{seconds} s"


def bars_svg(title: str, items: list[tuple[str, int]], *, width: int = 760) -> str:
    """Horizontal bars, one per (label, count), coloured by message state where it has one."""
    if not items:
        return _empty(title, width, 120)
    row, left = 24, 120
    height = 30 + row * len(items)
    top = max(1, max(v for _, v in items))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(items):
        yy = 26 + i * row
        w = (width - left - 80) * value / top
        color = PALETTE.get(label, "#4a5568")
        parts.append(f'<text x="{left - 8}" y="{yy + 14}" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{yy + 2}" width="{w:.1f}" height="{row - 8}" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{yy + 14}">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)
