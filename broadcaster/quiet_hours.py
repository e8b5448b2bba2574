"""Quiet hours: a daily window, in the run's own time zone, during which nothing is sent.

Written ``HH:MM-HH:MM``; a window whose end is earlier than its start spans midnight
(``21:00-08:00`` is 21:00 to 08:00 the next morning). ``none`` or ``off`` on a run switches off the
default from BROADCASTER_QUIET_HOURS for that run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from broadcaster.claims import ACTIVE_RUN_STATES
from broadcaster.models import QUEUED, Message, Run
from broadcaster.transitions import Change, sweep

messages_t = Message.__table__
runs_t = Run.__table__
_PATTERN = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
OFF_WORDS = frozenset({"none", "off"})


class QuietHoursError(ValueError):
    """A quiet-hours value that cannot be read; the message quotes it."""


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        match = _PATTERN.match(text)
        if not match:
            raise QuietHoursError(f"quiet hours {text!r}: expected HH:MM-HH:MM, e.g. 21:00-08:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
            raise QuietHoursError(f"quiet hours {text!r}: not a time of day")
        if (h1, m1) == (h2, m2):
            raise QuietHoursError(f"quiet hours {text!r}: start and end are the same")
        return cls(time(h1, m1), time(h2, m2))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def opens_at(self, now: datetime, zone: ZoneInfo) -> datetime | None:
        """When the window open at ``now`` ends (aware, UTC); None when ``now`` is outside it."""
        local = now.astimezone(zone)
        if not self.contains(local.time().replace(tzinfo=None)):
            return None
        day = local.date()
        if local.time().replace(tzinfo=None) >= self.end:
            day += timedelta(days=1)
        return datetime.combine(day, self.end, tzinfo=zone).astimezone(UTC)


def effective(run_value: str | None, default: str | None) -> QuietHours | None:
    """The run's own setting wins; ``none``/``off`` there means no quiet hours at all."""
    value = run_value if run_value is not None and run_value.strip() else default
    if value is None or value.strip().lower() in OFF_WORDS or not value.strip():
        return None
    return QuietHours.parse(value)


def run_windows(
    conn: Connection, *, default: str | None, run_id: int | None = None
) -> dict[int, tuple[QuietHours, ZoneInfo]]:
    """The quiet hours (and zone) of each active run that has any."""
    query = sa.select(runs_t.c.id, runs_t.c.timezone, runs_t.c.quiet_hours).where(
        runs_t.c.status.in_(ACTIVE_RUN_STATES)
    )
    if run_id is not None:
        query = query.where(runs_t.c.id == run_id)
    rows = conn.execute(query).all()
    windows: dict[int, tuple[QuietHours, ZoneInfo]] = {}
    for r in rows:
        window = effective(r.quiet_hours, default)
        if window is not None:
            windows[r.id] = (window, ZoneInfo(r.timezone))
    return windows


def quiet_now(windows: dict[int, tuple[QuietHours, ZoneInfo]], now: datetime) -> dict[int, datetime]:
    """The runs inside their quiet hours at ``now``, with when each window opens."""
    quiet: dict[int, datetime] = {}
    for run_id, (window, zone) in windows.items():
        opens = window.opens_at(now, zone)
        if opens is not None:
            quiet[run_id] = opens
    return quiet


def defer_due_messages(engine: Engine, quiet: dict[int, datetime], *, now: datetime) -> int:
    """Move the due messages of quiet runs to the window's opening, with one event each saying so."""
    total = 0
    for run_id, opens in quiet.items():
        detail = {"reason": "deferred: quiet hours", "until": opens.isoformat()}
        total += sweep(
            engine,
            [
                messages_t.c.run_id == run_id,
                messages_t.c.status == QUEUED,
                messages_t.c.next_attempt_at < opens,
            ],
            lambda r, opens=opens, detail=detail: Change(
                r.id, r.run_id, QUEUED, {"next_attempt_at": opens}, detail
            ),
            from_states=[QUEUED],
            at=now,
            source="quiet-hours",
        )
    return total
